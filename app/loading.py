"""Loading the app's model: the pipeline and soft tokens of the settings in a ``FlowEditor``.

Imported by ``app.service`` only when the model loads (after the page is served, app/main.py),
since it brings in torch, diffusers and transformers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from app.controls import side_slider_range
from app.settings import AppSettings
from editing.compile import warm_up
from editing.editor import FlowEditor
from softrepa.models import load_pipeline
from softrepa.runtime import apply_threads, memory_from_args, model_dtype, resolve_device

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    editor: FlowEditor
    warnings: list[str] = field(default_factory=list)  # e.g. tokens that could not be loaded


def load_editor(settings: AppSettings) -> LoadedModel:
    """Load the pipeline and tokens of ``settings`` into a ``FlowEditor``.

    Raises ``RuntimeError`` with a message for a person when the model cannot be loaded. A token
    file that does not load or fit is not fatal: the app edits without tokens and says why.
    """
    if settings.is_bundled_model and not Path(settings.model).is_dir():
        raise RuntimeError(f"The bundled shapes model is not installed at {settings.model_label}. Build it with "
                           "`python -m shapes.model build --out assets/shapes-sd3`, or start the app with "
                           "--model <Hub id or folder> (SOFTREPA_MODEL on a Space).")
    apply_threads(settings.threads)  # the command lines' rule: auto is 1 thread on small machines
    try:  # settings a person can fix: their own message
        device = resolve_device(settings.device)
        dtype = model_dtype(settings.dtype, device, settings.kind)
        memory = memory_from_args(settings, device)  # the same rules as the command lines' --offload / --vae-tiling
    except ValueError as exc:
        raise RuntimeError(f"Cannot start the model: {exc}.") from None
    try:
        pipe = load_pipeline(settings.model, settings.kind, dtype, device, without_t5=True if settings.no_t5 else None,
                             memory=memory)
    except Exception as exc:  # noqa: BLE001 - from_pretrained raises many types; all mean "cannot load this"
        log.exception("loading %s failed", settings.model)
        raise RuntimeError(f"Could not load the model {settings.model_label!r} ({type(exc).__name__}: {exc}). Give "
                           "a local diffusers folder or a Hub id you can access (gated models need "
                           "`huggingface-cli login`).") from exc
    editor = FlowEditor(pipe, tokens=None, max_side=side_slider_range(settings.kind)[1],
                        max_sequence_length=settings.max_sequence_length, model_name=settings.model_label,
                        kind=settings.kind, compile=settings.compile)  # no length given: the kind's
    warnings = []
    if settings.tokens is not None:
        try:
            editor.set_tokens(settings.token_file())  # the settings' one read of the file
        except (OSError, ValueError, RuntimeError) as exc:
            warnings.append(f"Soft tokens {Path(settings.tokens).name} could not be used ({exc}); editing without "
                            "tokens.")
    # before the model is reported ready: the first person's edit is an ordinary one, not the one that
    # compiles (--compile) or makes the first call's allocations and kernel choices
    seconds = warm_up(editor)
    log.info("warmed up in %.1f s%s", seconds, f" (compiled: {editor.compile_info.mode})"
             if editor.compile_info.mode else "")
    if editor.compile_info.note:
        warnings.append(editor.compile_info.note)
    return LoadedModel(editor, warnings)
