"""Building blocks of the CycleGAN-VC networks: GLU, 1-D pixel shuffle, gated convolutions.

Every gated convolution is ONE convolution producing ``2 * c`` channels, split into a value half and a
gate half: ``GLU(value, gate) = value * sigmoid(gate)``. This is the same function as two separate
convolutions (one for the value, one for the gate) computed with one GEMM. Instance normalisation is
per channel, so normalising the ``2 * c`` channels at once equals normalising the two halves apart,
each with its own affine parameters.

The convolutions are :class:`~cyclegan_vc.models.gemm.GemmConv1d` / ``GemmConv2d``: ``nn.Conv1d`` /
``nn.Conv2d`` with the same parameters and keys, computed as explicit GEMMs when training on the CPU
(:mod:`cyclegan_vc.models.gemm`, a speed measure that does not change the function).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .gemm import GemmConv1d, GemmConv2d

__all__ = [
    "GatedConv1d",
    "GatedConv2d",
    "ResidualBlock1d",
    "UPSAMPLE_INITS",
    "glu",
    "icnr_",
    "instance_norm",
    "pixel_shuffle_1d",
    "same_padding",
]


def glu(value: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Gated linear unit ``value * sigmoid(gate)`` (element-wise; not Swish ``x * sigmoid(x)``)."""
    return value * torch.sigmoid(gate)


def pixel_shuffle_1d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """TensorFlow-style 1-D pixel shuffler: ``(N, C, W) -> (N, C / r, W * r)``.

    ``out[n, c', w * r + i] = x[n, i * (C / r) + c', w]`` for ``i < r``: the ``r`` channel blocks of
    ``C / r`` channels become the ``r`` interleaved phases of the upsampled time axis.
    """
    n, channels, width = x.shape
    if channels % factor:
        raise ValueError(f"pixel_shuffle_1d: {channels} channels are not divisible by factor {factor}")
    return x.reshape(n, factor, channels // factor, width).permute(0, 2, 3, 1).reshape(n, channels // factor, width * factor)


def same_padding(kernel_size: int) -> tuple[int, int]:
    """``(before, after)`` padding that keeps the length at stride 1 (TensorFlow "same").

    Odd kernels pad ``k // 2`` on both sides; even kernels put the extra frame after
    (a 6-high kernel pads 2 before and 3 after).
    """
    return (kernel_size - 1) // 2, kernel_size // 2


UPSAMPLE_INITS = ("default", "icnr")


# --------------------------------------------------------------------------------------------------
# Gated layers
# --------------------------------------------------------------------------------------------------


def instance_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for an ``nn.InstanceNorm1d`` / ``2d`` without running statistics, computed as a group
    normalisation with one group per channel: the same function (per sample and channel over time
    and height), in one fused kernel forward and backward instead of ``instance_norm``'s reshape into
    a batch normalisation with repeated affine parameters (faster on these shapes)."""
    if norm.track_running_stats or x.dim() < 3:
        return norm(x)
    return F.group_norm(x, x.shape[1], norm.weight, norm.bias, norm.eps)


def icnr_(conv: nn.Conv1d, upsample: int, groups: int = 2) -> nn.Conv1d:
    """ICNR initialisation (Aitken et al., 2017, arXiv 1707.02937) of a convolution feeding a 1-D pixel shuffle.

    The ``groups * C * upsample`` output channels of ``conv`` are ``groups`` halves (value, gate), each
    shuffled by :func:`pixel_shuffle_1d`: channel ``i * C + c`` of a half becomes sub-position ``i`` of
    output channel ``c``. Copying the weights (and bias) of sub-position 0 to every other sub-position
    makes the shuffled output at initialisation equal to a convolution followed by nearest-neighbour
    upsampling: no period-``upsample`` (checkerboard) pattern to unlearn. Each weight keeps the scale of
    the default initialisation (the fan-in is unchanged). In place; returns ``conv``.
    """
    out_channels = conv.weight.shape[0]
    if out_channels % (groups * upsample):
        raise ValueError(f"{out_channels} output channels do not split into {groups} groups of {upsample} sub-positions")
    c = out_channels // (groups * upsample)
    with torch.no_grad():
        w = conv.weight.view(groups, upsample, c, *conv.weight.shape[1:])
        w[:, 1:] = w[:, :1].clone()
        if conv.bias is not None:
            b = conv.bias.view(groups, upsample, c)
            b[:, 1:] = b[:, :1].clone()
    return conv


class GatedConv1d(nn.Module):
    """Conv1d -> [pixel shuffle] -> [InstanceNorm1d] -> GLU, as one convolution of ``2c`` channels.

    Input ``(N, in_channels, T)``; output ``(N, out_channels, T * upsample / stride)``.

    Args:
        in_channels: input channels.
        out_channels: channels after gating (and after the pixel shuffle), ``c``.
        kernel_size: odd kernel length in frames.
        stride: convolution stride (2 halves the time axis).
        norm: instance normalisation (affine) before the gate; the convolution has no bias then
            (a per-channel constant is removed by the normalisation anyway).
        upsample: pixel shuffle factor ``r``; the convolution then produces ``2 * c * r`` channels and
            the value and gate halves are shuffled separately, never mixed.
        upsample_init: ``"default"`` (PyTorch's initialisation) or ``"icnr"`` (:func:`icnr_`: no
            checkerboard pattern at initialisation); only used with ``upsample > 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        norm: bool = True,
        upsample: int = 1,
        upsample_init: str = "default",
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"GatedConv1d needs an odd kernel, got {kernel_size}")
        if upsample_init not in UPSAMPLE_INITS:
            raise ValueError(f"upsample_init must be one of {UPSAMPLE_INITS}, got {upsample_init!r}")
        self.out_channels = out_channels
        self.upsample = upsample
        self.conv = GemmConv1d(
            in_channels, 2 * out_channels * upsample, kernel_size, stride=stride, padding=kernel_size // 2, bias=not norm
        )
        if upsample > 1 and upsample_init == "icnr":
            icnr_(self.conv, upsample)
        self.norm = nn.InstanceNorm1d(2 * out_channels, affine=True) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.upsample > 1:
            n, channels, width = h.shape
            # (N, 2C, W) -> (2N, C, W): the value and gate halves become separate batch items, so the
            # shuffle cannot mix them; then back to (N, 2 C / r, W r) = [value | gate].
            h = pixel_shuffle_1d(h.reshape(2 * n, channels // 2, width), self.upsample)
            h = h.reshape(n, channels // self.upsample, width * self.upsample)
        if self.norm is not None:
            h = instance_norm(self.norm, h)
        return F.glu(h, dim=1)  # = glu(*h.chunk(2, dim=1)), one kernel forward and backward


class ResidualBlock1d(nn.Module):
    """``x + IN(conv(GLU(IN(conv(x)))))``: gated conv to ``hidden`` channels, then back to ``channels``.

    Input and output ``(N, channels, T)``.
    """

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.gated = GatedConv1d(channels, hidden_channels, kernel_size, norm=True)
        self.conv = GemmConv1d(hidden_channels, channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.InstanceNorm1d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + instance_norm(self.norm, self.conv(self.gated(x)))


class GatedConv2d(nn.Module):
    """Conv2d -> [InstanceNorm2d] -> GLU with TensorFlow "same" padding (see :func:`same_padding`).

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, ceil(H / sh), ceil(W / sw))``.
    With ``norm`` the convolution has no bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        norm: bool = True,
    ) -> None:
        super().__init__()
        kh, kw = kernel_size
        top, bottom = same_padding(kh)
        left, right = same_padding(kw)
        self.pad = None if (top == bottom and left == right) else nn.ZeroPad2d((left, right, top, bottom))
        padding = (top, left) if self.pad is None else 0
        self.conv = GemmConv2d(in_channels, 2 * out_channels, (kh, kw), stride=stride, padding=padding, bias=not norm)
        self.norm = nn.InstanceNorm2d(2 * out_channels, affine=True) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        h = self.conv(x)
        if self.norm is not None:
            h = instance_norm(self.norm, h)
        return F.glu(h, dim=1)  # = glu(*h.chunk(2, dim=1)), one kernel forward and backward
