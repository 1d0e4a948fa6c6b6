"""One training iteration, twice: the fast step :meth:`Trainer.train_step` runs, and the plain reference.

:func:`fast_train_step` and :func:`reference_train_step` compute the same losses and updates (within
float rounding, checked by ``tests/test_fast_step.py``); the reference is written for reading, the fast
one for speed (batched generator calls, one discriminator pass, gradients into persistent buffers,
fused Adam). Both take a :class:`~cyclegan_vc.training.trainer.Trainer` and update its networks,
optimisers, weight averages, step and learning rates; both return the same loss dict. Both cover the
successors' objectives: the two-step adversarial loss of CycleGAN-VC2 (``training.two_step_adversarial``:
second discriminators ``D2_a``, ``D2_b`` on the cycle-reconstructed features) and filling in frames of
MaskCycleGAN-VC (``training.mask_frames``: the source crops' masks, given by the trainer).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..directions import DISCRIMINATORS, GENERATORS
from ..losses import l1, lsgan_discriminator, lsgan_generator
from ..models import WeightGradientSink, gemm_convolutions
from .distributed import average_gradients

if TYPE_CHECKING:
    from ..config import TrainingConfig
    from .trainer import Trainer

__all__ = ["fast_train_step", "generator_loss", "loss_dict", "reference_train_step", "set_gradients"]


def fast_train_step(
    trainer: "Trainer", x: torch.Tensor, y: torch.Tensor, mask_a: torch.Tensor | None = None, mask_b: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The iteration of :func:`reference_train_step` with no recomputation and large batches.

    - every generator output is computed once, and passes through the same generator that do not
      depend on each other share one batched call (instance normalisation keeps samples
      independent): ``G_ab([x, y])`` gives ``fake_b`` and the identity ``G_ab(y)``;
      ``G_ba([y, x, fake_b])`` gives ``fake_a``, the identity ``G_ba(x)`` and the cycle ``G_ba(fake_b)``;
      ``G_ab(fake_a)`` the other cycle (without the identity loss: ``G_ab(x)``, ``G_ba([y, fake_b])``,
      ``G_ab(fake_a)``); with filling in frames, the masks of the batched call are the source's for
      ``x`` into ``G_ab`` and ``y`` into ``G_ba``, ones for the rest;
    - each discriminator runs once, on ``[real, fake]`` (the second-step ones on ``[real, cycle]``);
      its fake scores serve both the generators' adversarial loss and its own loss;
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
        mask_a, mask_b: ``(N, 1, crop_frames)`` filling-in-frames masks of ``x`` and ``y`` (1 kept,
            0 filled in), or ``None`` without masking.

    Returns:
        The loss dict of :func:`loss_dict`.
    """
    G_ab, G_ba = (trainer.calls[r] for r in GENERATORS)
    D_a, D_b = (trainer.calls[r] for r in DISCRIMINATORS)
    t = trainer.config.training
    identity_on = trainer.uses_identity
    two_step = t.two_step_adversarial
    plain_convolutions = (lambda: gemm_convolutions(False)) if t.compile != "none" else nullcontext
    if t.compile == "reduce-overhead" and trainer.device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()  # a new iteration: CUDA graph outputs of the last one are dead

    with trainer.autocast(), plain_convolutions():
        if identity_on:
            fake_b, same_b = _batched(G_ab, (x, mask_a), (y, None))
            fake_a, same_a, cycle_a = _batched(G_ba, (y, mask_b), (x, None), (fake_b, None))
        else:
            (fake_b,) = _batched(G_ab, (x, mask_a))
            fake_a, cycle_a = _batched(G_ba, (y, mask_b), (fake_b, None))
        (cycle_b,) = _batched(G_ab, (fake_a, None))
        real_score_a, fake_score_a = _batched(D_a, (x, None), (fake_a, None))
        real_score_b, fake_score_b = _batched(D_b, (y, None), (fake_b, None))
        terms = {
            "adversarial_ab": lsgan_generator(fake_score_b),
            "adversarial_ba": lsgan_generator(fake_score_a),
            "cycle": l1(cycle_a, x) + l1(cycle_b, y),
            "identity": l1(same_a, x) + l1(same_b, y) if identity_on else torch.zeros((), device=trainer.device),
            "discriminator_a": lsgan_discriminator(real_score_a, fake_score_a),
            "discriminator_b": lsgan_discriminator(real_score_b, fake_score_b),
        }
        if two_step:
            real_score2_a, cycle_score_a = _batched(trainer.calls["D2_a"], (x, None), (cycle_a, None))
            real_score2_b, cycle_score_b = _batched(trainer.calls["D2_b"], (y, None), (cycle_b, None))
            terms.update(
                adversarial2_a=lsgan_generator(cycle_score_a),
                adversarial2_b=lsgan_generator(cycle_score_b),
                discriminator2_a=lsgan_discriminator(real_score2_a, cycle_score_a),
                discriminator2_b=lsgan_discriminator(real_score2_b, cycle_score_b),
            )
        losses = loss_dict(t, terms, identity_on)

    g_params = [p for role in GENERATORS for p in trainer.networks[role].parameters()]
    d_params = [p for role in trainer.roles if role not in GENERATORS for p in trainer.networks[role].parameters()]
    with plain_convolutions():
        set_gradients(losses["generator"], g_params, retain_graph=True)  # through the discriminators: their weights get nothing
        set_gradients(losses["discriminator"], d_params, retain_graph=False)  # stops at the fakes: the generators get nothing
    average_gradients((p for role in trainer.roles for p in trainer.networks[role].parameters()), trainer.world)
    for role in trainer.roles:
        _use_fused_adam(trainer.optimizers[role])
        trainer.optimizers[role].step()
    trainer.finish_step()
    return {k: v.detach() for k, v in losses.items()}


def _batched(net: Callable[..., torch.Tensor], *parts: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
    """``net`` on the batch of every part's input, split back into one output per part.

    Each part is ``(input, mask)``; with no mask at all the network is called on the inputs alone,
    else with the masks (ones for a part without one) as its second argument.
    """
    inputs = torch.cat([p for p, _ in parts]) if len(parts) > 1 else parts[0][0]
    if all(m is None for _, m in parts):
        out = net(inputs)
    else:
        masks = [torch.ones_like(p[:, :1]) if m is None else m for p, m in parts]
        out = net(inputs, torch.cat(masks) if len(masks) > 1 else masks[0])
    return out.split(parts[0][0].shape[0])


def _generate(net: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``net(x)``, or ``net(x, mask)`` with a filling-in-frames mask."""
    return net(x) if mask is None else net(x, mask)


def reference_train_step(
    trainer: "Trainer", real_a: torch.Tensor, real_b: torch.Tensor,
    mask_a: torch.Tensor | None = None, mask_b: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The straightforward CycleGAN-VC iteration, kept as the numerical reference of :meth:`Trainer.train_step`.

    Does what :meth:`Trainer.train_step` does, written plainly:

    1. the discriminators frozen (``requires_grad_(False)``); the generator passes one by one:
       ``fake_b = G_ab(x)`` (with filling in frames ``G_ab(x * mask_a, mask_a)``),
       ``fake_a = G_ba(y)`` (``G_ba(y * mask_b, mask_b)``), the cycles ``G_ba(fake_b)``,
       ``G_ab(fake_a)`` and the identities ``G_ba(x)``, ``G_ab(y)`` with all-ones masks; the generator
       loss (:mod:`cyclegan_vc.losses`; with ``training.two_step_adversarial`` also
       ``lsgan_generator(D2_a(cycle_a)) + lsgan_generator(D2_b(cycle_b))``), its backward pass and one
       Adam step each for ``G_ab`` and ``G_ba``;
    2. fresh discriminator passes on the real batches and on the detached fakes (``D_a``: ``x`` against
       ``fake_a``; ``D_b``: ``y`` against ``fake_b``; the second-step ``D2_a``: ``x`` against the
       detached ``cycle_a``, ``D2_b``: ``y`` against ``cycle_b``), the discriminator loss's backward
       pass and one Adam step for each discriminator;
    3. :meth:`Trainer.finish_step`: weight averages, ``step += 1``, the learning-rate schedule.

    Uses the trainer's networks themselves (not compiled wrappers) and its optimisers as they are configured.

    Args:
        trainer: the trainer whose networks, optimisers and step are updated.
        real_a, real_b: ``(N, D, crop_frames)`` normalised MCEPs of speakers A and B.
        mask_a, mask_b: ``(N, 1, crop_frames)`` filling-in-frames masks of ``real_a`` and ``real_b``
            (1 kept, 0 filled in), or ``None`` without masking.

    Returns:
        The loss dict of :meth:`Trainer.train_step` (detached scalars, same keys).
    """
    x = real_a.to(trainer.device, torch.float32)
    y = real_b.to(trainer.device, torch.float32)
    G_ab, G_ba = (trainer.networks[r] for r in GENERATORS)
    D_a, D_b = (trainer.networks[r] for r in DISCRIMINATORS)
    discriminators = [role for role in trainer.roles if role not in GENERATORS]
    t = trainer.config.training
    identity_on = trainer.uses_identity
    two_step = t.two_step_adversarial

    for role in discriminators:
        trainer.networks[role].requires_grad_(False)
    try:
        with trainer.autocast():
            fake_b, fake_a = _generate(G_ab, x, mask_a), _generate(G_ba, y, mask_b)
            cycle_a, cycle_b = G_ba(fake_b), G_ab(fake_a)
            terms = {
                "adversarial_ab": lsgan_generator(D_b(fake_b)),
                "adversarial_ba": lsgan_generator(D_a(fake_a)),
                "cycle": l1(cycle_a, x) + l1(cycle_b, y),
                "identity": l1(G_ba(x), x) + l1(G_ab(y), y) if identity_on else torch.zeros((), device=trainer.device),
            }
            if two_step:
                terms["adversarial2_a"] = lsgan_generator(trainer.networks["D2_a"](cycle_a))
                terms["adversarial2_b"] = lsgan_generator(trainer.networks["D2_b"](cycle_b))
            loss_g = generator_loss(t, terms, identity_on)
        for role in GENERATORS:
            trainer.optimizers[role].zero_grad(set_to_none=True)
        loss_g.backward()
        average_gradients((p for role in GENERATORS for p in trainer.networks[role].parameters()), trainer.world)
        for role in GENERATORS:
            trainer.optimizers[role].step()
    finally:
        for role in discriminators:
            trainer.networks[role].requires_grad_(True)

    fake_a, fake_b, cycle_a, cycle_b = fake_a.detach(), fake_b.detach(), cycle_a.detach(), cycle_b.detach()
    with trainer.autocast():
        terms["discriminator_a"] = lsgan_discriminator(D_a(x), D_a(fake_a))
        terms["discriminator_b"] = lsgan_discriminator(D_b(y), D_b(fake_b))
        if two_step:
            D2_a, D2_b = trainer.networks["D2_a"], trainer.networks["D2_b"]
            terms["discriminator2_a"] = lsgan_discriminator(D2_a(x), D2_a(cycle_a))
            terms["discriminator2_b"] = lsgan_discriminator(D2_b(y), D2_b(cycle_b))
        losses = loss_dict(t, terms, identity_on)
    for role in discriminators:
        trainer.optimizers[role].zero_grad(set_to_none=True)
    losses["discriminator"].backward()
    average_gradients((p for role in discriminators for p in trainer.networks[role].parameters()), trainer.world)
    for role in discriminators:
        trainer.optimizers[role].step()

    trainer.finish_step()
    return {k: v.detach() for k, v in losses.items()}


def generator_loss(t: "TrainingConfig", terms: dict[str, torch.Tensor], identity_on: bool) -> torch.Tensor:
    """The generators' total: every adversarial term (the second step's too) with weight 1,
    ``cycle_weight * cycle`` and, while ``identity_on``, ``identity_weight * identity``."""
    loss = terms["adversarial_ab"] + terms["adversarial_ba"]
    if "adversarial2_a" in terms:
        loss = loss + terms["adversarial2_a"] + terms["adversarial2_b"]
    loss = loss + t.cycle_weight * terms["cycle"]
    if identity_on:
        loss = loss + t.identity_weight * terms["identity"]
    return loss


def loss_dict(t: "TrainingConfig", terms: dict[str, torch.Tensor], identity_on: bool) -> dict[str, torch.Tensor]:
    """The loss dict of one iteration from its terms, with the totals (not yet detached).

    Keys: ``generator`` (:func:`generator_loss`), ``adversarial_ab`` (D_b on G_ab's output),
    ``adversarial_ba``, ``cycle`` (unweighted L1 sum of both directions), ``identity`` (unweighted;
    0 after the cut-off), ``discriminator`` (the sum of every discriminator's loss),
    ``discriminator_a``, ``discriminator_b``; with the two-step adversarial loss also
    ``adversarial2_a`` (D2_a on the cycle-reconstructed A, ``G_ba(G_ab(x))``), ``adversarial2_b``,
    ``discriminator2_a`` and ``discriminator2_b``.
    """
    discriminator = terms["discriminator_a"] + terms["discriminator_b"]
    if "discriminator2_a" in terms:
        discriminator = discriminator + terms["discriminator2_a"] + terms["discriminator2_b"]
    losses = {"generator": generator_loss(t, terms, identity_on)}
    losses.update((k, terms[k]) for k in ("adversarial_ab", "adversarial_ba", "cycle", "identity"))
    losses["discriminator"] = discriminator
    losses.update((k, terms[k]) for k in ("discriminator_a", "discriminator_b"))
    losses.update((k, v) for k, v in terms.items() if k not in losses)
    return losses


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
