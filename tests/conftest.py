"""Shared fixtures: the real VCC 2016 files in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

VCC_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "vcc2016"


@pytest.fixture(scope="session")
def vcc_root() -> Path:
    if not (VCC_ROOT / "vcc2016_training" / "SF1").is_dir():
        pytest.skip(f"VCC 2016 data not found at {VCC_ROOT} (expected ../shared/data/vcc2016 beside the repo)")
    return VCC_ROOT


@pytest.fixture(scope="session")
def vcc_file(vcc_root):
    """Path of one real training utterance of a speaker: vcc_file('SF1', 100001)."""

    def get(speaker: str, number: int) -> Path:
        split = "vcc2016_training" if number < 200000 else "evaluation_all"
        return vcc_root / split / speaker / f"{number}.flac"

    return get
