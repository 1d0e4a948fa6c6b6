"""The PatchGAN discriminator of CycleGAN-VC2 (Kaneko et al., ICASSP 2019): one score per image patch.

A 2-D gated CNN on the ``(features x frames)`` MCEP image that ends in a convolution instead of a fully
connected layer, so it judges local patches and takes any number of frames. With ``b = base_channels``
(128 in the paper), ``c`` counted after gating, on a ``(N, 1, 24, 128)`` input:

=======================================  =========  ========================
layer                                    paper      output (b = 128)
=======================================  =========  ========================
conv 3x3 s1, GLU (no norm)               c128       (N, 128, 24, 128)
conv 3x3 s2, IN, GLU                     c256       (N, 256, 12, 64)
conv 3x3 s2, IN, GLU                     c512       (N, 512, 6, 32)
conv 3x3 s2, IN, GLU                     c1024      (N, 1024, 3, 16)
conv 1x5 s1, IN, GLU                     c1024      (N, 1024, 3, 16)
conv 1x3 s1 (bias, no activation)        c1         (N, 1, 3, 16)
=======================================  =========  ========================

The output is a real-valued map with no sigmoid: the least-squares loss is taken over all patches. The
1x5 layer is in the paper's figure and in the TensorFlow reimplementations; PyTorch ports that define
it and never call it train a different network.
"""

from __future__ import annotations

import torch
from torch import nn

from .gemm import GemmConv2d
from .layers import GatedConv2d

__all__ = ["PatchGANDiscriminator"]


def _pair(value: tuple[int, int] | list[int]) -> tuple[int, int]:
    kh, kw = value
    return int(kh), int(kw)


class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator: ``(N, in_height, T)`` or ``(N, 1, in_height, T)`` -> ``(N, 1, H', T')``.

    ``H' = ceil(in_height / 8)`` and ``T' = ceil(T / 8)`` (three stride-2 layers).

    Args:
        in_height: feature dimension (24 MCEPs), the image height; inputs of another height are refused.
        base_channels: width ``b`` of the first layer; the others are ``2b``, ``4b``, ``8b``, ``8b``.
        kernel_size: kernel of the first four layers (3x3 in the paper).
        last_kernel_size: kernel of the fifth, stride-1 layer (1x5 in the paper).
        output_kernel_size: kernel of the 1-channel output convolution (1x3 in the paper), odd.
    """

    def __init__(
        self,
        in_height: int = 24,
        base_channels: int = 128,
        kernel_size: tuple[int, int] = (3, 3),
        last_kernel_size: tuple[int, int] = (1, 5),
        output_kernel_size: tuple[int, int] = (1, 3),
    ) -> None:
        super().__init__()
        kernel_size, last_kernel_size, output_kernel_size = (
            _pair(kernel_size), _pair(last_kernel_size), _pair(output_kernel_size)
        )
        kh, kw = output_kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"output_kernel_size must be odd, got {kh}x{kw}")
        self.config = dict(
            in_height=in_height,
            base_channels=base_channels,
            kernel_size=list(kernel_size),
            last_kernel_size=list(last_kernel_size),
            output_kernel_size=list(output_kernel_size),
        )
        self.in_height = in_height
        b = base_channels
        self.body = nn.Sequential(
            GatedConv2d(1, b, kernel_size, (1, 1), norm=False),
            GatedConv2d(b, 2 * b, kernel_size, (2, 2)),
            GatedConv2d(2 * b, 4 * b, kernel_size, (2, 2)),
            GatedConv2d(4 * b, 8 * b, kernel_size, (2, 2)),
            GatedConv2d(8 * b, 8 * b, last_kernel_size, (1, 1)),
        )
        self.head = GemmConv2d(8 * b, 1, (kh, kw), padding=(kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` or ``(N, 1, H, W)`` -> ``(N, 1, ceil(H / 8), ceil(W / 8))`` patch scores."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"discriminator input must be (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
        if x.shape[2] != self.in_height:
            raise ValueError(f"discriminator takes {self.in_height} feature rows, got {x.shape[2]}")
        return self.head(self.body(x))
