"""Runtime utilities for command-line entry points: device and dtype resolution, the low-memory
flags, torch's CPU thread count (``--threads``), and the single-process stand-in for accelerate's
process state.

Library code never picks a device or dtype; every CLI resolves ``--device`` / ``--dtype`` here,
once, and passes the result down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from datetime import timedelta

import torch

from softrepa.models import OFFLOAD_MODES, MemoryOptions, get_kind

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


MODEL_DTYPE_HELP = "auto: the model card's on GPUs (float16 for SD3, bfloat16 for SD3.5 and FLUX.1), float32 on CPU"


def model_dtype(name: str | None, device: torch.device, kind: str) -> torch.dtype:
    """``--dtype`` for a model kind's pipeline: ``auto`` is the kind's ``accelerator_dtype`` on a GPU
    (bfloat16 for FLUX.1 and SD3.5, float16 for SD3), float32 on a CPU."""
    return resolve_dtype(name, device, DTYPES[get_kind(kind).accelerator_dtype])


def add_memory_args(parser: argparse.ArgumentParser) -> None:
    """The low-memory flags (--no-t5, --offload, --vae-tiling) every entry point that loads SD3 shares."""
    group = parser.add_argument_group("memory (docs/benchmarks.md#what-gpu-do-i-need)")
    group.add_argument("--no-t5", action="store_true", help="do not load the T5 text encoder (SD3: about 9 GB "
                                                            "less in float16; prompts read by the CLIP encoders only)")
    group.add_argument("--offload", choices=OFFLOAD_MODES, default="none",
                       help="keep weights on the CPU and move them to the GPU while they run: model (one "
                            "component at a time, a little slower) or sequential (layer by layer, least memory, "
                            "much slower)")
    group.add_argument("--vae-tiling", action="store_true", help="encode/decode large images in tiles")


def memory_from_args(args: argparse.Namespace, device: torch.device) -> MemoryOptions:
    """``MemoryOptions`` from ``add_memory_args``'s flags; offloading needs an accelerator to offload from."""
    if args.offload != "none" and device.type == "cpu":
        raise ValueError(f"--offload {args.offload} moves weights between the CPU and a GPU, but the device is "
                         "the CPU: drop --offload, or use --device cuda")
    return MemoryOptions(offload=args.offload, vae_tiling=args.vae_tiling)


BARRIER_TIMEOUT = timedelta(hours=6)


def process_state(device_spec: str = "auto"):
    """accelerate's ``PartialState`` (one per process under ``accelerate launch`` / ``torchrun``).
    Without CUDA (or with --device cpu) it is asked for CPU processes, which accelerate otherwise
    leaves unconnected, so each would do all the work."""
    try:
        from accelerate import PartialState
    except ImportError:
        return SingleProcess()
    # a generous barrier timeout: a resumed run can leave one process more work than the others,
    # and the default (10 min for NCCL) would then abort the slower ones
    return PartialState(cpu=device_spec == "cpu" or not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)


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


THREADS_ENV = "SOFTREPA_THREADS"
AUTO_THREADS = "auto"
SMALL_MACHINE_CORES = 4  # auto: one torch thread on machines with at most this many cores (apply_threads)
THREADS_HELP = (f"torch CPU threads: auto or a whole number >= 1 [{THREADS_ENV}] (auto: 1 on machines with at most "
                f"{SMALL_MACHINE_CORES} cores, where torch's one per core makes a busy machine many times slower; "
                "else torch's default; OMP_NUM_THREADS, when set, is kept)")


def parse_threads(value: str | int) -> str | int:
    """``--threads`` / ``SOFTREPA_THREADS``: ``"auto"`` or a whole number >= 1, else ``ValueError``
    saying what to give instead."""
    text = str(value).strip().lower()
    if text == AUTO_THREADS:
        return AUTO_THREADS
    where = f"(set by --threads or {THREADS_ENV})"
    what_to_do = "give auto (the default), or a count such as 1 on a busy machine"
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{value!r} is not auto or a whole number {where}; {what_to_do}") from None
    if count < 1:
        raise ValueError(f"{count} threads is under 1 {where}; {what_to_do}")
    return count


def _threads_type(text: str) -> str | int:
    """argparse ``type=``: a bad value becomes a usage error (exit status 2), not a traceback."""
    try:
        return parse_threads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_threads_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                    environ: dict[str, str] | None = None) -> None:
    """``--threads`` (dest ``threads``: ``"auto"`` or an int). Its default is ``SOFTREPA_THREADS``
    when set, else auto; the flag on the command line wins. argparse checks a string default with
    the same ``type``, so a bad environment value is a usage error naming the flag and the variable."""
    environ = os.environ if environ is None else environ
    default = environ.get(THREADS_ENV, "").strip() or AUTO_THREADS
    parser.add_argument("--threads", type=_threads_type, default=default, help=THREADS_HELP)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset, where known)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_for(value: str | int, cores: int | None = None, environ: dict[str, str] | None = None) -> int | None:
    """The torch thread count ``value`` (``--threads``) asks for here; None: leave torch's own.

    ``auto`` on a machine with at most ``SMALL_MACHINE_CORES`` cores is 1. Measured on the 2-core
    development machine, one command-line edit on the bundled model (``benchmarks/edit_under_load.py
    --compare 2``, docs/benchmarks.md#edits-on-a-busy-machine): quiet, 0.70 s with 1 thread and 0.50 s
    with torch's default of 2; beside two CPU-bound processes, 1.0-1.4 s with 1 thread (loaded / quiet
    1.43-2.00) but 2.8-6.0 s with 2 (single edits up to 39.5 s), because OpenMP threads spin-wait for
    cores the other processes hold (the whole command used 16.1 s of CPU with 2 threads, 7.1 s with
    1, as much as when quiet). One thread gives up about a third when the machine is quiet and
    saves 3-30x when it is busy, and small machines (CI runners, Spaces, laptops) are the ones most
    often shared. Above that auto keeps torch's default (one per physical core; not measured). An ``OMP_NUM_THREADS``
    already set (by the user, or by ``accelerate launch`` / ``torchrun`` for each of their
    processes) is a deliberate choice, and auto keeps it.
    """
    choice = parse_threads(value)
    if choice != AUTO_THREADS:
        return choice
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return 1 if (available_cores() if cores is None else cores) <= SMALL_MACHINE_CORES else None


def apply_threads(value: str | int = AUTO_THREADS) -> int:
    """Set torch's CPU threads as ``--threads`` asks (``threads_for``); returns the count in use.

    Call it first thing in an entry point's ``main``, before torch runs anything."""
    count = threads_for(value)
    if count is not None:
        torch.set_num_threads(count)
        try:
            torch.set_num_interop_threads(count)
        except RuntimeError:  # torch refuses once inter-op work has started, or on a second call; the
            pass  # intra-op threads set above are the ones that spin on a busy machine
    return torch.get_num_threads()
