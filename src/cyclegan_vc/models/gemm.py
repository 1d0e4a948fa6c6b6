"""Convolutions computed as explicit GEMMs on the CPU in training: a speed measure, the same function.

In training on the CPU (autograd recording, float32/64) every convolution of the networks runs as one
explicit GEMM (:class:`GemmConv1d`, :class:`GemmConv2d`): im2col of the whole batch into a
``(C_in * k, N * frames)`` matrix, one matrix product with the ``(C_out, C_in * k)`` weight, and the
transposed products in the backward pass. This is the same function as ``torch.nn.Conv1d`` /
``Conv2d`` (same parameters and ``state_dict`` keys, results equal up to float rounding); with the
small batches and long kernels of CycleGAN-VC training it is faster than the oneDNN and native
kernels, which choose slow algorithms for some of these shapes (the discriminator's 6x3
stride-(1, 2) layer above all; measured in docs/performance.md, ``benchmarks/train_step.py``).
Elsewhere (CUDA, autocast, other dtypes) and without autograd (inference, where oneDNN does well on
long utterances) the layers call the ordinary convolution.

A stride-1 2-D layer with at most a quarter as many output channels as input ones (the generators'
and discriminators' one-channel output layers) runs as :func:`tap_conv2d` instead: one product for
every kernel tap and a sum of shifted views, without im2col's ``C_in * kh * kw`` rows.

A :class:`WeightGradientSink` lets a training step collect the weight-gradient terms of these
convolutions during a backward pass and turn them into one GEMM per weight afterwards, written into
persistent ``.grad`` buffers (see the training package's fast step).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GemmConv1d", "GemmConv2d", "WeightGradientSink", "gemm_conv2d", "gemm_convolutions", "live_samples", "tap_conv2d"]

_SINKS = threading.local()


class WeightGradientSink:
    """Defers the weight gradients of :func:`gemm_conv2d` during one backward pass.

    While a sink is active (``with sink:``), a GEMM convolution whose weight is one of ``params``
    does not compute that weight's gradient in its backward step: it hands the sink the two factors
    (output gradient ``(C_out, L)`` and im2col matrix ``(C_in * k, L)``) and returns no gradient for
    the weight. A weight used several times in the pass (a generator called twice) collects several
    terms. :meth:`gradient` then computes ``sum_i grad_out_i @ cols_i^T`` as ONE matrix product over
    the concatenated ``L`` axes, optionally straight into a caller's buffer: no per-call product, no
    accumulation pass and no fresh allocation of weight-sized tensors.

    Leaf weights and biases of GEMM convolutions that are NOT in ``params`` get no gradient at all
    while the sink is active, so a backward pass meant for other networks wastes no work on them.
    Biases in ``params`` and non-leaf weights (e.g. computed by a parametrisation) get their gradients
    through autograd as usual.

    The sink is thread-local; backward passes that run in another thread (CUDA) or through ordinary
    convolutions return their weight gradients through autograd.

    Args:
        params: the tensors whose gradients this backward pass is for.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self._wanted = {id(p): p for p in params}
        self._terms: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self._previous: WeightGradientSink | None = None

    def __enter__(self) -> "WeightGradientSink":
        self._previous = getattr(_SINKS, "active", None)
        _SINKS.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        _SINKS.active = self._previous

    def wants(self, key: int) -> bool:
        """Whether the tensor with ``id`` ``key`` is one of the sink's ``params``."""
        return key in self._wanted

    def add(self, key: int, grad_out: torch.Tensor, cols: torch.Tensor) -> None:
        """Record one term ``grad_out (C_out, L) @ cols (K, L)^T`` of the gradient of the weight ``id`` ``key``."""
        grads, cols_list = self._terms.setdefault(key, ([], []))
        grads.append(grad_out)
        cols_list.append(cols)

    def __contains__(self, weight: torch.Tensor) -> bool:
        """Whether terms of ``weight``'s gradient were recorded (and not yet taken by :meth:`gradient`)."""
        return id(weight) in self._terms

    def gradient(self, weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The deferred gradient of ``weight`` (its shape), written into ``out`` when given.

        ``out`` must be a contiguous tensor of ``weight``'s shape, dtype and device. The recorded terms
        are released.
        """
        grads, cols = self._terms.pop(id(weight))
        g = grads[0] if len(grads) == 1 else torch.cat(grads, dim=1)
        c = cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)
        if out is None:
            return torch.mm(g, c.t()).view(weight.shape)
        torch.mm(g, c.t(), out=out.view(g.shape[0], c.shape[0]))
        return out


def _gets_gradient(sink: WeightGradientSink | None, key: int | None) -> bool:
    """The sink's rule for a gradient returned through autograd: without an active ``sink`` or for a
    non-leaf (``key`` ``None``) always; under one, only for one of its params."""
    return sink is None or key is None or sink.wants(key)


def _active_sink() -> WeightGradientSink | None:
    return getattr(_SINKS, "active", None)


class _GemmConvFunction(torch.autograd.Function):
    """Convolution (no dilation, one group) as im2col + one GEMM over the whole batch.

    1-D inputs ``(N, C, W)`` with ``(C_out, C_in, k)`` weights run as 2-D with height 1.
    ``weight_key`` / ``bias_key``: ``id`` of a leaf weight / bias (for a :class:`WeightGradientSink`),
    ``None`` otherwise.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, weight_key, bias_key):  # type: ignore[override]
        one_d = weight.dim() == 3
        if one_d:
            x, weight4 = x.unsqueeze(2), weight.unsqueeze(2)
        else:
            weight4 = weight
        n, cin, height, width = x.shape
        cout, _, kh, kw = weight4.shape
        sh, sw = stride
        top, bottom, left, right = padding
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        x = x.contiguous()
        hp, wp = height + top + bottom, width + left + right
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        # im2col straight into the (C_in * kh * kw, N * H_out * W_out) layout of one GEMM
        cols = x.as_strided((cin, kh, kw, n, ho, wo), (hp * wp, wp, 1, cin * hp * wp, sh * wp, sw))
        cols = cols.reshape(cin * kh * kw, n * ho * wo)
        w2 = weight4.reshape(cout, cin * kh * kw)
        out = torch.mm(w2, cols) if bias is None else torch.addmm(bias.unsqueeze(1), w2, cols)
        ctx.save_for_backward(cols, weight)
        ctx.geometry = (one_d, n, cin, height, width, hp, wp, ho, wo, sh, sw, top, left, kh, kw)
        ctx.keys = (weight_key, bias_key)
        out = out.view(cout, n, ho, wo).transpose(0, 1).contiguous()
        return out.squeeze(2) if one_d else out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        cols, weight = ctx.saved_tensors
        one_d, n, cin, height, width, hp, wp, ho, wo, sh, sw, top, left, kh, kw = ctx.geometry
        weight_key, bias_key = ctx.keys
        cout = weight.shape[0]
        go = grad.reshape(n, cout, ho * wo).transpose(0, 1).reshape(cout, n * ho * wo)
        sink = _active_sink()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            if sink is None or weight_key is None:
                grad_w = torch.mm(go, cols.t()).view(weight.shape)
            elif sink.wants(weight_key):
                sink.add(weight_key, go, cols)
        if ctx.needs_input_grad[2] and _gets_gradient(sink, bias_key):
            grad_b = go.sum(1)
        if ctx.needs_input_grad[0]:
            padded = grad.new_zeros((n, cin, hp, wp))
            first, last = live_samples(grad)
            if first < last:  # the items outside [first, last) have a zero output gradient: zero input gradient
                live = go[:, first * ho * wo : last * ho * wo]
                gcols = torch.mm(weight.reshape(cout, -1).t(), live).view(cin, kh, kw, last - first, ho, wo)
                target = padded[first:last]
                for i in range(kh):  # col2im: every kernel tap adds its shifted, strided contribution
                    rows = slice(i, i + sh * (ho - 1) + 1, sh)
                    for j in range(kw):
                        target[:, :, rows, j : j + sw * (wo - 1) + 1 : sw] += gcols[:, i, j].transpose(0, 1)
            grad_x = padded[:, :, top : top + height, left : left + width]
            if one_d:
                grad_x = grad_x.squeeze(2)
        return grad_x, grad_w, grad_b, None, None, None, None


def live_samples(grad: torch.Tensor) -> tuple[int, int]:
    """``(first, last)``: the batch items ``first <= i < last`` of ``grad`` ``(N, ...)`` include every
    item that is not all zeros; ``(0, 0)`` when all are zero, ``(0, 1)`` for a batch of one.

    The backward pass of the generator loss through a discriminator that ran on ``[real, fake]``
    reaches the real half with exact zeros (the loss does not depend on it, and zeros stay zeros
    through the gates and the normalisation): :func:`gemm_conv2d` computes its input-gradient
    product for the live items only. Costs one reduction over the output gradient (a NaN counts as live).
    """
    n = grad.shape[0]
    if n == 1:
        return 0, 1
    peaks = grad.reshape(n, -1).abs().amax(dim=1).tolist()
    live = [i for i, peak in enumerate(peaks) if peak != 0]
    return (live[0], live[-1] + 1) if live else (0, 0)


def _leaf_keys(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int | None, int | None]:
    """``id`` of ``weight`` and of ``bias`` where each is a leaf (a :class:`WeightGradientSink`'s keys), else ``None``."""
    weight_key = id(weight) if weight.grad_fn is None else None
    bias_key = id(bias) if bias is not None and bias.grad_fn is None else None
    return weight_key, bias_key


def gemm_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int, int, int],
) -> torch.Tensor:
    """``F.conv2d`` (or ``F.conv1d``) with zero padding ``(top, bottom, left, right)`` as im2col + one GEMM.

    ``x`` ``(N, C_in, H, W)`` with ``weight`` ``(C_out, C_in, kh, kw)`` -> ``(N, C_out, H_out, W_out)``;
    or ``x`` ``(N, C_in, W)`` with ``weight`` ``(C_out, C_in, k)`` -> ``(N, C_out, W_out)`` (height 1:
    ``stride[0]``, ``top`` and ``bottom`` are ignored). Differentiable; honours an active
    :class:`WeightGradientSink`.
    """
    if weight.dim() == 3:
        stride, padding = (1, stride[1]), (0, 0, padding[2], padding[3])
    weight_key, bias_key = _leaf_keys(weight, bias)
    return _GemmConvFunction.apply(x, weight, bias, tuple(stride), tuple(padding), weight_key, bias_key)


class _TapConvFunction(torch.autograd.Function):
    """A stride-1 2-D convolution with few output channels, one tap at a time after one product.

    ``z = W' @ x_padded`` computes, for every kernel tap ``(i, j)`` and output channel, the channel
    contraction at every padded position (``W'``: ``(C_out * kh * kw, C_in)``, one 1x1 product over the
    batch); the output is the sum over taps of ``z`` shifted by ``(i, j)``, read as one strided view of
    ``z`` (its elements are disjoint) and reduced. The backward pass writes the output gradient into
    the same view of a zero ``dz`` and takes the two products back. For ``C_out`` much smaller than
    ``C_in`` (an output layer of one channel) ``z`` is smaller than im2col's matrix, and no col2im loop
    over the taps is needed.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding, weight_key, bias_key):  # type: ignore[override]
        top, bottom, left, right = padding
        xp = F.pad(x, (left, right, top, bottom)).contiguous()
        n, cin, hp, wp = xp.shape
        cout, _, kh, kw = weight.shape
        ho, wo = hp - kh + 1, wp - kw + 1
        taps = cout * kh * kw
        w2 = weight.permute(0, 2, 3, 1).reshape(taps, cin)
        z = torch.matmul(w2, xp.view(n, cin, hp * wp))  # (N, C_out kh kw, Hp Wp)
        geometry = ((n, cout, kh, kw, ho, wo), (taps * hp * wp, kh * kw * hp * wp, kw * hp * wp + wp, hp * wp + 1, wp, 1))
        out = z.as_strided(*geometry).sum(dim=(2, 3))
        if bias is not None:
            out = out + bias.view(1, cout, 1, 1)
        ctx.save_for_backward(xp, w2)
        ctx.shape = (x.shape, weight.shape, geometry, padding)
        ctx.keys = (weight_key, bias_key)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        xp, w2 = ctx.saved_tensors
        x_shape, w_shape, geometry, (top, _, left, _) = ctx.shape
        n, cin, hp, wp = xp.shape
        cout, _, kh, kw = w_shape
        dz = grad.new_zeros((n, cout * kh * kw, hp * wp))
        dz.as_strided(*geometry).copy_(grad.unsqueeze(2).unsqueeze(3).expand(geometry[0]))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            dxp = torch.matmul(w2.t(), dz).view(n, cin, hp, wp)
            grad_x = dxp[:, :, top : top + x_shape[2], left : left + x_shape[3]]
        # an active sink's rule, as for gemm_conv2d: a leaf that is not one of its params gets no gradient
        # (the wanted ones return theirs through autograd: its layout is not that of the sink's terms)
        sink = _active_sink()
        weight_key, bias_key = ctx.keys
        if ctx.needs_input_grad[1] and _gets_gradient(sink, weight_key):
            dw2 = torch.bmm(dz, xp.view(n, cin, hp * wp).transpose(1, 2)).sum(0)
            grad_w = dw2.view(cout, kh, kw, cin).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[2] and _gets_gradient(sink, bias_key):
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def tap_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int, int, int]
) -> torch.Tensor:
    """``F.conv2d`` with stride 1 and zero padding ``(top, bottom, left, right)``, computed tap by tap
    (:class:`_TapConvFunction`): ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, kh, kw)``.
    Differentiable; under an active :class:`WeightGradientSink` only its params get a weight or bias
    gradient, returned through autograd (not deferred)."""
    weight_key, bias_key = _leaf_keys(weight, bias)
    return _TapConvFunction.apply(x, weight, bias, tuple(padding), weight_key, bias_key)


_GEMM = {"enabled": True}


@contextmanager
def gemm_convolutions(enabled: bool) -> Iterator[None]:
    """Turn the GEMM path of :class:`GemmConv1d` / :class:`GemmConv2d` on or off inside the block
    (process-wide; on by default). Off, they are plain ``nn.Conv1d`` / ``nn.Conv2d`` (oneDNN or the
    native kernels), e.g. to benchmark against them."""
    previous = _GEMM["enabled"]
    _GEMM["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _GEMM["enabled"] = previous


def _use_gemm(module: nn.Module, x: torch.Tensor) -> bool:
    return (
        _GEMM["enabled"]
        and torch.is_grad_enabled()
        and (module.weight.requires_grad or x.requires_grad)
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dtype == module.weight.dtype
        and module.groups == 1
        and all(d == 1 for d in module.dilation)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and not torch.is_autocast_enabled("cpu")
    )


class GemmConv1d(nn.Conv1d):
    """:class:`torch.nn.Conv1d` computed by :func:`gemm_conv2d` when training on the CPU (same parameters and keys)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not _use_gemm(self, input) or input.dim() != 3:
            return super()._conv_forward(input, weight, bias)
        pad = self.padding[0]
        return gemm_conv2d(input, weight, bias, (1, self.stride[0]), (0, 0, pad, pad))


class GemmConv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` computed by :func:`gemm_conv2d` (or :func:`tap_conv2d`, for an output
    layer) when training on the CPU (same parameters and keys)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not _use_gemm(self, input) or input.dim() != 4:
            return super()._conv_forward(input, weight, bias)
        ph, pw = self.padding
        if tuple(self.stride) == (1, 1) and 4 * self.out_channels <= self.in_channels:
            return tap_conv2d(input, weight, bias, (ph, ph, pw, pw))  # an output layer: few channels out
        return gemm_conv2d(input, weight, bias, self.stride, (ph, ph, pw, pw))
