"""Loss functions of CycleGAN-VC as small pure functions.

Every loss is a mean over all elements (batch, channels, frames or patches), as in the paper's
TensorFlow code. The totals the trainer optimises are, per iteration (``lambda_cyc = 10``,
``lambda_id = 5``, identity only while ``step < identity_steps``):

- generators: ``lsgan_generator(D_b(G_ab(x))) + lsgan_generator(D_a(G_ba(y)))
  + lambda_cyc * (l1(G_ba(G_ab(x)), x) + l1(G_ab(G_ba(y)), y))
  + lambda_id * (l1(G_ba(x), x) + l1(G_ab(y), y))``
- discriminators: ``lsgan_discriminator(D_a(x), D_a(fake_a)) + lsgan_discriminator(D_b(y), D_b(fake_b))``,
  each term ``mean((D(real) - 1)^2) + mean(D(fake)^2)`` with no factor 1/2;
- with the two-step adversarial loss of CycleGAN-VC2 (``training.two_step_adversarial``), the
  generators' total gains ``lsgan_generator(D2_a(cycle_a)) + lsgan_generator(D2_b(cycle_b))`` and the
  discriminators' ``lsgan_discriminator(D2_a(x), D2_a(cycle_a)) + lsgan_discriminator(D2_b(y), D2_b(cycle_b))``
  (``cycle_a = G_ba(G_ab(x))``, ``cycle_b = G_ab(G_ba(y))``).

The totals are assembled in :mod:`cyclegan_vc.training.steps`.

Adam is invariant to a constant scale of the loss, so these conventions only matter when comparing
loss values between implementations.
"""

from __future__ import annotations

import torch

__all__ = ["l1", "lsgan_discriminator", "lsgan_generator"]


def lsgan_generator(fake_score: torch.Tensor) -> torch.Tensor:
    """Least-squares adversarial loss of a generator: ``mean((D(fake) - 1)^2)``."""
    return torch.mean(torch.square(fake_score.float() - 1.0))


def lsgan_discriminator(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
    """Least-squares loss of a discriminator: ``mean((D(real) - 1)^2) + mean(D(fake)^2)``."""
    return torch.mean(torch.square(real_score.float() - 1.0)) + torch.mean(torch.square(fake_score.float()))


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (cycle-consistency and identity-mapping losses)."""
    return torch.mean(torch.abs(prediction.float() - target.float()))
