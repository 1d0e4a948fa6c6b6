// The page of `cyclegan-vc serve`: model choice, upload or microphone recording, options, conversion
// through POST /api/convert, players, and the model card. Plain browser JavaScript, no build step.
"use strict";

const state = { models: [], metrics: [], recommended: {}, limits: {}, recording: null, input: null, outputUrl: null };
const $ = (id) => document.getElementById(id);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function minutes(seconds) {
  if (seconds === null || seconds === undefined) return "not recorded";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function selectedModel() {
  return state.models.find((m) => m.id === $("model").value) || null;
}

// -- models, directions, card ----------------------------------------------------------------------
function renderDirections(model) {
  const box = $("directions");
  const previous = (document.querySelector("input[name=direction]:checked") || {}).value || "A2B";
  box.replaceChildren();
  if (!model) return;
  const a = model.speakers.A || "A", b = model.speakers.B || "B";
  for (const [value, text] of [["A2B", `${a} → ${b} (A→B)`], ["B2A", `${b} → ${a} (B→A)`]]) {
    const id = `direction-${value}`;
    const input = el("input", null, { type: "radio", name: "direction", value, id });
    input.checked = value === previous;
    const label = el("label", text, { for: id });
    box.append(input, label);
  }
}

function fact(list, term, value) {
  list.append(el("dt", term), el("dd", value));
}

function renderEvaluation(evaluation) {
  const box = el("div", null, { class: "evaluation" });
  const heading = el("h3", `Evaluation: ${evaluation.folder}`);
  box.append(heading);
  const about = [];
  if (evaluation.sentences) about.push(`${evaluation.sentences} sentence${evaluation.sentences === 1 ? "" : "s"}`);
  if (evaluation.model_step !== null && evaluation.model_step !== undefined) about.push(`model at step ${evaluation.model_step}`);
  if (evaluation.options) about.push(`smooth ${evaluation.options.smooth}, energy ${evaluation.options.energy}`);
  if (about.length) box.append(el("p", about.join(", "), { class: "hint" }));
  for (const direction of evaluation.directions) {
    const table = el("table");
    table.append(el("caption", `${direction.name}: ${direction.source || "A"} → ${direction.target || "B"}`));
    const head = el("tr");
    head.append(el("th", "system"), el("th", "n"));
    for (const m of state.metrics) head.append(el("th", `${m.label} [${m.unit}] ${m.lower_is_better ? "↓" : "↑"}`));
    table.append(head);
    for (const row of direction.rows) {
      const tr = el("tr");
      tr.append(el("td", row.system), el("td", row.n));
      for (const m of state.metrics) {
        let value = row.means[m.key];
        if (typeof value === "number" && m.key === "vuv_error") value *= 100;
        tr.append(el("td", typeof value === "number" ? value.toFixed(m.digits) : "–", { class: "number" }));
      }
      table.append(tr);
    }
    box.append(table);
  }
  if (evaluation.report_url) {
    const link = el("a", "the full report (plots, per-sentence tables, audio)", { href: evaluation.report_url, target: "_blank", rel: "noopener" });
    const p = el("p");
    p.append(link);
    box.append(p);
  }
  return box;
}

function renderCard(model) {
  const facts = $("card-facts");
  facts.replaceChildren();
  $("card-evaluations").replaceChildren();
  $("card-empty").hidden = !!model;
  if (!model) return;
  fact(facts, "Model", `${model.id} (${model.kind})`);
  fact(facts, "Speakers", `A: ${model.speakers.A}, B: ${model.speakers.B}`);
  fact(facts, "Networks", `${model.generator}, ${(model.parameters / 1e6).toFixed(2)} M parameters per generator`);
  fact(facts, "Preset", model.preset);
  const scheduled = model.scheduled_iterations ? ` of ${model.scheduled_iterations.toLocaleString("en")} scheduled` : "";
  fact(facts, "Iterations", `${(model.iterations ?? 0).toLocaleString("en")}${scheduled}`);
  fact(facts, "Training time", minutes(model.training_seconds));
  fact(facts, "Features", `${model.sample_rate} Hz, F0 by ${model.f0_method}`);
  if (model.validation && typeof model.validation.score === "number") fact(facts, "Validation score", model.validation.score.toFixed(3));
  if (!model.evaluations.length) {
    $("card-evaluations").append(el("p", "No evaluation of this model in the served folder.", { class: "hint" }));
  }
  for (const evaluation of model.evaluations) $("card-evaluations").append(renderEvaluation(evaluation));
}

function onModelChange() {
  const model = selectedModel();
  renderDirections(model);
  renderCard(model);
  updateConvertButton();
}

function applyOptions(options) {
  $("smooth").value = options.smooth;
  $("energy").value = options.energy;
  $("f0_range").value = options.f0_range;
  $("f0_method").value = options.f0_method || "";
}

async function loadModels() {
  const response = await fetch("/api/models");
  if (!response.ok) throw new Error(`the server answered ${response.status} for its model list`);
  const data = await response.json();
  Object.assign(state, { models: data.models, metrics: data.metrics, recommended: data.recommended_options, limits: data.limits });
  const select = $("model");
  select.replaceChildren();
  for (const model of data.models) {
    select.append(el("option", `${model.id}: ${model.speakers.A} ↔ ${model.speakers.B}, ${(model.iterations ?? 0).toLocaleString("en")} iterations`, { value: model.id }));
  }
  if (!data.models.length) showError("This server has no trained model in its folder.");
  applyOptions(data.recommended_options);
  const r = data.recommended_options;
  $("options-hint").textContent = `Preselected: the recommended conversion (smoothing ${r.smooth}, energy from the ${r.energy}). The paper's conversion is smoothing 0.`;
  $("limits-hint").textContent = `Up to ${data.limits.max_upload_mb} MB and ${data.limits.max_seconds} s of audio per recording.`;
  onModelChange();
}

// -- input: a file or a microphone recording ----------------------------------------------------
function setInput(file) {
  state.input = file;
  const player = $("input-player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.hidden = !file;
  if (file) player.src = URL.createObjectURL(file);
  updateConvertButton();
}

function updateConvertButton() {
  $("convert").disabled = !(state.input && selectedModel());
}

function encodeWav(buffer) {
  // 16-bit PCM mono WAV of a decoded AudioBuffer (channels averaged)
  const n = buffer.length, rate = buffer.sampleRate, channels = buffer.numberOfChannels;
  const data = new DataView(new ArrayBuffer(44 + 2 * n));
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) data.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF"); data.setUint32(4, 36 + 2 * n, true); text(8, "WAVE");
  text(12, "fmt "); data.setUint32(16, 16, true); data.setUint16(20, 1, true); data.setUint16(22, 1, true);
  data.setUint32(24, rate, true); data.setUint32(28, 2 * rate, true); data.setUint16(32, 2, true); data.setUint16(34, 16, true);
  text(36, "data"); data.setUint32(40, 2 * n, true);
  const inputs = Array.from({ length: channels }, (_, c) => buffer.getChannelData(c));
  for (let i = 0; i < n; i++) {
    let sum = 0;
    for (const channel of inputs) sum += channel[i];
    const x = Math.max(-1, Math.min(1, sum / channels));
    data.setInt16(44 + 2 * i, x < 0 ? x * 0x8000 : x * 0x7fff, true);
  }
  return new Blob([data], { type: "audio/wav" });
}

async function startRecording() {
  showError("");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("This browser cannot record here (it needs MediaRecorder and a page on localhost or https).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(`The microphone is not available: ${err.message || err.name}.`);
    return;
  }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((track) => track.stop());
    $("record-status").textContent = "decoding…";
    const blob = new Blob(chunks, { type: recorder.mimeType });
    try {  // the server reads WAV, not the browser's WebM/Opus: decode here and send 16-bit WAV
      const context = new AudioContext();
      const decoded = await context.decodeAudioData(await blob.arrayBuffer());
      context.close();
      setInput(new File([encodeWav(decoded)], "recording.wav", { type: "audio/wav" }));
      $("record-status").textContent = `recorded ${decoded.duration.toFixed(1)} s`;
    } catch (err) {
      showError(`The recording could not be decoded: ${err.message || err.name}.`);
      $("record-status").textContent = "";
    }
  };
  recorder.start();
  state.recording = recorder;
  $("record").disabled = true;
  $("stop").disabled = false;
  $("record-status").textContent = "recording…";
}

function stopRecording() {
  if (state.recording) state.recording.stop();
  state.recording = null;
  $("record").disabled = false;
  $("stop").disabled = true;
}

// -- conversion ------------------------------------------------------------------------------------
function setProgress(text, fraction) {
  $("progress-box").hidden = text === null;
  $("progress-text").textContent = text || "";
  const bar = $("progress");
  if (fraction === null || fraction === undefined) bar.removeAttribute("value");
  else bar.value = fraction;
}

async function errorMessage(xhr) {
  try {
    const body = JSON.parse(await xhr.response.text());
    return body.error || `the server answered ${xhr.status}`;
  } catch (_) {
    return `the server answered ${xhr.status} ${xhr.statusText}`;
  }
}

function convert(event) {
  event.preventDefault();
  const model = selectedModel();
  if (!model || !state.input) return;
  showError("");
  $("result").hidden = true;
  const form = new FormData();
  form.append("model", model.id);
  form.append("direction", (document.querySelector("input[name=direction]:checked") || {}).value || "A2B");
  for (const name of ["smooth", "energy", "f0_range", "f0_method"]) form.append(name, $(name).value);
  form.append("file", state.input, state.input.name || "recording.wav");

  const xhr = new XMLHttpRequest();
  const started = performance.now();
  let timer = null;
  xhr.open("POST", "/api/convert");
  xhr.responseType = "blob";
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) setProgress(`uploading ${Math.round((100 * e.loaded) / e.total)} %`, e.loaded / e.total); };
  xhr.upload.onload = () => {
    setProgress("converting… 0 s", null);
    timer = setInterval(() => setProgress(`converting… ${Math.round((performance.now() - started) / 1000)} s`, null), 500);
  };
  xhr.onloadend = async () => {
    clearInterval(timer);
    $("convert").disabled = false;
    setProgress(null);
    if (xhr.status === 200) {
      if (state.outputUrl) URL.revokeObjectURL(state.outputUrl);
      state.outputUrl = URL.createObjectURL(xhr.response);
      const name = (/filename="([^"]+)"/.exec(xhr.getResponseHeader("Content-Disposition") || "") || [])[1] || "converted.wav";
      $("output-player").src = state.outputUrl;
      $("download").href = state.outputUrl;
      $("download").download = name;
      const seconds = Number(xhr.getResponseHeader("X-Audio-Seconds"));
      const wall = Number(xhr.getResponseHeader("X-Conversion-Seconds"));
      $("result-info").textContent = `(${name}, ${seconds.toFixed(2)} s of audio, converted in ${wall.toFixed(1)} s)`;
      $("result").hidden = false;
    } else if (xhr.status === 0) {
      showError("The server could not be reached.");
    } else {
      showError(await errorMessage(xhr));
    }
  };
  $("convert").disabled = true;
  setProgress("uploading…", 0);
  xhr.send(form);
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", onModelChange);
  $("file").addEventListener("change", () => { showError(""); setInput($("file").files[0] || null); });
  $("record").addEventListener("click", startRecording);
  $("stop").addEventListener("click", stopRecording);
  $("recommended").addEventListener("click", () => applyOptions(state.recommended));
  $("convert-form").addEventListener("submit", convert);
  loadModels().catch((err) => showError(`The model list could not be loaded: ${err.message}.`));
});
