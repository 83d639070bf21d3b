"""Runtime utilities for command-line entry points: device and dtype resolution, and the
single-process stand-in for accelerate's process state.

Library code never picks a device or dtype; every CLI resolves ``--device`` / ``--dtype`` here,
once, and passes the result down.
"""

from __future__ import annotations

import contextlib

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
        raise ValueError(f"{name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu (slow) or auto")
    return device


def process_device(name: str | None, state=None) -> torch.device:
    """Under ``accelerate launch``: with ``auto`` (or plain ``cuda`` with several processes) each
    process takes the device accelerate assigned it (``state``: a ``PartialState``)."""
    several = state is not None and state.num_processes > 1
    if (name in (None, "", "auto") or (several and name == "cuda")) and getattr(state, "device", None) is not None:
        return torch.device(state.device)
    return resolve_device(name)


def resolve_dtype(name: str | None, device: torch.device, accelerator_dtype: torch.dtype = torch.float16) -> torch.dtype:
    """``auto`` -> ``accelerator_dtype`` on accelerators, float32 on CPU (half precision is slow there)."""
    if name in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else accelerator_dtype
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


class SingleProcess:
    """The part of ``accelerate.PartialState`` the project's multi-process runs use (the caption
    pipeline, the evaluation loop), for a run in one process: launched without ``accelerate
    launch``, or with accelerate not installed."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""

    def split_between_processes(self, inputs):
        """All of ``inputs`` is this process's share (``with ... as share``)."""
        return contextlib.nullcontext(inputs)
