"""Where torch runs: one rule for ``device="auto"`` and for a device this machine does not have."""

from __future__ import annotations

import torch

__all__ = ["cpu_has_native_bf16", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else is passed to :class:`torch.device`.

    Raises:
        ValueError: the name is not a torch device, or it names CUDA and this torch build or machine
            has none (the message says what to use instead).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; use --device cpu or auto")
    return resolved


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 products natively (AVX512-BF16 or AMX, as oneDNN reports it);
    False where this torch build cannot tell."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False
