"""A compiled denoiser for FlowEdit: ``torch.compile`` of the transformer's repeated blocks.

    FlowEditor(pipe, compile="default")            # python -m editing --compile, SOFTREPA_COMPILE=default

What is compiled, and why (docs/editing.md, Speed):

* **The repeated blocks, each in place** (``nn.Module.compile``; regional compilation, REFERENCE §12),
  not the whole transformer. The whole SD3 transformer specializes on the batch and the image size
  (its patch embedding crops the position grid with Python ints), so every new batch size
  (variations, a source-velocity cache hit halving the batch) and every new image size compiled
  again (30-50 s each on 2 CPU cores). A block sees only (batch, tokens, width) tensors, compiled with
  ``dynamic=True``: one graph per block variant serves every batch size, image size and prompt
  length. The blocks of one class share their compiled code (torch inlines module calls, so the
  weights are inputs, not constants), so the compile costs a few graphs, not one per layer.
* **The soft tokens' hooks run inside the compiled blocks** (``nn.Module.compile`` compiles the
  module's call, hooks included). Tokens on and off are two graphs, both made by the first edits
  that use them; switching after that compiles nothing.
* **Fallback**: where ``torch.compile`` cannot run (no C++ compiler for inductor on a CPU, a platform
  dynamo does not support, any failure of the first compiled call), the blocks go back to eager and
  ``CompileInfo.note`` says why; the edit itself is never lost (``run_with_fallback``).
* **Caches**: inductor's FX graph cache on disk (``TORCHINDUCTOR_CACHE_DIR``, default under the
  system temp folder) makes a restart reuse the compiled kernels.

Modes: ``default`` (inductor), ``max-autotune-no-cudagraphs`` (searches kernels: a longer first
compile, faster on CUDA), ``reduce-overhead`` (CUDA graphs: less launch overhead on a GPU; static
shapes, so each new size records a graph).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:  # torch is imported where it runs: the app's settings read COMPILE_MODES before torch loads
    import torch
    from torch import nn

    from editing.editor import FlowEditor

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


def repeated_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The transformer's repeated blocks: each module of its ``*blocks`` module lists (SD3 / SD3.5:
    ``transformer_blocks``; FLUX.1: also ``single_transformer_blocks``)."""
    from torch import nn

    return [block for name, child in denoiser.named_children()
            if isinstance(child, nn.ModuleList) and name.endswith("blocks") for block in child]


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
    options = {} if mode == "default" else {"mode": mode}
    for block in blocks:
        block.compile(dynamic=True, **options)
    return CompileInfo(mode, blocks=len(blocks))


def uncompile(denoiser: nn.Module) -> None:
    """Back to eager: each block's compiled call is dropped (``nn.Module.compile`` keeps it there)."""
    for block in repeated_blocks(denoiser):
        block._compiled_call_impl = None


def run_with_fallback(info: CompileInfo, denoiser: nn.Module, run: Callable[[], T]) -> T:
    """``run()``; when the compiled blocks fail (a compiler error at the first call), the blocks go
    back to eager, ``info`` records why, and ``run()`` runs again eagerly."""
    if info.mode is None:
        return run()
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - any compiler failure: the edit is redone eagerly
        if not _compiler_error(exc):
            raise
        uncompile(denoiser)
        info.note = f"compile {info.mode} failed, running eager: {type(exc).__name__}: {str(exc)[:300]}"
        info.mode, info.blocks = None, 0
        log.warning("%s", info.note)
        return run()


def _compiler_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from dynamo or inductor (not from the edit's own checks)."""
    import torch._dynamo.exc

    return isinstance(exc, torch._dynamo.exc.TorchDynamoException) or \
        type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def warm_up(editor: FlowEditor) -> float:
    """Compile now rather than at the first person's edit: a two-step edit of the smallest grey
    picture the model takes, tokens off and, when the editor has them, on (each state is a graph;
    the graphs are dynamic, so every later size reuses them), each twice: the second reuses the
    cached source velocities and runs the target half alone, a batch of one on FLUX.1, which dynamo
    always compiles apart (it specializes sizes 0 and 1). Seconds taken."""
    import time

    from PIL import Image

    from editing.params import FlowEditParams

    start = time.perf_counter()
    side = max(editor.min_side or 0, 4 * editor.factor)  # editing.inputs.MIN_PATCHES patches
    picture = Image.new("RGB", (side, side), (128, 128, 128))
    params = FlowEditParams(steps=2, n_max=2, seed=0)
    for use_tokens in ([False, True] if editor.has_tokens else [False]):
        for _ in range(2):
            editor.edit(picture, "a picture", "another picture", params, use_tokens=use_tokens)
    return time.perf_counter() - start
