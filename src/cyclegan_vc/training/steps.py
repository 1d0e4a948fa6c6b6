"""One training iteration, twice: the fast step :meth:`Trainer.train_step` runs, and the plain reference.

:func:`fast_train_step` and :func:`reference_train_step` compute the same losses and updates (within
float rounding, checked by ``tests/test_fast_step.py``); the reference is written for reading, the fast
one for speed (batched generator calls, one discriminator pass, gradients into persistent buffers,
fused Adam). Both take a :class:`~cyclegan_vc.training.trainer.Trainer` and update its networks,
optimisers, weight averages, step and learning rates; both return the same loss dict.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..directions import DISCRIMINATORS, GENERATORS
from ..losses import l1, lsgan_discriminator, lsgan_generator
from ..models import WeightGradientSink, gemm_convolutions

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["fast_train_step", "reference_train_step"]


def fast_train_step(trainer: "Trainer", x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The iteration of :func:`reference_train_step` with no recomputation and large batches.

    - every generator output is computed once, and passes through the same generator that do not
      depend on each other share one batched call (instance normalisation keeps samples
      independent): ``G_ab([x, y])`` gives ``fake_b`` and the identity ``G_ab(y)``;
      ``G_ba([y, x, fake_b])`` gives ``fake_a``, the identity ``G_ba(x)`` and the cycle ``G_ba(fake_b)``;
      ``G_ab(fake_a)`` the other cycle (without the identity loss: ``G_ab(x)``, ``G_ba([y, fake_b])``,
      ``G_ab(fake_a)``);
    - each discriminator runs once, on ``[real, fake]``; its fake scores serve both the generators'
      adversarial loss and its own loss;
    - two backward passes through the shared graph: the generator loss to the generators'
      parameters only, the discriminator loss to the discriminators' parameters only (the gradient
      of the discriminator loss with respect to its parameters does not depend on whether the fake
      is detached). The weight gradients of the GEMM convolutions are computed with one matrix
      product per weight into persistent ``.grad`` buffers (:class:`~cyclegan_vc.models.WeightGradientSink`);
    - then one Adam step per network (switched to PyTorch's fused kernel); the discriminators'
      gradients come from their weights before any update, as in the reference.

    With ``training.compile`` the network calls go through ``torch.compile`` wrappers
    (``trainer.calls``) and the convolutions are the ordinary ones (the GEMM path is an eager-mode
    CPU optimisation, with its weight gradients outside autograd).

    Args:
        trainer: the trainer to update.
        x, y: ``(N, D, crop_frames)`` normalised MCEPs of speakers A and B on the trainer's device,
            of equal shapes (the batched calls need them).

    Returns:
        The loss dict of :func:`loss_dict`.
    """
    G_ab, G_ba = (trainer.calls[r] for r in GENERATORS)
    D_a, D_b = (trainer.calls[r] for r in DISCRIMINATORS)
    t = trainer.config.training
    identity_on = trainer.uses_identity
    n = x.shape[0]
    plain_convolutions = (lambda: gemm_convolutions(False)) if t.compile != "none" else nullcontext
    if t.compile == "reduce-overhead" and trainer.device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration: CUDA graph outputs of the last one are dead

    with trainer.autocast(), plain_convolutions():
        if identity_on:
            fake_b, same_b = G_ab(torch.cat([x, y])).split(n)
            fake_a, same_a, cycle_a = G_ba(torch.cat([y, x, fake_b])).split(n)
        else:
            fake_b = G_ab(x)
            fake_a, cycle_a = G_ba(torch.cat([y, fake_b])).split(n)
        cycle_b = G_ab(fake_a)
        real_score_a, fake_score_a = D_a(torch.cat([x, fake_a])).split(n)
        real_score_b, fake_score_b = D_b(torch.cat([y, fake_b])).split(n)

        adv_ab = lsgan_generator(fake_score_b)
        adv_ba = lsgan_generator(fake_score_a)
        cycle = l1(cycle_a, x) + l1(cycle_b, y)
        if identity_on:
            identity = l1(same_a, x) + l1(same_b, y)
            loss_g = adv_ab + adv_ba + t.cycle_weight * cycle + t.identity_weight * identity
        else:
            identity = torch.zeros((), device=trainer.device)
            loss_g = adv_ab + adv_ba + t.cycle_weight * cycle
        loss_d_a = lsgan_discriminator(real_score_a, fake_score_a)
        loss_d_b = lsgan_discriminator(real_score_b, fake_score_b)
        loss_d = loss_d_a + loss_d_b

    g_params = [p for role in GENERATORS for p in trainer.networks[role].parameters()]
    d_params = [p for role in DISCRIMINATORS for p in trainer.networks[role].parameters()]
    with plain_convolutions():
        set_gradients(loss_g, g_params, retain_graph=True)  # through D_a, D_b: their weights get nothing
        set_gradients(loss_d, d_params, retain_graph=False)  # stops at the fakes: G_ab, G_ba get nothing
    for role in trainer.roles:
        _use_fused_adam(trainer.optimizers[role])
        trainer.optimizers[role].step()
    trainer.finish_step()
    return loss_dict(loss_g, adv_ab, adv_ba, cycle, identity, loss_d, loss_d_a, loss_d_b)


def reference_train_step(trainer: "Trainer", real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The straightforward CycleGAN-VC iteration, kept as the numerical reference of :meth:`Trainer.train_step`.

    Does what :meth:`Trainer.train_step` does, written plainly: the generator passes one by one
    (``G_ab(x)``, ``G_ba(y)``, the cycles, the identities), the discriminators frozen
    (``requires_grad_(False)``) for the generators' backward pass and one Adam step each for ``G_ab``
    and ``G_ba``; then fresh discriminator passes on the real batches and on the detached fakes, the
    discriminator loss's backward pass and one Adam step each for ``D_a`` and ``D_b``; ``step += 1``
    and the learning-rate schedule. Uses the trainer's networks themselves (not compiled wrappers) and
    its optimisers as they are configured.

    Args:
        trainer: the trainer whose networks, optimisers and step are updated.
        real_a, real_b: ``(N, D, crop_frames)`` normalised MCEPs of speakers A and B.

    Returns:
        The loss dict of :meth:`Trainer.train_step` (detached scalars, same keys).
    """
    x = real_a.to(trainer.device, torch.float32)
    y = real_b.to(trainer.device, torch.float32)
    G_ab, G_ba = (trainer.networks[r] for r in GENERATORS)
    D_a, D_b = (trainer.networks[r] for r in DISCRIMINATORS)
    t = trainer.config.training
    identity_on = trainer.uses_identity

    for d in (D_a, D_b):
        d.requires_grad_(False)
    try:
        with trainer.autocast():
            fake_b, fake_a = G_ab(x), G_ba(y)
            cycle_a, cycle_b = G_ba(fake_b), G_ab(fake_a)
            adv_ab = lsgan_generator(D_b(fake_b))
            adv_ba = lsgan_generator(D_a(fake_a))
            cycle = l1(cycle_a, x) + l1(cycle_b, y)
            if identity_on:
                identity = l1(G_ba(x), x) + l1(G_ab(y), y)
                loss_g = adv_ab + adv_ba + t.cycle_weight * cycle + t.identity_weight * identity
            else:
                identity = torch.zeros((), device=trainer.device)
                loss_g = adv_ab + adv_ba + t.cycle_weight * cycle
        for role in GENERATORS:
            trainer.optimizers[role].zero_grad(set_to_none=True)
        loss_g.backward()
        for role in GENERATORS:
            trainer.optimizers[role].step()
    finally:
        for d in (D_a, D_b):
            d.requires_grad_(True)

    fake_a, fake_b = fake_a.detach(), fake_b.detach()
    with trainer.autocast():
        loss_d_a = lsgan_discriminator(D_a(x), D_a(fake_a))
        loss_d_b = lsgan_discriminator(D_b(y), D_b(fake_b))
        loss_d = loss_d_a + loss_d_b
    for role in DISCRIMINATORS:
        trainer.optimizers[role].zero_grad(set_to_none=True)
    loss_d.backward()
    for role in DISCRIMINATORS:
        trainer.optimizers[role].step()

    trainer.finish_step()
    return loss_dict(loss_g, adv_ab, adv_ba, cycle, identity, loss_d, loss_d_a, loss_d_b)


def loss_dict(
    loss_g: torch.Tensor, adv_ab: torch.Tensor, adv_ba: torch.Tensor, cycle: torch.Tensor, identity: torch.Tensor,
    loss_d: torch.Tensor, loss_d_a: torch.Tensor, loss_d_b: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The loss dict of one iteration, detached scalars: ``generator`` (total), ``adversarial_ab`` (D_b
    on G_ab's output), ``adversarial_ba``, ``cycle`` (unweighted L1 sum of both directions),
    ``identity`` (unweighted; 0 after the cut-off), ``discriminator`` (total), ``discriminator_a``,
    ``discriminator_b``."""
    losses = {
        "generator": loss_g,
        "adversarial_ab": adv_ab,
        "adversarial_ba": adv_ba,
        "cycle": cycle,
        "identity": identity,
        "discriminator": loss_d,
        "discriminator_a": loss_d_a,
        "discriminator_b": loss_d_b,
    }
    return {k: v.detach() for k, v in losses.items()}


def set_gradients(loss: torch.Tensor, params: list[nn.Parameter], retain_graph: bool) -> None:
    """``p.grad = d loss / d p`` for ``params`` only (no other tensor gets a gradient).

    Weight gradients of GEMM convolutions are deferred to a :class:`WeightGradientSink` and written
    with one matrix product per weight into the parameter's existing ``.grad`` buffer, which is kept
    from step to step (no weight-sized allocation, hence no page faults, per iteration). A gradient laid
    out unlike its parameter is copied into the parameter's layout. Parameters
    that ``loss`` does not reach get ``None``, as after ``zero_grad(set_to_none=True)`` and ``backward``.
    """
    with WeightGradientSink(params) as sink:
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        if g is None and p in sink:
            buffer = p.grad
            if (
                buffer is None
                or buffer.shape != p.shape
                or buffer.dtype != p.dtype
                or buffer.device != p.device
                or not buffer.is_contiguous()
            ):
                buffer = torch.empty_like(p, memory_format=torch.contiguous_format)
            g = sink.gradient(p, out=buffer)
        elif g is not None and g.stride() != p.stride():
            # laid out like the parameter: a compiled backward returns some convolution weight gradients
            # channels-last, and PyTorch's fused CPU Adam then updates such a gradient wrongly, silently
            g = torch.empty_like(p).copy_(g)
        p.grad = g


def _use_fused_adam(optimizer: torch.optim.Optimizer) -> None:
    """Switch a :class:`torch.optim.Adam` to PyTorch's fused kernel where it has one (CPU, CUDA).

    The fused kernel updates each parameter and its two moments in one pass over them and the
    gradient, instead of about ten element-wise passes with temporaries (the same update within float
    rounding). Idempotent; leaves other optimisers and groups with ``foreach``, ``differentiable`` or
    non-float parameters alone. The ``step`` counters move to the parameters' device as float32, as
    the fused kernel needs and as :meth:`~torch.optim.Optimizer.load_state_dict` does for a fused group.
    """
    if type(optimizer) is not torch.optim.Adam:
        return
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("foreach") or group.get("differentiable"):
            continue
        params = group["params"]
        if not all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
            continue
        group["fused"] = True
        for p in params:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
