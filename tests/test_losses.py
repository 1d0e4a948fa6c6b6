"""The loss functions against hand computations on small tensors: least squares with targets 1 for real
and 0 for fake, L1 (not L2, not a sum) for cycle and identity, and the generators' total with the
config's weights."""

from __future__ import annotations

import pytest
import torch

from cyclegan_vc.config import load_config
from cyclegan_vc.losses import l1, lsgan_discriminator, lsgan_generator
from cyclegan_vc.training.steps import generator_loss, loss_dict


def test_lsgan_generator_pulls_the_fake_scores_towards_1():
    scores = torch.tensor([[0.5, 2.0], [-1.0, 1.0]])
    # ((0.5-1)^2 + (2-1)^2 + (-1-1)^2 + 0) / 4
    assert float(lsgan_generator(scores)) == pytest.approx((0.25 + 1.0 + 4.0 + 0.0) / 4)
    assert float(lsgan_generator(torch.ones(3, 1, 2, 4))) == 0.0  # every patch judged real: no loss
    assert float(lsgan_generator(torch.zeros(5))) == 1.0


def test_lsgan_discriminator_targets_1_for_real_and_0_for_fake():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.5, -1.0])
    # mean((real - 1)^2) + mean(fake^2), no factor 1/2
    assert float(lsgan_discriminator(real, fake)) == pytest.approx((1.0 + 1.0) / 2 + (0.25 + 1.0) / 2)
    assert float(lsgan_discriminator(torch.ones(4), torch.zeros(4))) == 0.0  # a perfect discriminator
    assert float(lsgan_discriminator(torch.zeros(4), torch.ones(4))) == 2.0  # the targets swapped cost
    # real and fake of different shapes (batches of patches): each a mean of its own
    assert float(lsgan_discriminator(torch.full((2, 3), 3.0), torch.full((1, 5), 2.0))) == pytest.approx(4.0 + 4.0)


def test_l1_is_the_mean_absolute_error():
    prediction = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    target = torch.zeros(2, 2)
    assert float(l1(prediction, target)) == pytest.approx((1 + 2 + 3 + 0) / 4)  # not (1 + 4 + 9) / 4, not 6
    assert float(l1(target, prediction)) == float(l1(prediction, target))
    assert float(l1(prediction.double(), prediction.half())) == 0.0  # computed in float32 whatever comes in


def terms(**values: float) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}


def test_the_generators_total_weights_cycle_and_identity_by_the_config():
    t = load_config("debug", ["training.cycle_weight=3", "training.identity_weight=7"]).training
    parts = terms(adversarial_ab=0.5, adversarial_ba=0.25, cycle=2.0, identity=4.0,
                  discriminator_a=1.0, discriminator_b=3.0)
    assert float(generator_loss(t, parts, identity_on=True)) == pytest.approx(0.75 + 3 * 2.0 + 7 * 4.0)
    assert float(generator_loss(t, parts, identity_on=False)) == pytest.approx(0.75 + 3 * 2.0)  # after the cut-off
    losses = loss_dict(t, parts, identity_on=True)
    assert float(losses["discriminator"]) == 4.0
    assert list(losses) == ["generator", "adversarial_ab", "adversarial_ba", "cycle", "identity",
                            "discriminator", "discriminator_a", "discriminator_b"]
    # the two-step adversarial terms count with weight 1 on both sides
    parts.update(terms(adversarial2_a=0.125, adversarial2_b=0.0625, discriminator2_a=5.0, discriminator2_b=6.0))
    losses = loss_dict(t, parts, identity_on=True)
    assert float(losses["generator"]) == pytest.approx(0.75 + 0.1875 + 3 * 2.0 + 7 * 4.0)
    assert float(losses["discriminator"]) == 15.0
    assert {"adversarial2_a", "adversarial2_b", "discriminator2_a", "discriminator2_b"} <= set(losses)
