"""Networks chosen by name from explicit registries and built from explicit keyword arguments.

>>> g = build_generator("cyclegan_vc", base_channels=32)
>>> d = build_discriminator("cyclegan_vc", base_channels=32, head="patch")
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from .discriminator import DISCRIMINATOR_HEADS, CycleGANVCDiscriminator
from .gemm import GemmConv1d, GemmConv2d, WeightGradientSink, gemm_conv2d, gemm_convolutions
from .generator import CycleGANVCGenerator
from .layers import UPSAMPLE_INITS, GatedConv1d, GatedConv2d, ResidualBlock1d, glu, icnr_, pixel_shuffle_1d
from .patchgan import PatchGANDiscriminator
from .vc2 import CycleGANVC2Generator, GatedUpsample2d, MaskCycleGANVCGenerator, pixel_shuffle_2d

__all__ = [
    "DISCRIMINATORS",
    "DISCRIMINATOR_HEADS",
    "GENERATORS",
    "CycleGANVCDiscriminator",
    "CycleGANVCGenerator",
    "GatedConv1d",
    "GatedConv2d",
    "GemmConv1d",
    "GemmConv2d",
    "ResidualBlock1d",
    "UPSAMPLE_INITS",
    "WeightGradientSink",
    "build_discriminator",
    "build_generator",
    "check_kwargs",
    "count_parameters",
    "resolve_kwargs",
    "gemm_conv2d",
    "gemm_convolutions",
    "glu",
    "icnr_",
    "pixel_shuffle_1d",
    "CycleGANVC2Generator",
    "GatedUpsample2d",
    "MaskCycleGANVCGenerator",
    "PatchGANDiscriminator",
    "pixel_shuffle_2d",
]

GENERATORS: dict[str, type[nn.Module]] = {
    "cyclegan_vc": CycleGANVCGenerator,
    "cyclegan_vc2": CycleGANVC2Generator,
    "maskcyclegan_vc": MaskCycleGANVCGenerator,
}
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "cyclegan_vc": CycleGANVCDiscriminator,
    "patchgan": PatchGANDiscriminator,
}


def _lookup(registry: dict[str, type[nn.Module]], kind: str, name: str) -> type[nn.Module]:
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; available: {sorted(registry)}") from None


def check_kwargs(kind: str, name: str, kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the bad keys if ``kwargs`` do not fit the constructor of ``name``.

    ``kind`` is ``"generator"`` or ``"discriminator"``.
    """
    registry = {"generator": GENERATORS, "discriminator": DISCRIMINATORS}[kind]
    cls = _lookup(registry, kind, name)
    params = inspect.signature(cls.__init__).parameters
    allowed = [p for p in params if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {kind} argument(s) {unknown} for {name!r}; allowed: {allowed}")


def _check_value(kind: str, key: str, value: Any, default: Any) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``value`` has the type of ``default`` and, for sizes,
    is positive (counts ``n_*`` may be 0)."""
    where = f"{kind} argument {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
    elif isinstance(default, int):
        least = 0 if key.startswith("n_") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{where} must be an integer >= {least}, got {value!r}")
    elif isinstance(default, tuple):
        if (not isinstance(value, (list, tuple)) or len(value) != len(default)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise ValueError(f"{where} must be {len(default)} integers >= 1, got {value!r}")
    elif isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")


def resolve_kwargs(kind: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` completed with the constructor defaults of ``name`` (after :func:`check_kwargs`), each
    value checked against its default's type: sizes are positive integers, kernels pairs of them."""
    check_kwargs(kind, name, kwargs)
    registry = {"generator": GENERATORS, "discriminator": DISCRIMINATORS}[kind]
    params = inspect.signature(registry[name].__init__).parameters
    defaults = {p.name: p.default for p in params.values() if p.name != "self" and p.default is not p.empty}
    for key, value in kwargs.items():
        if key in defaults:
            _check_value(kind, key, value, defaults[key])
    return {**defaults, **kwargs}


def build_generator(name: str, **kwargs: Any) -> nn.Module:
    """The generator registered as ``name``, built with ``kwargs`` (its constructor's keyword arguments)."""
    check_kwargs("generator", name, kwargs)
    return GENERATORS[name](**kwargs)


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
    """The discriminator registered as ``name``, built with ``kwargs``."""
    check_kwargs("discriminator", name, kwargs)
    return DISCRIMINATORS[name](**kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
