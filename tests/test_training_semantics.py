"""What training computes, pinned by hand: the objective of one iteration with networks simple enough to
work out (which generator feeds which discriminator, the cycles, the identities, the weights, the
second step), the direction -> generator -> statistics of the Trainer's conversion, validation's MCD
against :mod:`cyclegan_vc.metrics` on the same features, and the residual block's skip connection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cyclegan_vc.audio import load_audio
from cyclegan_vc.config import load_config
from cyclegan_vc.features import WorldFeatures, decode_aperiodicity, synthesize
from cyclegan_vc.metrics import mcd, mel_cepstrum
from cyclegan_vc.models import ResidualBlock1d
from cyclegan_vc.stats import SpeakerStats, convert_f0
from cyclegan_vc.training import Trainer, TrainingData, reference_train_step

pytestmark = pytest.mark.usefixtures("one_thread")


class Shift(nn.Module):
    """A stand-in generator ``x -> scale * x + offset`` (a mask, if given, is ignored)."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.offset = nn.Parameter(torch.tensor(float(offset)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * x + self.offset


class MeanScore(nn.Module):
    """A stand-in discriminator: ``weight * mean(x) + bias`` per sample, shape ``(N,)``."""

    def __init__(self, weight: float, bias: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(weight)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x.mean(dim=(1, 2)) + self.bias


def with_networks(trainer: Trainer, networks: dict[str, nn.Module]) -> Trainer:
    """``trainer`` running ``networks`` (its calls and Adam optimisers rebuilt for them)."""
    t = trainer.config.training
    trainer.networks = dict(networks)
    trainer.calls = dict(networks)
    trainer.optimizers = {
        role: torch.optim.Adam(net.parameters(), lr=trainer.base_lr[role],
                               betas=tuple(t.generator_betas if role.startswith("G") else t.discriminator_betas))
        for role, net in networks.items()
    }
    return trainer


def lsgan(scores: torch.Tensor, target: float) -> float:
    return float(((scores.double() - target) ** 2).mean())


def mean_abs(a: torch.Tensor) -> float:
    return float(a.double().abs().mean())


# --- the objective of one iteration, worked out by hand ---------------------------------------------


@pytest.mark.parametrize("two_step", [False, True], ids=["one-step", "two-step"])
@pytest.mark.parametrize("step", ["fast", "reference"])
def test_one_iteration_computes_the_papers_objective(step, two_step):
    config = load_config("debug", ["training.cycle_weight=3", "training.identity_weight=7",
                                   f"training.two_step_adversarial={str(two_step).lower()}"])
    networks = {"G_ab": Shift(1.0, 1.0), "G_ba": Shift(2.0, 0.0), "D_a": MeanScore(1.0, 0.0), "D_b": MeanScore(0.5, 0.25)}
    if two_step:
        networks.update(D2_a=MeanScore(-1.0, 0.5), D2_b=MeanScore(2.0, -0.5))
    trainer = with_networks(Trainer(config), networks)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 24, 32, generator=g), torch.randn(2, 24, 32, generator=g) + 0.5
    losses = {k: float(v) for k, v in (trainer.train_step(x, y) if step == "fast" else reference_train_step(trainer, x, y)).items()}

    def D(name: str, v: torch.Tensor) -> torch.Tensor:  # the stand-ins' scores before the update
        w, b = {"D_a": (1.0, 0.0), "D_b": (0.5, 0.25), "D2_a": (-1.0, 0.5), "D2_b": (2.0, -0.5)}[name]
        return w * v.double().mean(dim=(1, 2)) + b

    fake_b, fake_a = x + 1.0, 2.0 * y  # G_ab(x), G_ba(y)
    cycle_a, cycle_b = 2.0 * fake_b, fake_a + 1.0  # G_ba(G_ab(x)), G_ab(G_ba(y))
    expected = {
        "adversarial_ab": lsgan(D("D_b", fake_b), 1.0),  # D_b judges G_ab's output as real
        "adversarial_ba": lsgan(D("D_a", fake_a), 1.0),
        "cycle": mean_abs(cycle_a - x) + mean_abs(cycle_b - y),  # L1, both directions
        "identity": mean_abs(2.0 * x - x) + mean_abs((y + 1.0) - y),  # G_ba(x) ~ x, G_ab(y) ~ y
        "discriminator_a": lsgan(D("D_a", x), 1.0) + lsgan(D("D_a", fake_a), 0.0),
        "discriminator_b": lsgan(D("D_b", y), 1.0) + lsgan(D("D_b", fake_b), 0.0),
    }
    adversarial = expected["adversarial_ab"] + expected["adversarial_ba"]
    discriminator = expected["discriminator_a"] + expected["discriminator_b"]
    if two_step:
        expected.update(
            adversarial2_a=lsgan(D("D2_a", cycle_a), 1.0),  # the reconstructed A judged as real A
            adversarial2_b=lsgan(D("D2_b", cycle_b), 1.0),
            discriminator2_a=lsgan(D("D2_a", x), 1.0) + lsgan(D("D2_a", cycle_a), 0.0),
            discriminator2_b=lsgan(D("D2_b", y), 1.0) + lsgan(D("D2_b", cycle_b), 0.0),
        )
        adversarial += expected["adversarial2_a"] + expected["adversarial2_b"]
        discriminator += expected["discriminator2_a"] + expected["discriminator2_b"]
    expected["generator"] = adversarial + 3 * expected["cycle"] + 7 * expected["identity"]
    expected["discriminator"] = discriminator
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key] == pytest.approx(value, rel=1e-5), key


# --- direction -> generator -> statistics -----------------------------------------------------------


def distinct_speakers(dim: int = 24) -> TrainingData:
    rng = np.random.default_rng(0)
    stats = {
        "A": SpeakerStats(rng.normal(0.0, 1.0, dim), rng.uniform(0.5, 1.0, dim), 5.0, 0.2, 100, 80),
        "B": SpeakerStats(rng.normal(3.0, 1.0, dim), rng.uniform(1.5, 3.0, dim), 4.5, 0.3, 100, 80),
    }
    mceps = {role: [rng.standard_normal((dim, 40)).astype(np.float32)] for role in ("A", "B")}
    return TrainingData(mceps=mceps, stats=stats)


def test_conversion_in_training_takes_the_directions_generator_and_the_source_then_target_statistics():
    data = distinct_speakers()
    trainer = Trainer(load_config("debug"), data)
    # generators whose outputs name them: G_ab adds 1, G_ba subtracts 1 (normalised domain)
    with_networks(trainer, {**trainer.networks, "G_ab": Shift(1.0, 1.0), "G_ba": Shift(1.0, -1.0)})
    mcep = np.random.default_rng(1).normal(size=(30, 24))
    a, b = data.stats["A"], data.stats["B"]
    expected = {
        "A2B": ((mcep - a.mcep_mean) / a.mcep_std + 1.0) * b.mcep_std + b.mcep_mean,
        "B2A": ((mcep - b.mcep_mean) / b.mcep_std - 1.0) * a.mcep_std + a.mcep_mean,
    }
    for direction, want in expected.items():
        np.testing.assert_allclose(trainer.convert_mcep(mcep, direction), want, rtol=1e-5, atol=1e-5)
    assert all(net.training for net in trainer.networks.values())  # back in training mode


def test_validation_mcd_is_the_metrics_mcd_of_the_converted_features(tiny_prepared):
    data = TrainingData.from_prepared(tiny_prepared, eval_pairs=1)
    trainer = Trainer(load_config("debug", ["training.validation_utterances=1"]), data)
    with_networks(trainer, {**trainer.networks, "G_ab": Shift(0.5, 0.3), "G_ba": Shift(0.8, -0.2)})
    metrics = trainer.validate()
    features, stats = data.features, data.stats
    source_a, source_b = data.eval_pairs[0]
    shifts = {"A2B": (0.5, 0.3), "B2A": (0.8, -0.2)}
    for direction, source, target, src, tgt in (("A2B", source_a, source_b, "A", "B"), ("B2A", source_b, source_a, "B", "A")):
        scale, offset = shifts[direction]
        normalised = (source.mcep - stats[src].mcep_mean) / stats[src].mcep_std
        converted = WorldFeatures(
            f0=convert_f0(source.f0, stats[src], stats[tgt]),
            mcep=(scale * normalised + offset) * stats[tgt].mcep_std + stats[tgt].mcep_mean,
            ap=decode_aperiodicity(source.ap_coded, features),
        )
        wave = synthesize(converted, features)
        reference, _ = load_audio(target.audio, features.sample_rate)
        want = mcd(mel_cepstrum(reference, features.sample_rate, features).mc, mel_cepstrum(wave, features.sample_rate, features).mc)
        assert metrics[f"mcd_{direction}"] == pytest.approx(want, rel=1e-4), direction
    source_wave, _ = load_audio(source_a.audio, features.sample_rate)
    target_wave, _ = load_audio(source_b.audio, features.sample_rate)
    none = mcd(mel_cepstrum(target_wave, features.sample_rate, features).mc, mel_cepstrum(source_wave, features.sample_rate, features).mc)
    assert metrics["mcd_none"] == pytest.approx(none, rel=1e-6)
    assert metrics["score"] == pytest.approx((metrics["mcd_A2B"] + metrics["mcd_B2A"]) / 2)
    assert metrics["mcd_A2B"] != pytest.approx(metrics["mcd_B2A"], rel=1e-3)  # the directions differ


# --- the residual block ------------------------------------------------------------------------------


def instance_norm(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = h.mean(dim=-1, keepdim=True)
    var = h.var(dim=-1, unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + eps) * weight[None, :, None] + bias[None, :, None]


def test_residual_block_adds_its_input_to_its_gated_path():
    torch.manual_seed(0)
    block = ResidualBlock1d(channels=6, hidden_channels=10, kernel_size=3).double()
    with torch.no_grad():
        for norm in (block.gated.norm, block.norm):  # affine parameters away from 1 and 0
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        # x + IN(conv(GLU(IN(conv(x))))), the paper's block, from the block's own weights
        h = F.conv1d(x, block.gated.conv.weight, block.gated.conv.bias, padding=1)
        h = F.glu(instance_norm(h, block.gated.norm.weight, block.gated.norm.bias), dim=1)
        path = instance_norm(F.conv1d(h, block.conv.weight, None, padding=1), block.norm.weight, block.norm.bias)
        out = block(x)
    torch.testing.assert_close(out, x + path, rtol=1e-10, atol=1e-10)
    assert float((out - path - x).abs().max()) < 1e-10 and float(path.abs().mean()) > 0.1  # both summands matter
