"""The evaluation report's figures: a bar chart per direction and an example sentence's spectrograms with F0.

Each figure is drawn on matplotlib's Agg canvas (independent of pyplot and of the user's backend) and
returned as a PNG data URI for the self-contained ``report.html`` of :mod:`cyclegan_vc.report`.
"""

from __future__ import annotations

import base64
import io
import math
from typing import TYPE_CHECKING

import numpy as np

from .metrics import METRICS, DirectionResults

if TYPE_CHECKING:
    from .report import ReportExample

__all__ = ["bar_chart", "example_figure"]

# One colour per system, stable across plots.
_COLOURS = {"cyclegan": "#d62728", "no_conversion": "#7f7f7f", "mean_variance": "#1f77b4", "world_resynthesis": "#2ca02c"}
_EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e")


def _figure(**kwargs):
    """A matplotlib Figure on the Agg canvas, independent of pyplot and of the user's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colour(system: str, index: int) -> str:
    return _COLOURS.get(system, _EXTRA_COLOURS[index % len(_EXTRA_COLOURS)])


def bar_chart(name: str, d: DirectionResults) -> str:
    """One PNG per direction: a panel per metric, a bar per system (mean, std as error bar)."""
    summary = d.summary()
    systems = d.system_names()
    cols = 3
    rows = math.ceil(len(METRICS) / cols)
    fig = _figure(figsize=(4.0 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    scale = {"vuv_error": 100.0}
    for ax, metric in zip(axes.ravel(), METRICS):
        k = scale.get(metric.key, 1.0)
        means = [summary[s][metric.key]["mean"] * k for s in systems]
        stds = [summary[s][metric.key]["std"] * k for s in systems]
        x = np.arange(len(systems))
        heights = [m if math.isfinite(m) else 0.0 for m in means]
        errs = [e if math.isfinite(e) else 0.0 for e in stds]
        bars = ax.bar(x, heights, yerr=errs, capsize=3, color=[_colour(s, i) for i, s in enumerate(systems)])
        labels = ["n/a" if not math.isfinite(m) else f"{m:.{metric.digits}f}" for m in means]
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=8, color="white")
        ax.set_xticks(x)
        ax.set_xticklabels(systems, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{metric.label} [{metric.unit}] ({'lower' if metric.lower_is_better else 'higher'} is better)",
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes.ravel()[len(METRICS):]:
        ax.axis("off")
    fig.suptitle(f"{name}: {d.source} → {d.target} (mean ± std over utterances)", fontsize=11)
    fig.tight_layout()
    return _png_data_uri(fig)


def _log_spectrogram(wave: np.ndarray, sample_rate: int, frame_ms: float = 32.0, hop_ms: float = 5.0):
    """``(freq bins, frames)`` magnitude in dB (max 0 dB, floor -80 dB) with a Hann window."""
    n = int(sample_rate * frame_ms / 1000)
    hop = int(sample_rate * hop_ms / 1000)
    x = np.asarray(wave, dtype=np.float64)
    if x.size < n:
        x = np.pad(x, (0, n - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)).T
    db = 20.0 * np.log10(np.maximum(spec, 1e-10))
    return np.maximum(db - db.max(), -80.0), hop / sample_rate


def example_figure(example: "ReportExample", f0s: dict[str, np.ndarray], frame_period: float) -> str:
    """Spectrogram of every role, then their F0 contours overlaid."""
    roles = list(example.waves)
    fig = _figure(figsize=(9, 1.9 * (len(roles) + 1)))
    axes = fig.subplots(len(roles) + 1, 1, sharex=True, squeeze=False)[:, 0]
    nyquist_khz = example.sample_rate / 2000
    for ax, role in zip(axes, roles):
        db, hop_s = _log_spectrogram(example.waves[role], example.sample_rate)
        ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                  extent=(0, db.shape[1] * hop_s, 0, nyquist_khz))
        ax.set_ylabel("kHz")
        ax.set_title(role, fontsize=9, loc="left")
    ax = axes[-1]
    for i, role in enumerate(roles):
        f0 = np.asarray(f0s[role], dtype=np.float64)
        t = np.arange(f0.size) * frame_period / 1000
        ax.plot(t, np.where(f0 > 0, f0, np.nan), label=role, lw=1.2, color=f"C{i}")
    ax.set_ylabel("F0 [Hz]")
    ax.set_xlabel("time [s]")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{example.direction} {example.id}", fontsize=10)
    fig.tight_layout()
    return _png_data_uri(fig)
