"""A compiled denoiser: ``torch.compile`` of the transformer's repeated blocks, for editing and training.

    FlowEditor(pipe, compile="default")            # python -m editing --compile, SOFTREPA_COMPILE=default
    python -m softrepa.train ... --compile default  # TrainConfig(compile="default")

What is compiled, and why (docs/editing.md, Speed):

* **The repeated blocks, each in place** (``nn.Module.compile``; regional compilation, REFERENCE §12),
  not the whole transformer. The whole SD3 transformer specializes on the batch and the image size
  (its patch embedding crops the position grid with Python ints), so every new batch size
  (variations, a source-velocity cache hit halving the batch, a last smaller chunk of training
  pairs) and every new image size compiled again (30-50 s each on 2 CPU cores). A block sees only
  (batch, tokens, width) tensors, compiled with ``dynamic=True``: one graph per block variant serves
  every batch size, image size and prompt length. The blocks of one class share their compiled code
  (torch inlines module calls, so the weights are inputs, not constants), so the compile costs a
  few graphs, not one per layer.
* **The soft tokens' hooks run inside the compiled blocks** (``nn.Module.compile`` compiles the
  module's call, hooks included). Tokens on and off are two graphs, both made by the first calls
  that use them; switching after that compiles nothing. Training adds the graphs with gradients
  (to the tokens, through the frozen blocks).
* **Fewer guards** (``compile_options``): dynamo's checks on the blocks' built-in modules are dropped,
  since nothing swaps or moves them after compiling.
* **Fallback**: where ``torch.compile`` cannot run (no C++ compiler for inductor on a CPU, a platform
  dynamo does not support, any failure of the first compiled call), the blocks go back to eager and
  ``CompileInfo.note`` says why; the work itself is never lost (``run_with_fallback``).
* **Caches**: inductor's FX graph cache on disk (``TORCHINDUCTOR_CACHE_DIR``, default under the
  system temp folder) makes a restart reuse the compiled kernels.

Modes: ``default`` (inductor), ``max-autotune-no-cudagraphs`` (searches kernels: a longer first
compile, faster on CUDA), ``reduce-overhead`` (CUDA graphs: less launch overhead on a GPU; static
shapes, so each new size records a graph).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

if TYPE_CHECKING:  # torch is imported where it runs: the app's settings read COMPILE_MODES before torch loads
    import torch
    from torch import nn

log = logging.getLogger(__name__)

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
T = TypeVar("T")


@dataclass
class CompileInfo:
    """How the denoiser runs: ``mode`` None = eager; ``note`` says why a compile asked for fell back."""

    mode: str | None
    blocks: int = 0  # blocks compiled
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "blocks": self.blocks, "note": self.note}


def check_mode(mode: bool | str | None) -> str | None:
    """``mode`` if it is a compile mode (True: "default"; None, False, "off": eager); ``ValueError``
    naming ``compile`` otherwise."""
    if mode is True:
        return "default"
    if mode in (None, False, "", "off", "none"):
        return None
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of off, {', '.join(COMPILE_MODES)}, got {mode!r}")
    return mode


REPEATED_BLOCKS = ("transformer_blocks", "single_transformer_blocks")  # SD3 / SD3.5, FLUX.1 (also the latter)


def repeated_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The transformer's repeated blocks: each module of its ``REPEATED_BLOCKS`` lists. A UNet has none:
    its down and up blocks differ from each other, and compiled they gave the soft tokens a wrong
    gradient (measured on the tiny SD 1.5: 76 % off, where eager chunked against naive differ by
    3e-5), so a UNet runs eager, with a note."""
    return [block for name in REPEATED_BLOCKS for block in getattr(denoiser, name, None) or ()]


def why_not_compiled(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here (None: it can): dynamo's platform check, and on a CPU
    the C++ compiler inductor builds its kernels with."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile is not supported on this platform or Python"
    if device.type == "cpu" and not any(shutil.which(name) for name in ("g++", "c++", "clang++")):
        return "no C++ compiler (g++, c++ or clang++) for inductor's CPU kernels: install one (e.g. apt-get install g++)"
    return None


def compile_denoiser(denoiser: nn.Module, mode: bool | str | None) -> CompileInfo:
    """Compile ``denoiser``'s repeated blocks in place (module docstring); eager, with a note, where
    the compiler is missing. Compilation itself happens at the first call (``run_with_fallback``)."""
    mode = check_mode(mode)
    if mode is None:
        return CompileInfo(None)
    device = next(denoiser.parameters()).device
    reason = why_not_compiled(device)
    blocks = repeated_blocks(denoiser)
    if reason is None and not blocks:
        reason = f"{type(denoiser).__name__} has no repeated blocks to compile"
    if reason is not None:
        log.warning("compile %s: running eager (%s)", mode, reason)
        return CompileInfo(None, note=f"compile {mode} asked, running eager: {reason}")
    options = compile_options(mode, offloaded=any(hasattr(m, "_hf_hook") for m in denoiser.modules()))
    for block in blocks:
        block.compile(dynamic=True, options=options)
    return CompileInfo(mode, blocks=len(blocks))


def compile_options(mode: str, offloaded: bool) -> dict[str, Any]:
    """Inductor's options for ``mode`` (``torch.compile`` takes a mode or options, not both), and
    the guard filter: dynamo checks before each call that nothing its graph read has changed, here
    every attribute and weight of the block's ~30 built-in modules (Linear, LayerNorm, Dropout): about
    700 checks, 0.25 ms a call on a CPU, 5 % of a bundled-model edit. The editor never swaps, retypes
    or moves those modules after compiling (their weights are the graph's inputs, passed at each
    call, and the blocks' own attributes, the tokens' hooks included, stay guarded), so the filter
    drops those checks (``torch.compiler.skip_guard_on_inbuilt_nn_modules_unsafe``). Not where
    accelerate offloads the weights: its hooks move them in and out of the built-in modules."""
    import torch._inductor
    import torch.compiler

    options = dict(torch._inductor.list_mode_options(mode, dynamic=True))
    if not offloaded:
        options["guard_filter_fn"] = torch.compiler.skip_guard_on_inbuilt_nn_modules_unsafe
    return options


def uncompile(denoiser: nn.Module) -> None:
    """Back to eager: each block's compiled call is dropped (``nn.Module.compile`` keeps it there)."""
    for block in repeated_blocks(denoiser):
        block._compiled_call_impl = None


@contextlib.contextmanager
def eager_blocks(denoiser: nn.Module) -> Iterator[None]:
    """Inside, the compiled blocks run eagerly: each block's compiled call is set aside and put back
    after, so eager and compiled calls run on one model, interleaved (benchmarks, tests)."""
    blocks = repeated_blocks(denoiser)
    kept = [block._compiled_call_impl for block in blocks]
    for block in blocks:
        block._compiled_call_impl = None
    try:
        yield
    finally:
        for block, call in zip(blocks, kept):
            block._compiled_call_impl = call


def run_with_fallback(info: CompileInfo, denoiser: nn.Module, run: Callable[[], T]) -> T:
    """``run()``; when the compiled blocks fail (a compiler error at the first call), the blocks go
    back to eager, ``info`` records why, and ``run()`` runs again eagerly (so ``run`` must start its
    work afresh: new generators, gradients zeroed)."""
    if info.mode is None:
        return run()
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the work is redone eagerly
        if not _compiler_error(exc):
            raise
        uncompile(denoiser)
        info.note = f"compile {info.mode} failed, running eager: {type(exc).__name__}: {str(exc)[:300]}"
        info.mode, info.blocks = None, 0
        log.warning("%s", info.note)
        return run()


def _compiler_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from dynamo or inductor (not from the caller's own checks)."""
    import torch._dynamo.exc

    return isinstance(exc, torch._dynamo.exc.TorchDynamoException) or \
        type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))
