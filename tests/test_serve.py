"""``cyclegan-vc serve``'s API through the ASGI test client: every endpoint, each error, the limits, the
queue under concurrency, path traversal, the temporary folders, and one code path with ``convert``.

A debug-size model is trained for two iterations on the session's ``tiny_prepared`` data (real VCC
2016 speech, SF1 -> TM3) and laid out as a served folder by :func:`models_folder`, which the browser
test (``test_serve_browser.py``) uses too.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from pathlib import Path

import httpx2
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from cyclegan_vc import cli
from cyclegan_vc.conversion import VoiceConverter
from cyclegan_vc.metrics import DirectionResults, EvaluationResults
from cyclegan_vc.options import ConversionOptions
from cyclegan_vc.report import write_report
from cyclegan_vc.serve import ServerLimits, create_app
from cyclegan_vc.serve.cache import ModelCache
from cyclegan_vc.utils import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_ID, DEMO_ID, FILE_ID = "sf1-tm3", "demo/run", "exported/tiny.safetensors"


def _evaluation(folder: Path, model: str) -> None:
    """A real report (``write_report``) with made-up numbers, naming ``model`` in its meta, plus one audio file."""
    from cyclegan_vc.metrics import UtteranceMetrics

    rows = [UtteranceMetrics("200027", 7.5, 250.0, 0.12, 0.9, 0.6, 2.8)]
    pairs = (("A2B", "SF1", "TM3"), ("B2A", "TM3", "SF1"))
    results = EvaluationResults(
        directions={d: DirectionResults(s, t, {"cyclegan": rows, "mean_variance": rows}) for d, s, t in pairs},
        meta={"model": model, "model_step": 2, "sentences": 1, "options": ConversionOptions(smooth=6).to_dict()},
    )
    write_report(folder, results, title="test", conventions={})
    (folder / "audio").mkdir(exist_ok=True)
    sf.write(folder / "audio" / "A2B_200027_converted.wav", np.zeros(1600), 16000)


def models_folder(tmp_path_factory, tiny_prepared) -> Path:
    """``models/``: a run folder with an evaluation inside, a demo-like ``demo/run`` + ``demo/report``, a
    model file on its own, and symlinks leading out to ``outside/`` (a model file, a text file). Built
    once per session (later calls return it); tests must not change it."""
    from cyclegan_vc.training import train

    base = tmp_path_factory.getbasetemp() / "serve"
    models = base / "models"
    if (models / ".complete").is_file():
        return models
    run = models / RUN_ID
    train(tiny_prepared, run, preset="debug", iterations=2, progress=False, overrides=["training.validation_interval=0"])
    _evaluation(run / "evaluation", str(run))
    shutil.copytree(run, models / DEMO_ID, ignore=shutil.ignore_patterns("evaluation"))
    _evaluation(models / "demo" / "report", "demo-output/run")  # relative, as `cyclegan-vc demo` writes it
    (models / "exported").mkdir()
    shutil.copy(run / "model_latest.safetensors", models / FILE_ID)
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(run / "model_latest.safetensors", outside / "secret.safetensors")
    (outside / "secret.txt").write_text("not for clients")
    (models / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (models / "escape-folder").symlink_to(outside, target_is_directory=True)
    (models / ".complete").write_text("")
    return models


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_prepared) -> Path:
    return models_folder(tmp_path_factory, tiny_prepared)


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models, ServerLimits(workers=2, queue=4), device="cpu")) as c:
        yield c


@pytest.fixture(scope="module")
def speech(vcc_file) -> bytes:
    """SF1/100002 (1.08 s, FLAC, 16 kHz) as uploaded bytes."""
    return vcc_file("SF1", 100002).read_bytes()


def _post(client, data: bytes, name: str = "in.flac", **fields):
    fields.setdefault("model", RUN_ID)
    return client.post("/api/convert", files={"file": (name, data)}, data=fields)


def _error(response, status: int, file: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["file"] == file
    assert "Traceback" not in body["error"] and "\n" not in body["error"]
    return body["error"]


def _wav(response) -> tuple[np.ndarray, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    return sf.read(io.BytesIO(response.content))


# -- the endpoints --------------------------------------------------------------------------------
def test_models_lists_run_folders_and_model_files_with_their_cards(client):
    data = client.get("/api/models").json()
    models = {m["id"]: m for m in data["models"]}
    assert set(models) == {RUN_ID, DEMO_ID, FILE_ID}  # not the symlinks leading out, nor checkpoints/
    run = models[RUN_ID]
    assert run["kind"] == "run" and models[FILE_ID]["kind"] == "model file"
    assert run["speakers"] == {"A": "SF1", "B": "TM3"}
    assert (run["preset"], run["iterations"], run["generator"]) == ("debug (training settings changed)", 2, "cyclegan_vc")  # validation_interval=0
    assert run["parameters"] > 0 and run["training_seconds"] is not None and models[FILE_ID]["training_seconds"] is None
    (evaluation,) = run["evaluations"]
    assert evaluation["folder"] == f"{RUN_ID}/evaluation" and evaluation["options"]["smooth"] == 6
    a2b = evaluation["directions"][0]
    assert (a2b["name"], a2b["source"], a2b["target"]) == ("A2B", "SF1", "TM3")
    assert a2b["rows"][0]["system"] == "cyclegan" and a2b["rows"][0]["means"]["mcd_db"] == pytest.approx(7.5)
    assert [e["folder"] for e in models[DEMO_ID]["evaluations"]] == ["demo/report"]  # found through its meta.model
    assert {m["key"] for m in data["metrics"]} >= {"mcd_db", "sim_to_target", "dnsmos_ovrl"}
    assert data["recommended_options"] == {"energy": "generator", "smooth": 6, "f0_range": "full", "f0_method": None}
    assert data["default_options"] == ConversionOptions().to_dict()


def test_healthz_reports_the_load(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == 3
    assert (health["workers"], health["queue"], health["running"]) == (2, 4, 0)


def test_openapi_schema_documents_the_form_and_the_errors(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/models", "/api/convert", "/healthz"} <= set(schema["paths"])
    convert = schema["paths"]["/api/convert"]["post"]
    form = convert["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"file", "model", "direction", "smooth", "energy", "f0_range", "f0_method"} <= set(form["properties"])
    assert {"200", "400", "404", "413", "503", "504"} <= set(convert["responses"])
    assert "audio/wav" in convert["responses"]["200"]["content"]
    assert client.get("/docs").status_code == 404  # its scripts come from a CDN


def test_page_and_its_files_are_served_from_the_package_only(client):
    page = client.get("/")
    assert page.status_code == 200 and "script-src" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text.replace('href="/', "") and "https://" not in page.text  # nothing from elsewhere
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    for name in ("index.html", "../app.py", "..%2Fapp.py"):
        _error(client.get(f"/static/{name}"), 404)


@pytest.mark.parametrize("model_id", [RUN_ID, DEMO_ID, FILE_ID])
def test_convert_returns_a_wav_of_the_inputs_duration(client, speech, model_id):
    response = _post(client, speech, model=model_id, direction="B2A", smooth="6")
    wave, rate = _wav(response)
    assert rate == 16000 and len(wave) == sf.info(io.BytesIO(speech)).frames
    assert np.max(np.abs(wave)) > 0
    assert response.headers["content-disposition"] == 'attachment; filename="in-B2A.wav"'
    assert float(response.headers["x-audio-seconds"]) == pytest.approx(len(wave) / rate, abs=1e-3)
    assert response.headers["x-model-step"] == "2"


def test_convert_gives_the_convert_commands_output(client, models, speech, tmp_path):
    """One code path: the same samples as VoiceConverter.convert_file, the function of `cyclegan-vc convert`."""
    options = ConversionOptions(smooth=6, energy="source")
    served, _ = _wav(_post(client, speech, smooth="6", energy="source", direction="A2B"))
    (tmp_path / "in.flac").write_bytes(speech)
    VoiceConverter.load(models / RUN_ID, device="cpu", options=options).convert_file(tmp_path / "in.flac", tmp_path / "out.wav", "A2B")
    direct, _ = sf.read(tmp_path / "out.wav")
    np.testing.assert_allclose(served, direct, atol=2 / 32768)


@pytest.mark.parametrize("fmt, rate, channels", [("WAV", 44100, 2), ("OGG", 22050, 1), ("MP3", 16000, 1)])
def test_convert_reads_other_formats_rates_and_channels(client, speech, fmt, rate, channels):
    import soxr

    wave, sr = sf.read(io.BytesIO(speech))
    wave = soxr.resample(wave, sr, rate)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([wave] * channels, axis=1) * 0.5, rate, format=fmt)
    out, out_rate = _wav(_post(client, buffer.getvalue(), name=f"in.{fmt.lower()}"))
    assert out_rate == 16000 and abs(len(out) / out_rate - sf.info(io.BytesIO(buffer.getvalue())).duration) < 0.06


def test_reports_serve_listed_files_only_and_sandboxed(client, models):
    url = next(m for m in client.get("/api/models").json()["models"] if m["id"] == RUN_ID)["evaluations"][0]["report_url"]
    report = client.get(url)
    assert report.status_code == 200 and "<html" in report.text.lower()
    assert report.headers["content-security-policy"].startswith("sandbox")
    key = url.split("/")[2]
    assert client.get(f"/reports/{key}/audio/A2B_200027_converted.wav").headers["content-type"] == "audio/wav"
    for name in ("metrics.json", "../config.yaml", "..%2F..%2F..%2Foutside%2Fsecret.txt", "audio/../../config.yaml"):
        _error(client.get(f"/reports/{key}/{name}"), 404)
    _error(client.get("/reports/0123456789abcdef/report.html"), 404)


# -- errors a person can act on -------------------------------------------------------------------
def test_unusable_recordings_are_400_naming_the_file(client, speech):
    message = _error(_post(client, b"this is text, not audio", name="notes.wav"), 400, "notes.wav")
    assert message == "notes.wav: not a readable audio file (Error opening 'notes.wav': Format not recognised.)"
    assert "empty file" in _error(_post(client, b"", name="empty.wav"), 400, "empty.wav")
    silent = io.BytesIO()
    sf.write(silent, np.zeros(16000), 16000, format="WAV")
    assert "all silent" in _error(_post(client, silent.getvalue(), name="silence.wav"), 400, "silence.wav")
    assert "no recording" in _error(client.post("/api/convert", files={"model": (None, RUN_ID)}), 400)
    assert "multipart/form-data" in _error(client.post("/api/convert", data={"model": RUN_ID}), 400)


def test_bad_fields_are_400_and_unknown_models_404(client, speech):
    assert "direction" in _error(_post(client, speech, direction="A2C"), 400, "in.flac")
    assert "smooth" in _error(_post(client, speech, smooth="-1"), 400, "in.flac")
    assert "energy" in _error(_post(client, speech, energy="loud"), 400, "in.flac")
    assert "unknown form field" in _error(_post(client, speech, colour="red"), 400, "in.flac")
    assert "no model" in _error(_post(client, speech, model=""), 400, "in.flac")
    assert "GET /api/models" in _error(_post(client, speech, model="nope"), 404, "in.flac")
    _error(client.get("/api/nothing"), 404)
    _error(client.delete("/api/models"), 405)


def test_models_are_addressed_by_id_never_by_path(client, models, speech):
    outside = models.parent / "outside"
    for model_id in ("../outside/secret.safetensors", str(outside / "secret.safetensors"), str(models / FILE_ID),
                     f"{RUN_ID}/model_latest.safetensors", "escape.safetensors", "escape-folder/secret.safetensors",
                     f"{RUN_ID}/../{RUN_ID}", "./" + RUN_ID, "/etc/passwd"):
        _error(_post(client, speech, model=model_id), 404, "in.flac")


def test_a_model_file_replaced_by_a_symlink_out_of_the_folder_is_refused(models, speech, tmp_path):
    served = tmp_path / "models"
    shutil.copytree(models / "exported", served / "exported")
    app = create_app(served, device="cpu")
    with TestClient(app) as c:
        (served / FILE_ID).unlink()
        (served / FILE_ID).symlink_to(models.parent / "outside" / "secret.safetensors")
        assert "no longer in the served folder" in _error(_post(c, speech, model=FILE_ID), 404, "in.flac")


def test_a_fault_is_a_one_line_500_not_a_traceback(models, speech, monkeypatch):
    def broken(self, path, options):
        raise RuntimeError("something broke")

    monkeypatch.setattr(ModelCache, "converter", broken)
    with TestClient(create_app(models, device="cpu"), raise_server_exceptions=False) as c:
        assert _error(_post(c, speech), 500, None) == "internal error: RuntimeError: something broke (the server's log has the details)"


# -- limits ---------------------------------------------------------------------------------------
def test_uploads_over_the_size_limit_are_413_while_they_stream(models, speech):
    with TestClient(create_app(models, ServerLimits(max_upload_mb=0.01), device="cpu")) as c:
        assert "limit of 0.01 MB" in _error(_post(c, speech, name="big.flac"), 413)  # refused from Content-Length

        def chunks():  # no Content-Length: counted as it streams, refused once past the limit
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.flac"\r\n\r\n'
            for _ in range(100):
                yield speech[:1000]

        response = c.post("/api/convert", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert "limit of 0.01 MB" in _error(response, 413, "big.flac")
        assert os.listdir(c.app.state.service.scratch_root) == []


def test_recordings_over_the_duration_limit_are_413(models, vcc_file):
    with TestClient(create_app(models, ServerLimits(max_seconds=2.0), device="cpu")) as c:
        message = _error(_post(c, vcc_file("SF1", 100001).read_bytes(), name="long.flac"), 413, "long.flac")
        assert message == "long.flac: 3.5 s of audio, longer than this server's limit of 2 s"


def test_a_conversion_past_the_timeout_is_504_and_its_worker_is_freed(models, speech):
    service = None
    with TestClient(create_app(models, ServerLimits(timeout_s=0.001, workers=1), device="cpu")) as c:
        service = c.app.state.service
        assert "limit of 0.001 s" in _error(_post(c, speech), 504, "in.flac")
        for _ in range(200):  # the conversion stops at its chunk's end; then its worker and folder are free
            if c.get("/healthz").json()["running"] == 0 and not os.listdir(service.scratch_root):
                break
            asyncio.run(asyncio.sleep(0.05))
        health = c.get("/healthz").json()
        assert (health["running"], health["timed_out"]) == (0, 1)
        assert os.listdir(service.scratch_root) == []
    assert not service.scratch_root.exists()  # removed at shutdown


async def _burst(app, n: int, speech: bytes, model: str = RUN_ID) -> list[httpx2.Response]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(
            c.post("/api/convert", files={"file": (f"in{i}.flac", speech)}, data={"model": model}) for i in range(n)
        ))


def test_more_requests_than_places_none_lost_the_excess_refused_with_503(models, speech):
    app = create_app(models, ServerLimits(workers=1, queue=1), device="cpu")
    try:
        responses = asyncio.run(_burst(app, 6, speech))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 503, 503, 503, 503]  # one converting, one waiting, the rest refused at once
        for r in responses:
            if r.status_code == 503:
                assert "busy" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
            else:
                assert sf.info(io.BytesIO(r.content)).frames == sf.info(io.BytesIO(speech)).frames
        stats = app.state.service.queue.stats()
        assert (stats["served"], stats["refused"], stats["running"], stats["waiting"]) == (2, 4, 0, 0)
    finally:
        app.state.service.close()


def test_requests_within_the_queue_all_wait_their_turn(models, speech):
    app = create_app(models, ServerLimits(workers=2, queue=4), device="cpu")
    try:
        responses = asyncio.run(_burst(app, 6, speech))
        assert [r.status_code for r in responses] == [200] * 6
        assert len({r.content for r in responses}) == 1  # the same input converted alike in every thread
        assert os.listdir(app.state.service.scratch_root) == []
    finally:
        app.state.service.close()


def test_a_model_is_loaded_once_and_again_when_its_file_changes(models, speech, monkeypatch, tmp_path):
    served = tmp_path / "models"
    shutil.copytree(models / "exported", served / "exported")
    loads = []
    real = VoiceConverter.load.__func__
    monkeypatch.setattr(VoiceConverter, "load", classmethod(lambda cls, path, **kw: loads.append(path) or real(cls, path, **kw)))
    app = create_app(served, device="cpu")
    try:
        assert [r.status_code for r in asyncio.run(_burst(app, 3, speech, FILE_ID))] == [200] * 3
        assert len(loads) == 1
        os.utime(served / FILE_ID, ns=(0, 0))  # a run still training rewrites its model
        assert asyncio.run(_burst(app, 1, speech, FILE_ID))[0].status_code == 200
        assert len(loads) == 2
    finally:
        app.state.service.close()


# -- setup errors ---------------------------------------------------------------------------------
def test_bad_limits_and_folders_are_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="workers must be a whole number >= 1"):
        ServerLimits(workers=0)
    with pytest.raises(UserError, match="max_seconds must be a number > 0"):
        ServerLimits(max_seconds=-1)
    assert cli.main(["serve", "--models", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"cyclegan-vc serve: error: serve --models {tmp_path / 'missing'}: no such folder"


def test_an_empty_folder_serves_no_model(tmp_path):
    (tmp_path / "notes.safetensors").write_bytes(b"not a checkpoint")
    with TestClient(create_app(tmp_path, device="cpu")) as c:
        assert c.get("/api/models").json()["models"] == []
