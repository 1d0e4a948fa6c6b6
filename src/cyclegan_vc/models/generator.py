"""The CycleGAN-VC generator: a 1-D gated CNN over time with the MCEPs as channels (Kaneko & Kameoka 2018).

With ``b = base_channels`` (128 in the paper) and ``c`` counted after gating:

====================================  ===========================  =======================
layer                                 paper                        here
====================================  ===========================  =======================
conv k15, GLU (no norm)               c128                         ``b``
downsample: conv k5 s2, IN, GLU       c256, c512                   ``2b``, ``4b``
6 residual blocks                     conv k3 c1024 IN GLU;        ``8b`` then ``4b``
                                      conv k3 c512 IN; + input
upsample: conv k5, shuffle x2, IN,    conv c1024 -> 512 after      ``4b``, ``2b`` after
GLU                                   shuffle; conv c512 -> 256    shuffle and gate
conv k15                              c24                          ``in_channels``
====================================  ===========================  =======================
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .gemm import GemmConv1d
from .layers import GatedConv1d, ResidualBlock1d

__all__ = ["CycleGANVCGenerator"]


class CycleGANVCGenerator(nn.Module):
    """1-D gated CNN generator: ``(N, in_channels, T) -> (N, in_channels, T)``.

    The two stride-2 layers need ``T`` to be a multiple of 4 (and at least 8 frames for the instance
    normalisation at the coarsest scale); other lengths are padded at the end by repeating the last
    frame and the output is trimmed back, so the output always has the input's length.

    Args:
        in_channels: feature dimension (24 MCEPs in the paper); also the output dimension.
        base_channels: width ``b`` of the first layer; every other width is a multiple of it.
        n_residual_blocks: residual blocks at the coarsest scale (6 in the paper).
        input_kernel, downsample_kernel, residual_kernel, upsample_kernel, output_kernel: kernel
            lengths in frames (15, 5, 3, 5, 15 in the paper).
        upsample_init: initialisation of the two convolutions before the pixel shuffles: ``"default"``
            (PyTorch's; the paper does not specify one) or ``"icnr"`` (copies of one sub-position's
            weights, so that the untrained generator has no period-2/period-4 frame pattern; see
            :func:`~cyclegan_vc.models.layers.icnr_`).
    """

    frame_multiple = 4
    min_frames = 8

    def __init__(
        self,
        in_channels: int = 24,
        base_channels: int = 128,
        n_residual_blocks: int = 6,
        input_kernel: int = 15,
        downsample_kernel: int = 5,
        residual_kernel: int = 3,
        upsample_kernel: int = 5,
        output_kernel: int = 15,
        upsample_init: str = "default",
    ) -> None:
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            base_channels=base_channels,
            n_residual_blocks=n_residual_blocks,
            input_kernel=input_kernel,
            downsample_kernel=downsample_kernel,
            residual_kernel=residual_kernel,
            upsample_kernel=upsample_kernel,
            output_kernel=output_kernel,
            upsample_init=upsample_init,
        )
        b = base_channels
        self.input = GatedConv1d(in_channels, b, input_kernel, norm=False)
        self.downsample = nn.Sequential(
            GatedConv1d(b, 2 * b, downsample_kernel, stride=2),
            GatedConv1d(2 * b, 4 * b, downsample_kernel, stride=2),
        )
        self.residual = nn.Sequential(*(ResidualBlock1d(4 * b, 8 * b, residual_kernel) for _ in range(n_residual_blocks)))
        self.upsample = nn.Sequential(
            GatedConv1d(4 * b, 4 * b, upsample_kernel, upsample=2, upsample_init=upsample_init),
            GatedConv1d(4 * b, 2 * b, upsample_kernel, upsample=2, upsample_init=upsample_init),
        )
        self.output = GemmConv1d(2 * b, in_channels, output_kernel, padding=output_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, T)`` normalised MCEPs -> ``(N, in_channels, T)``."""
        if x.dim() != 3:
            raise ValueError(f"generator input must be (N, channels, frames), got shape {tuple(x.shape)}")
        frames = x.shape[-1]
        padded = max(-(-frames // self.frame_multiple) * self.frame_multiple, self.min_frames)
        if padded != frames:
            x = F.pad(x, (0, padded - frames), mode="replicate")
        h = self.input(x)
        h = self.downsample(h)
        h = self.residual(h)
        h = self.upsample(h)
        return self.output(h)[..., :frames]
