"""The CycleGAN-VC2 generator (2-1-2D CNN) and the MaskCycleGAN-VC generator, with the 2-D pixel shuffle.

CycleGAN-VC2 (Kaneko et al., ICASSP 2019, arXiv 1904.04631) treats the ``(features x frames)`` MCEP
sequence as a one-channel image: 2-D convolutions at the two finer scales keep the local structure, and
1-D convolutions over time at the coarsest scale model long-range dependencies. With
``b = base_channels`` and ``r = residual_channels`` (``c`` counted after gating, as for CycleGAN-VC), on a
``(N, 1, Q, T)`` input:

=============================================  =====================  ==========================
layer                                          paper                  output (b = 128, r = 256)
=============================================  =====================  ==========================
conv 5x15, GLU (no norm)                       c128                   ``(N, b, Q, T)``
downsample: conv 5x5 s2, IN, GLU (twice)       c256, c256             ``(N, 2b, Q4, T/4)``
reshape to 1-D; conv 1x1, IN                   c256                   ``(N, r, T/4)``
6 residual blocks (1-D)                        conv k3 c512 IN GLU;   ``(N, r, T/4)``
                                               conv k3 c256 IN; + in
conv 1x1, IN; reshape to 2-D                   c2304 (= 256 x 9)      ``(N, 2b, Q4, T/4)``
upsample: conv 5x5, 2-D shuffle x2, IN, GLU    c1024, c512            ``(N, 2b, ...)``, ``(N, b, ...)``
conv 5x15                                      c1                     ``(N, 1, Q, T)``
=============================================  =====================  ==========================

``Q4 = ceil(ceil(Q / 2) / 2)``, the height after the two stride-2 convolutions: the width of the 1-D
reshape (``2b * Q4``) is computed from the feature dimension, never fixed (the paper's 2304 is 256 x 9
for its 36 coefficients; 24 give 1536, 80 give 5120). The upsampling path restores ``4 * Q4 >= Q`` rows,
trimmed back to ``Q``. An upsampling convolution of ``c`` channels after gating produces ``2c`` (value
and gate); the 2-D pixel shuffle turns each half into ``c / 4`` channels at twice the height and width.

MaskCycleGAN-VC (Kaneko et al., ICASSP 2021, arXiv 2102.12841) is the same network with a two-channel
input: the features times a temporal mask, and the mask (filling in frames, FIF). A mask of ones is the
conversion, validation, cycle and identity input, so ``mask=None`` means all ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .gemm import GemmConv2d
from .layers import GatedConv2d, ResidualBlock1d, instance_norm

__all__ = ["CycleGANVC2Generator", "GatedUpsample2d", "MaskCycleGANVCGenerator", "pixel_shuffle_2d"]


def pixel_shuffle_2d(x: torch.Tensor, factor: int) -> torch.Tensor:
    """TensorFlow-style 2-D pixel shuffler (``depth_to_space``): ``(N, C r^2, H, W) -> (N, C, H r, W r)``.

    ``out[n, c, h * r + i, w * r + j] = x[n, (i * r + j) * C + c, h, w]`` for ``i, j < r``: the ``r^2``
    channel blocks of ``C`` channels become the sub-positions of the upsampled grid, the same convention as
    :func:`~cyclegan_vc.models.layers.pixel_shuffle_1d` in one dimension.
    """
    n, channels, height, width = x.shape
    if channels % (factor * factor):
        raise ValueError(f"pixel_shuffle_2d: {channels} channels are not divisible by factor^2 = {factor * factor}")
    c = channels // (factor * factor)
    blocks = x.reshape(n, factor, factor, c, height, width)  # (n, i, j, c, h, w)
    return blocks.permute(0, 3, 4, 1, 5, 2).reshape(n, c, height * factor, width * factor)  # (n, c, h i, w j)


class GatedUpsample2d(nn.Module):
    """Conv2d -> 2-D pixel shuffle -> InstanceNorm2d -> GLU, as one convolution of ``2 c r^2`` channels.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, H r, W r)``. The convolution has no bias
    (the normalisation removes per-channel constants). Its output is ``[value | gate]``; each half is
    shuffled on its own, so value and gate channels never mix.

    Args:
        in_channels: input channels.
        out_channels: channels after the shuffle and the gate (the paper's ``c / r^2``).
        kernel_size: ``(kh, kw)``, odd, "same" padding.
        upsample: shuffle factor ``r`` on both axes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], upsample: int = 2) -> None:
        super().__init__()
        kh, kw = kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"GatedUpsample2d needs odd kernels, got {kh}x{kw}")
        self.upsample = upsample
        self.conv = GemmConv2d(
            in_channels, 2 * out_channels * upsample * upsample, (kh, kw), padding=(kh // 2, kw // 2), bias=False
        )
        self.norm = nn.InstanceNorm2d(2 * out_channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        n, channels, height, width = h.shape
        # (N, 2 C r^2, H, W) -> (2N, C r^2, H, W): value and gate halves shuffled apart, then [value | gate]
        h = pixel_shuffle_2d(h.reshape(2 * n, channels // 2, height, width), self.upsample)
        h = h.reshape(n, channels // (self.upsample * self.upsample), height * self.upsample, width * self.upsample)
        return F.glu(instance_norm(self.norm, h), dim=1)  # = glu(*h.chunk(2, dim=1))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pair(value: tuple[int, int] | list[int] | int) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    kh, kw = value
    return int(kh), int(kw)


class CycleGANVC2Generator(nn.Module):
    """The 2-1-2D CNN generator of CycleGAN-VC2: ``(N, in_channels, T) -> (N, in_channels, T)``.

    The two stride-2 layers need ``T`` to be a multiple of 4 (and at least 8 frames for the instance
    normalisation at the coarsest scale); other lengths are padded at the end by repeating the last
    frame and the output is trimmed back, as in the CycleGAN-VC generator.

    Args:
        in_channels: feature dimension ``Q`` (the image height; 24 MCEPs here, 36 in the paper); also
            the output dimension.
        base_channels: width ``b`` of the first 2-D layer (128 in the paper); the 2-D downsampling
            layers have ``2b``, the upsampling convolutions ``8b`` and ``4b`` channels before the shuffle.
        residual_channels: width ``r`` of the 1-D part (256 in the paper); the residual blocks' gated
            convolutions have ``2r``.
        n_residual_blocks: residual blocks at the coarsest scale (6 in the paper).
        input_kernel, downsample_kernel, upsample_kernel, output_kernel: 2-D kernels ``(height, frames)``
            (5x15, 5x5, 5x5, 5x15 in the paper).
        residual_kernel: kernel length in frames of the residual blocks (3).
    """

    frame_multiple = 4
    min_frames = 8
    #: input planes of the first convolution: the features (MaskCycleGAN-VC adds the mask)
    input_planes = 1

    def __init__(
        self,
        in_channels: int = 24,
        base_channels: int = 128,
        residual_channels: int = 256,
        n_residual_blocks: int = 6,
        input_kernel: tuple[int, int] = (5, 15),
        downsample_kernel: tuple[int, int] = (5, 5),
        residual_kernel: int = 3,
        upsample_kernel: tuple[int, int] = (5, 5),
        output_kernel: tuple[int, int] = (5, 15),
    ) -> None:
        super().__init__()
        input_kernel, downsample_kernel = _pair(input_kernel), _pair(downsample_kernel)
        upsample_kernel, output_kernel = _pair(upsample_kernel), _pair(output_kernel)
        self.config = dict(
            in_channels=in_channels,
            base_channels=base_channels,
            residual_channels=residual_channels,
            n_residual_blocks=n_residual_blocks,
            input_kernel=list(input_kernel),
            downsample_kernel=list(downsample_kernel),
            residual_kernel=residual_kernel,
            upsample_kernel=list(upsample_kernel),
            output_kernel=list(output_kernel),
        )
        self.in_channels = in_channels
        b = base_channels
        #: height after the two stride-2 layers; the 1-D part sees 2b * reduced_height channels
        self.reduced_height = _ceil_div(_ceil_div(in_channels, 2), 2)
        flat = 2 * b * self.reduced_height
        self.input = GatedConv2d(self.input_planes, b, input_kernel, (1, 1), norm=False)
        self.downsample = nn.Sequential(
            GatedConv2d(b, 2 * b, downsample_kernel, (2, 2)),
            GatedConv2d(2 * b, 2 * b, downsample_kernel, (2, 2)),
        )
        # the 1x1 projections are one matrix product already: plain convolutions (the GEMM path's im2col
        # of a 1x1 kernel can be a view of its input, which its deferred weight gradients do not expect)
        self.to_1d = nn.Conv1d(flat, residual_channels, 1, bias=False)
        self.to_1d_norm = nn.InstanceNorm1d(residual_channels, affine=True)
        r = residual_channels
        self.residual = nn.Sequential(*(ResidualBlock1d(r, 2 * r, residual_kernel) for _ in range(n_residual_blocks)))
        self.to_2d = nn.Conv1d(residual_channels, flat, 1, bias=False)
        self.to_2d_norm = nn.InstanceNorm1d(flat, affine=True)
        self.upsample = nn.Sequential(
            GatedUpsample2d(2 * b, 2 * b, upsample_kernel),  # conv 8b channels -> shuffle -> 2b
            GatedUpsample2d(2 * b, b, upsample_kernel),  # conv 4b channels -> shuffle -> b
        )
        kh, kw = output_kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"output_kernel must be odd, got {kh}x{kw}")
        self.output = GemmConv2d(b, 1, (kh, kw), padding=(kh // 2, kw // 2))

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, Q, T)`` with ``T`` padded at the end (repeating the last frame) to a usable length."""
        frames = x.shape[-1]
        padded = max(_ceil_div(frames, self.frame_multiple) * self.frame_multiple, self.min_frames)
        if padded == frames:
            return x
        return F.pad(x, (0, padded - frames, 0, 0), mode="replicate")

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"generator input must be (N, channels, frames), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"generator takes {self.in_channels} feature channels, got {x.shape[1]}")

    def network(self, planes: torch.Tensor) -> torch.Tensor:
        """``(N, input_planes, Q, T)`` with ``T`` a multiple of 4 -> ``(N, Q, T)``."""
        h = self.input(planes)
        h = self.downsample(h)
        n, c, height, frames = h.shape
        h = instance_norm(self.to_1d_norm, self.to_1d(h.reshape(n, c * height, frames)))
        h = self.residual(h)
        h = instance_norm(self.to_2d_norm, self.to_2d(h)).reshape(n, c, height, frames)
        h = self.upsample(h)
        return self.output(h)[:, 0, : self.in_channels]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, T)`` normalised MCEPs -> ``(N, in_channels, T)``."""
        self._check(x)
        frames = x.shape[-1]
        return self.network(self._padded(x.unsqueeze(1)))[..., :frames]


class MaskCycleGANVCGenerator(CycleGANVC2Generator):
    """The MaskCycleGAN-VC generator: the CycleGAN-VC2 network on two planes, ``x * mask`` and ``mask``.

    ``forward(x, mask=None)``: ``x`` ``(N, in_channels, T)``; ``mask`` broadcastable to it (``(N, T)``,
    ``(N, 1, T)`` or ``(N, in_channels, T)``; 1 = kept, 0 = missing frame) or ``None`` for all ones (the
    conversion, validation, cycle and identity passes). Returns ``(N, in_channels, T)``.
    Constructor arguments as :class:`CycleGANVC2Generator`.
    """

    input_planes = 2

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        self._check(x)
        frames = x.shape[-1]
        if mask is None:
            mask = torch.ones_like(x)
        else:
            if mask.dim() == 2:
                mask = mask.unsqueeze(1)
            mask = mask.to(x.dtype).expand_as(x)
        planes = torch.stack([x * mask, mask], dim=1)
        return self.network(self._padded(planes))[..., :frames]
