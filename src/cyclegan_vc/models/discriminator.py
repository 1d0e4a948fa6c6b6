"""The CycleGAN-VC discriminator: a 2-D gated CNN on the ``(features x frames)`` MCEP image.

With ``b = base_channels`` (128 in the paper), on a ``(N, 1, 24, 128)`` input:

=======================================  =========  ====================
layer                                    paper      output (b = 128)
=======================================  =========  ====================
conv 3x3 s(1,2), GLU (no norm)           c128       (N, 128, 24, 64)
conv 3x3 s(2,2), IN, GLU                 c256       (N, 256, 12, 32)
conv 3x3 s(2,2), IN, GLU                 c512       (N, 512, 6, 16)
conv 6x3 s(1,2), IN, GLU                 c1024      (N, 1024, 6, 8)
head                                     FC+sigm.   see below
=======================================  =========  ====================

The paper ends in a fully connected layer with a sigmoid, and trains with the least-squares loss, which
wants an unbounded real-valued output. The ``head`` argument chooses:

- ``"linear"`` (default): the paper's fully connected layer to one output with the sigmoid dropped;
  output ``(N, 1)``. The least-squares loss then works on the score it was designed for.
- ``"patch"``: a 1-channel 1x3 convolution (PatchGAN, as in CycleGAN-VC2); output ``(N, 1, H', W')``,
  one score per patch, and the network accepts any number of frames.
- ``"sigmoid"``: the paper taken literally, fully connected + sigmoid. With the least-squares loss the
  sigmoid saturates and its gradient vanishes for confident outputs; kept for comparison only.

The fully connected heads fix the input size: ``in_height`` features by ``in_frames`` frames (the
training crop).
"""

from __future__ import annotations

import torch
from torch import nn

from .gemm import GemmConv2d
from .layers import GatedConv2d

__all__ = ["DISCRIMINATOR_HEADS", "CycleGANVCDiscriminator"]

DISCRIMINATOR_HEADS = ("linear", "patch", "sigmoid")


def _strided(size: int, stride: int) -> int:
    return -(-size // stride)


class CycleGANVCDiscriminator(nn.Module):
    """2-D gated CNN discriminator: ``(N, in_height, in_frames)`` or ``(N, 1, in_height, in_frames)`` -> scores.

    Args:
        in_height: feature dimension (24 MCEPs), the image height.
        in_frames: frames per input (the 128-frame crop); the fully connected heads need it.
        base_channels: width ``b`` of the first layer; the others are ``2b``, ``4b``, ``8b``.
        head: ``"linear"``, ``"patch"`` or ``"sigmoid"`` (see the module docstring).
        kernel_size: kernel of the first three layers (3x3 in the paper).
        last_kernel_size: kernel of the fourth layer (6x3 in the paper).
        patch_kernel_size: kernel of the ``"patch"`` head (1x3, as in CycleGAN-VC2).
    """

    def __init__(
        self,
        in_height: int = 24,
        in_frames: int = 128,
        base_channels: int = 128,
        head: str = "linear",
        kernel_size: tuple[int, int] = (3, 3),
        last_kernel_size: tuple[int, int] = (6, 3),
        patch_kernel_size: tuple[int, int] = (1, 3),
    ) -> None:
        super().__init__()
        if head not in DISCRIMINATOR_HEADS:
            raise ValueError(f"discriminator head must be one of {DISCRIMINATOR_HEADS}, got {head!r}")
        kernel_size, last_kernel_size, patch_kernel_size = (
            tuple(int(k) for k in kernel_size),
            tuple(int(k) for k in last_kernel_size),
            tuple(int(k) for k in patch_kernel_size),
        )
        self.config = dict(
            in_height=in_height,
            in_frames=in_frames,
            base_channels=base_channels,
            head=head,
            kernel_size=list(kernel_size),
            last_kernel_size=list(last_kernel_size),
            patch_kernel_size=list(patch_kernel_size),
        )
        self.in_height, self.in_frames, self.head_type = in_height, in_frames, head
        b = base_channels
        strides = [(1, 2), (2, 2), (2, 2), (1, 2)]
        self.body = nn.Sequential(
            GatedConv2d(1, b, kernel_size, strides[0], norm=False),
            GatedConv2d(b, 2 * b, kernel_size, strides[1]),
            GatedConv2d(2 * b, 4 * b, kernel_size, strides[2]),
            GatedConv2d(4 * b, 8 * b, last_kernel_size, strides[3]),
        )
        height, width = in_height, in_frames
        for sh, sw in strides:
            height, width = _strided(height, sh), _strided(width, sw)
        self.out_size = (height, width)
        if head == "patch":
            kh, kw = patch_kernel_size
            self.head = GemmConv2d(8 * b, 1, (kh, kw), padding=(kh // 2, kw // 2))
        else:
            self.head = nn.Linear(8 * b * height * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` or ``(N, 1, H, W)`` -> ``(N, 1)`` (linear, sigmoid) or ``(N, 1, H', W')`` (patch)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"discriminator input must be (N, H, W) or (N, 1, H, W), got shape {tuple(x.shape)}")
        if self.head_type != "patch" and tuple(x.shape[2:]) != (self.in_height, self.in_frames):
            raise ValueError(
                f"discriminator with a fully connected head takes {self.in_height}x{self.in_frames} inputs, "
                f"got {x.shape[2]}x{x.shape[3]} (use head='patch' for other sizes)"
            )
        h = self.body(x)
        if self.head_type == "patch":
            return self.head(h)
        score = self.head(h.flatten(1))
        return torch.sigmoid(score) if self.head_type == "sigmoid" else score
