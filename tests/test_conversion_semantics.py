"""What a direction means, pinned with networks whose output shows which one ran: A2B runs G_ab on
features normalised with A's statistics and de-normalises with B's; B2A the reverse; F0 follows the
log-Gaussian transform from the source's to the target's statistics, computed here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cyclegan_vc.conversion import VoiceConverter
from cyclegan_vc.features import FeatureConfig, WorldFeatures
from cyclegan_vc.stats import SpeakerStats

DIM = 24


class Scale(nn.Module):
    """``y = factor * x``: a generator whose output names it."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


@pytest.fixture(scope="module")
def converter() -> VoiceConverter:
    rng = np.random.default_rng(3)
    stats = {
        "A": SpeakerStats(rng.normal(0, 1, DIM), rng.uniform(0.5, 1.0, DIM), np.log(220.0), 0.15, 100, 80),
        "B": SpeakerStats(rng.normal(3, 1, DIM), rng.uniform(1.5, 2.5, DIM), np.log(110.0), 0.25, 100, 80),
    }
    return VoiceConverter({"G_ab": Scale(2.0), "G_ba": Scale(-0.5)}, stats, FeatureConfig(mcep_dim=DIM), device="cpu")


@pytest.mark.parametrize("direction, generator_factor, source, target", [("A2B", 2.0, "A", "B"), ("B2A", -0.5, "B", "A")])
def test_a_direction_uses_its_generator_and_the_source_then_the_target_statistics(converter, direction, generator_factor,
                                                                                 source, target):
    x = np.random.default_rng(0).normal(size=(37, DIM))  # 37 frames: padded to 40 and trimmed back
    src, tgt = converter.stats[source], converter.stats[target]
    expected = generator_factor * (x - src.mcep_mean) / src.mcep_std * tgt.mcep_std + tgt.mcep_mean
    np.testing.assert_allclose(converter.convert_mcep(x, direction), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction, source, target", [("A2B", "A", "B"), ("B2A", "B", "A")])
def test_f0_goes_from_the_source_speakers_log_gaussian_to_the_targets_and_aperiodicity_is_kept(converter, direction,
                                                                                            source, target):
    src, tgt = converter.stats[source], converter.stats[target]
    f0 = np.array([0.0, 200.0, 250.0, 0.0, 180.0, 300.0, 0.0, 210.0])
    ap = np.random.default_rng(1).uniform(size=(8, 513))
    out = converter.convert_features(WorldFeatures(f0=f0, mcep=np.zeros((8, DIM)), ap=ap), direction)
    voiced = f0 > 0
    expected = np.exp((np.log(f0[voiced]) - src.logf0_mean) / src.logf0_std * tgt.logf0_std + tgt.logf0_mean)
    np.testing.assert_allclose(out.f0[voiced], expected, rtol=1e-12)
    assert np.all(out.f0[~voiced] == 0)
    assert out.ap is ap
