"""The app on the tiny random-weight SD3 pipeline, for tests: no download, edits in about a second.

    settings, service = tiny_app_service(tmp_path)            # soft tokens on
    settings, service = tiny_app_service(tmp_path, tokens=False)
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import torch

from app.controls import EditControls
from app.loading import LoadedModel
from app.service import EditorService
from app.settings import AppSettings
from editing.editor import FlowEditor

TINY_MODEL_LABEL = "tiny-random-sd3"
# a few steps keep each edit well under a second on one CPU thread
FAST_CONTROLS = dict(steps=6, n_max=3, n_min=0, n_avg=1, tar_cfg=7.0, src_cfg=3.5, seed=3, max_side=64)


def tiny_tokens(pipe, seed: int = 5, kind: str = "sd3"):
    """Random soft tokens, larger than the N(0, 0.02) init so tokens on and off visibly differ."""
    from softrepa.tokens import new_tokens

    generator = torch.Generator().manual_seed(seed)
    tokens = new_tokens(pipe, kind, num_layers=2)
    with torch.no_grad():
        tokens.static.copy_(torch.randn(tokens.static.shape, generator=generator))
    return tokens


def tiny_settings(temp_dir: Path, **overrides) -> AppSettings:
    values = dict(model=TINY_MODEL_LABEL, kind="sd3", tokens=None, temp_dir=Path(temp_dir),
                  examples_dir=Path(temp_dir) / "no-examples", eager_load=True, queue_size=16)
    values.update(overrides)
    return AppSettings(**values)


def tiny_loader(tokens: bool = True) -> Callable[[AppSettings], LoadedModel]:
    """A model loader that builds the tiny pipeline of the settings' kind in memory (the tiny SD3 one
    for kinds without a tiny pipeline, e.g. shapes-sd3; ``load_editor`` is tested separately on a
    saved folder)."""
    from softrepa.tiny import TINY_PIPELINES

    def load(settings: AppSettings) -> LoadedModel:
        kind = settings.kind if settings.kind in TINY_PIPELINES else "sd3"
        pipe = TINY_PIPELINES[kind](0)
        # 8 zero "T5" tokens like the shapes model, not 256: the tiny transformer then runs 4x faster
        return LoadedModel(FlowEditor(pipe, tokens=tiny_tokens(pipe, kind=kind) if tokens else None, max_side=64,
                                      max_sequence_length=8, model_name=TINY_MODEL_LABEL, kind=kind))

    return load


def tiny_app_service(temp_dir: Path, tokens: bool = True, **overrides) -> tuple[AppSettings, EditorService]:
    """Settings and a service on the tiny pipeline (not loaded yet: ``service.load()`` or first use)."""
    settings = tiny_settings(temp_dir, **overrides)
    return settings, EditorService(settings, loader=tiny_loader(tokens))


def fast_controls(**overrides) -> EditControls:
    values = dict(source_prompt="a red circle on a white background", target_prompt="a blue circle on a white "
                  "background", use_tokens=True, **FAST_CONTROLS)
    values.update(overrides)
    return EditControls(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
