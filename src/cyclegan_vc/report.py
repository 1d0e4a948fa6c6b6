"""The evaluation report, rendered: ``metrics.json``, ``summary.md`` and a self-contained ``report.html``.

It renders an :class:`~cyclegan_vc.metrics.EvaluationResults` (the data model lives in
:mod:`cyclegan_vc.metrics.results`) and the example sentences' waveforms.

Report directory::

    OUT/
      metrics.json   conventions, meta, and per direction / system: summary (mean, std, n) + utterance rows
      summary.md     the summary tables in Markdown
      report.html    conventions, summary tables, bar charts, per-utterance tables, example figures and
                     <audio> players (plots embedded as PNG data URIs; audio referenced relatively)
      audio/         <direction>_<id>_<role>.wav for the examples (16-bit PCM)

Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import __version__
from .audio import resample, save_audio
from .features import FeatureConfig, estimate_f0
from .figures import bar_chart, example_figure
from .metrics import (
    METRICS,
    SYSTEM_DESCRIPTIONS,
    SYSTEMS,
    DirectionResults,
    EvaluationResults,
    MetricInfo,
)
from .metrics.results import json_ready
from .utils import atomic_write_bytes

__all__ = [
    "REPORT_FORMAT_VERSION",
    "ReportExample",
    "format_table",
    "markdown_tables",
    "write_report",
]

logger = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1

@dataclass
class ReportExample:
    """Waveforms of one example sentence for the figure and the audio players.

    Attributes:
        direction: ``"A2B"`` or ``"B2A"``.
        id: utterance id.
        waves: role -> ``(samples,)`` waveform, in display order, e.g. ``{"source": ..., "converted": ...,
            "target": ...}``.
        sample_rate: rate of every wave, Hz.
        f0: optional role -> ``(T,)`` F0 in Hz (0 = unvoiced) on ``frame_period`` ms frames; estimated
            with WORLD (dio) for the roles missing.
    """

    direction: str
    id: str
    waves: dict[str, np.ndarray]
    sample_rate: int
    f0: dict[str, np.ndarray] | None = None


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def _display(metric: MetricInfo, value: float) -> str:
    """A metric value as shown in tables (V/UV error as a percentage)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if metric.key == "vuv_error":
        value *= 100.0
    return f"{value:.{metric.digits}f}"


def _header(metric: MetricInfo, arrows: bool = False) -> str:
    better = ("↓" if metric.lower_is_better else "↑") if arrows else ""
    return f"{metric.label} [{metric.unit}]{better}"


def format_table(results: EvaluationResults | Mapping[str, Any]) -> str:
    """Compact plain-text summary: per direction, one row per system with the mean of every metric.

    Suitable for a terminal and for pasting into the README (fixed-width, ASCII).
    """
    results = _as_results(results)
    blocks = []
    for name in results.direction_names():
        d = results.directions[name]
        summary = d.summary()
        headers = ["system", "n"] + [f"{m.label} [{m.unit}]" for m in METRICS]
        rows = []
        for s in d.system_names():
            rows.append([s, str(len(d.systems[s]))] + [_display(m, summary[s][m.key]["mean"]) for m in METRICS])
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
        lines = [f"{name}: {d.source} -> {d.target}", line(headers), "  ".join("-" * w for w in widths)]
        lines += [line(r) for r in rows]
        blocks.append("\n".join(lines))
    lower = ", ".join(m.label for m in METRICS if m.lower_is_better)
    higher = ", ".join(m.label for m in METRICS if not m.lower_is_better)
    blocks.append(f"(means over utterances; lower is better: {lower}; higher is better: {higher})")
    return "\n\n".join(blocks) + "\n"


def markdown_tables(results: EvaluationResults | Mapping[str, Any]) -> str:
    """The summary tables in Markdown: per direction, systems as rows, ``mean ± std`` per metric."""
    results = _as_results(results)
    parts = []
    for name in results.direction_names():
        d = results.directions[name]
        summary = d.summary()
        headers = ["System", "n"] + [_header(m, arrows=True) for m in METRICS]
        lines = [f"### {name}: {d.source} → {d.target}", "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
        for s in d.system_names():
            cells = [f"`{s}`", str(len(d.systems[s]))]
            cells += [_mean_std(m, summary[s][m.key]) for m in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _mean_std(metric: MetricInfo, stats: Mapping[str, float]) -> str:
    mean = _display(metric, stats["mean"])
    if mean == "n/a" or stats["n"] < 2:
        return mean
    return f"{mean} ± {_display(metric, stats['std'])}"


def _as_results(results: EvaluationResults | Mapping[str, Any]) -> EvaluationResults:
    if isinstance(results, EvaluationResults):
        return results
    if isinstance(results, Mapping):
        return EvaluationResults.from_dict(results)
    raise TypeError(f"results must be EvaluationResults or its dict form, got {type(results).__name__}")


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe_name(text: str) -> str:
    return _SAFE.sub("_", str(text)).strip("._") or "x"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.2em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f2f2f2}
dt{font-weight:600;margin-top:0.5em}
dd{margin-left:1.5em}
img{max-width:100%}
details{margin:0.4em 0}
.example{border-top:1px solid #ddd;padding-top:0.8em;margin-top:1em}
.players{display:flex;gap:1.5em;flex-wrap:wrap}
.players figure{margin:0}
code{background:#f6f6f6;padding:0 3px}
"""


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_rows(d: DirectionResults) -> list[list[str]]:
    summary = d.summary()
    return [[s, str(len(d.systems[s]))] + [_mean_std(m, summary[s][m.key]) for m in METRICS] for s in d.system_names()]


def _utterance_ids(d: DirectionResults) -> list[str]:
    ids: list[str] = []
    seen = set()
    for s in d.system_names():
        for r in d.systems[s]:
            if r.id not in seen:
                seen.add(r.id)
                ids.append(r.id)
    return ids


def _render_html(
    title: str,
    results: EvaluationResults,
    conventions: Mapping[str, str],
    examples_html: str,
    meta: Mapping[str, Any],
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta:
        parts.append(_html_table(["field", "value"], [[str(k), json.dumps(v) if not isinstance(v, str) else v]
                                                       for k, v in meta.items()], "meta"))
    parts.append("<h2>Conventions</h2><dl>")
    for name, text in conventions.items():
        parts.append(f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>")
    parts.append("</dl><h3>Systems</h3><dl>")
    shown = {s for d in results.directions.values() for s in d.systems}
    for s in [*SYSTEMS, *sorted(shown - set(SYSTEMS))]:
        if s in shown:
            parts.append(f"<dt><code>{html.escape(s)}</code></dt><dd>{html.escape(SYSTEM_DESCRIPTIONS.get(s, ''))}</dd>")
    parts.append("</dl>")

    parts.append("<h2>Summary</h2><p>Mean ± standard deviation over utterances; ↓ lower is better, "
                 "↑ higher is better. V/UV error in percent of aligned frames.</p>")
    headers = ["system", "n"] + [_header(m, arrows=True) for m in METRICS]
    for name in results.direction_names():
        d = results.directions[name]
        parts.append(f"<h3>{html.escape(name)}: {html.escape(d.source)} → {html.escape(d.target)}</h3>")
        parts.append(_html_table(headers, _summary_rows(d), "summary"))
        parts.append(f'<img alt="{html.escape(name)} metrics bar chart" src="{bar_chart(name, d)}">')

    parts.append("<h2>Per-utterance results</h2>")
    for name in results.direction_names():
        d = results.directions[name]
        systems = d.system_names()
        parts.append(f"<h3>{html.escape(name)}: {html.escape(d.source)} → {html.escape(d.target)}</h3>")
        mcd_metric = METRICS[0]
        by_id = {s: {r.id: r for r in d.systems[s]} for s in systems}
        rows = [[uid] + [_display(mcd_metric, by_id[s][uid].mcd_db) if uid in by_id[s] else "" for s in systems]
                for uid in _utterance_ids(d)]
        parts.append("<p>MCD [dB] of every system, per utterance:</p>")
        parts.append(_html_table(["id"] + systems, rows, "utterances-mcd"))
        for s in systems:
            rows = [[r.id] + [_display(m, getattr(r, m.key)) for m in METRICS] for r in d.systems[s]]
            parts.append(f"<details><summary><code>{html.escape(s)}</code>: all metrics per utterance "
                         f"({len(rows)})</summary>")
            parts.append(_html_table(["id"] + [_header(m) for m in METRICS], rows, "utterances"))
            parts.append("</details>")

    if examples_html:
        parts.append("<h2>Examples</h2>")
        parts.append(examples_html)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _render_markdown(title: str, results: EvaluationResults, conventions: Mapping[str, str],
                     example_audio: list[dict[str, Any]]) -> str:
    lines = [f"# {title}", "", "## Conventions", ""]
    lines += [f"- **{name}**: {text}" for name, text in conventions.items()]
    lines += ["", "## Systems", ""]
    shown = {s for d in results.directions.values() for s in d.systems}
    lines += [f"- `{s}`: {SYSTEM_DESCRIPTIONS.get(s, '')}" for s in [*SYSTEMS, *sorted(shown - set(SYSTEMS))]
              if s in shown]
    lines += ["", "## Summary", "",
              "Mean ± standard deviation over utterances; ↓ lower is better, ↑ higher is better; "
              "V/UV error in percent.", "", markdown_tables(results).rstrip()]
    if example_audio:
        lines += ["", "## Example audio", ""]
        for ex in example_audio:
            links = ", ".join(f"[{role}]({path})" for role, path in ex["audio"].items())
            lines.append(f"- {ex['direction']} {ex['id']}: {links}")
    lines += ["", "Plots, per-utterance tables and players: `report.html`.", ""]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    results: EvaluationResults | Mapping[str, Any],
    *,
    title: str,
    conventions: Mapping[str, str],
    examples: Sequence[ReportExample] = (),
    feature_config: FeatureConfig | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json``, ``summary.md``, ``report.html`` and the example audio into ``out_dir``.

    Args:
        out_dir: report directory (created if needed; existing report files are replaced).
        results: :class:`EvaluationResults` (or its :meth:`~EvaluationResults.to_dict` form).
        title: report title.
        conventions: name -> convention text (e.g. :func:`cyclegan_vc.metrics.conventions`).
        examples: sentences to illustrate with spectrograms, F0 contours and audio players.
        feature_config: frame period and F0 range used to estimate the examples' missing F0
            contours (with dio, for display only); default :class:`FeatureConfig` with dio.

    Returns:
        Relative path (``"metrics.json"``, ``"summary.md"``, ``"report.html"``, ``"audio/....wav"``)
        -> absolute path of every file written.
    """
    results = _as_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = (feature_config or FeatureConfig()).replace(f0_method="dio")
    written: dict[str, Path] = {}
    meta = {"package_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **results.meta}

    example_blocks = []
    example_audio = []
    for ex in examples:
        if not ex.waves:
            raise ValueError(f"example {ex.direction} {ex.id}: no waveforms")
        audio_rel: dict[str, str] = {}
        f0s: dict[str, np.ndarray] = {}
        for role, wave in ex.waves.items():
            rel = f"audio/{_safe_name(ex.direction)}_{_safe_name(ex.id)}_{_safe_name(role)}.wav"
            written[rel] = save_audio(out_dir / rel, np.asarray(wave, dtype=np.float64), ex.sample_rate)
            audio_rel[role] = rel
            if ex.f0 is not None and role in ex.f0:
                f0s[role] = np.asarray(ex.f0[role], dtype=np.float64)
            else:
                f0s[role] = estimate_f0(_resampled(wave, ex.sample_rate, cfg.sample_rate), cfg)[0]
        figure = example_figure(ex, f0s, cfg.frame_period)
        players = "".join(
            f'<figure><figcaption>{html.escape(role)}</figcaption>'
            f'<audio controls preload="none" src="{html.escape(rel)}"></audio></figure>'
            for role, rel in audio_rel.items()
        )
        example_blocks.append(
            f'<div class="example"><h3>{html.escape(ex.direction)} {html.escape(str(ex.id))}</h3>'
            f'<div class="players">{players}</div>'
            f'<img alt="spectrograms and F0 of {html.escape(str(ex.id))}" src="{figure}"></div>'
        )
        example_audio.append({"direction": ex.direction, "id": str(ex.id), "audio": audio_rel})

    data = {
        "format_version": REPORT_FORMAT_VERSION,
        "title": title,
        "conventions": dict(conventions),
        **results.to_dict(),
        "examples": example_audio,
    }
    data["meta"] = json_ready(meta)
    text = json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n"
    written["metrics.json"] = atomic_write_bytes(out_dir / "metrics.json", text.encode("utf-8"))
    md = _render_markdown(title, results, conventions, example_audio)
    written["summary.md"] = atomic_write_bytes(out_dir / "summary.md", md.encode("utf-8"))
    page = _render_html(title, results, conventions, "\n".join(example_blocks), meta)
    written["report.html"] = atomic_write_bytes(out_dir / "report.html", page.encode("utf-8"))
    logger.info("wrote the evaluation report to %s", out_dir)
    return written


def _resampled(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    return resample(np.asarray(wave, dtype=np.float64), int(rate), int(target))
