"""Device and dtype resolution for command-line entry points.

Library code never picks a device or dtype; every CLI resolves ``--device`` / ``--dtype`` here,
once, and passes the result down.
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> cuda if present, else mps, else cpu; anything else is parsed by torch."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on accelerators, float32 on CPU (half precision is slow or unsupported there)."""
    if name in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[name]
