"""Helpers shared by the benchmark scripts: hardware description and default data paths."""

from __future__ import annotations

import os
import platform
from pathlib import Path

DEFAULT_VCC = Path(__file__).resolve().parents[2] / "shared" / "data" / "vcc2016"


def hardware() -> str:
    """One line naming the CPU, its logical cores and the torch / Python versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} logical cores", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return ", ".join(parts)
