"""What a training run is told: ``TrainConfig`` (one field per knob, checked on construction) and
its command-line flags, one per field. The run itself is ``softrepa.train``."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softrepa.compile import COMPILE_MODES, check_mode
from softrepa.loss import LossConfig
from softrepa.models import get_kind
from softrepa.tokens import INITS

LR_SCHEDULERS = ("cosine_restarts", "constant")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_PROMPTS = ("a photo of a cat sitting on a red sofa", "two dogs playing in the snow",
                   "a blue car parked in front of a yellow house", "a bowl of green apples on a wooden table")


@dataclass
class TrainConfig:
    """Everything a run needs. ``None`` token/loss fields take the model kind's defaults
    (``softrepa.models.KINDS``: m, L, init, dweight)."""

    # model and data
    model: str | None = None  # a kind (sd3, sd15, ...) or a Hub id / diffusers folder; None: kind, else sd3
    kind: str | None = None
    data: str = ""  # image folder with metadata.jsonl/.csv, or COCO images dir (with captions)
    captions: str | None = None  # COCO captions_*.json
    output: str = "runs/softrepa"
    cache_dir: str | None = None  # default: $SOFTREPA_CACHE or ~/.cache/softrepa/features
    resolution: int | None = None  # None: min(512, the kind's) -- the authors train every model at 512 px
    max_sequence_length: int | None = None  # SD3-family T5 length; None: the kind's (256; shapes-sd3: 8)
    # batch
    batch_size: int = 4  # images per process; pairs per step = batch_size * batch_size * world
    pair_chunk: int = 16  # most pair items per forward; 0 = all at once
    per_sample_t: bool = False  # per-image t and eps instead of one shared draw (Eq. 13 note)
    # Score each image also against a hard negative of its own (metadata `negative_caption`: the
    # caption with one detail wrong), appended as extra caption columns: B x 2B pairs per step.
    hard_negatives: bool = False
    # optimisation (authors' defaults)
    max_steps: int = 30000
    max_minutes: float | None = None  # also stop (with final files) after this many minutes of this run's steps
    lr: float = 1e-3
    weight_decay: float = 1e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler: str = "cosine_restarts"
    lr_cycle: int = 5000  # CosineAnnealingWarmRestarts T_0
    lr_min: float = 1e-5  # eta_min
    max_grad_norm: float = 0.0  # 0 = no clipping (the authors do not clip)
    mixed_precision: str = "auto"  # auto: accelerate's setting, else bf16 on GPU, fp32 on CPU
    seed: int = 0
    # tokens
    num_tokens: int | None = None
    num_layers: int | None = None
    use_time: bool = True
    init: str | None = None  # normal | zeros | null_prompt
    # loss
    tau: float = 0.07
    tau_schedule: str = "constant"
    tau_end: float | None = None
    scale: float = 4.0
    dweight: float | None = None
    cweight: float = 1.0  # weight of the contrastive term; 0 = prompt tuning (denoising loss only)
    # checkpoints, validation, logging
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: str | None = None  # "latest" or a checkpoint folder
    validate_every: int = 1000
    val_items: int = 16  # held-out items for the validation loss (0 = none)
    val_timesteps: tuple[int, ...] = (250, 500, 750)
    validation_prompts: tuple[str, ...] = DEFAULT_PROMPTS
    val_steps: int | None = None  # sampling steps for the grid (default: the kind's)
    val_cfg: float | None = None
    val_image_size: int | None = None  # default: resolution
    max_nonfinite: int = 10  # stop after this many non-finite steps in a row
    stop_after_step: int | None = None  # stop (as if killed, no final files) once this step is done
    free_text_encoders: bool | None = None  # None: only when train() loaded the pipeline itself
    cache_batch_size: int = 8
    progress: bool = True
    # torch.compile the denoiser's repeated blocks (softrepa.compile; MM-DiT and FLUX.1, a UNet runs eager): a mode,
    # or None (eager). Undone when train() ends. Pays after a few hundred steps: 0.81-0.89x a step on one CPU thread
    # after 65-87 s of compiling (docs/training.md, Speed)
    compile: str | None = None

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        self.val_timesteps = tuple(int(t) for t in self.val_timesteps)
        self.validation_prompts = tuple(self.validation_prompts)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.init is not None and self.init not in (*INITS, "null_prompt"):
            raise ValueError(f"init must be one of {(*INITS, 'null_prompt')}, got {self.init!r}")
        for name in ("batch_size", "max_steps", "checkpoint_every", "validate_every", "lr_cycle",
                     "max_nonfinite", "cache_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (or unset), got {self.max_minutes}")
        if self.pair_chunk < 0 or self.val_items < 0 or self.keep_checkpoints < 1:
            raise ValueError("pair_chunk and val_items must be >= 0, keep_checkpoints >= 1")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be >= 8 px, got {self.resolution}")
        if not all(0 <= t < 1000 for t in self.val_timesteps):
            raise ValueError(f"val_timesteps must lie in [0, 999], got {self.val_timesteps}")
        self.compile = check_mode(self.compile)

    def resolved(self, kind: str) -> "TrainConfig":
        """A copy with the kind's defaults filled in (resolution, T5 length)."""
        spec = get_kind(kind)
        return dataclasses.replace(
            self, kind=kind, resolution=self.resolution or min(512, spec.resolution),
            max_sequence_length=self.max_sequence_length or spec.max_sequence_length)

    def loss_config(self, kind: str) -> LossConfig:
        dweight = get_kind(kind).dweight if self.dweight is None else self.dweight
        return LossConfig(scale=self.scale, tau=self.tau, tau_schedule=self.tau_schedule, tau_end=self.tau_end,
                          dweight=dweight, cweight=self.cweight)


def resolve_weight_dtype(mixed_precision: str, accelerator: Any) -> torch.dtype:
    """The frozen model's dtype for ``mixed_precision`` (``auto``: accelerate's setting, else bf16 off the CPU)."""
    if mixed_precision == "auto":
        if accelerator.mixed_precision in WEIGHT_DTYPES and accelerator.mixed_precision != "no":
            return WEIGHT_DTYPES[accelerator.mixed_precision]  # set by `accelerate launch` / config
        return torch.bfloat16 if accelerator.device.type != "cpu" else torch.float32
    if mixed_precision not in WEIGHT_DTYPES:
        raise ValueError(f"unknown mixed precision {mixed_precision!r}; choose one of {MIXED_PRECISION}")
    return WEIGHT_DTYPES[mixed_precision]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SOFTREPA_CACHE", Path.home() / ".cache" / "softrepa" / "features"))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field (underscores -> dashes), typed from the defaults."""
    helps = {
        "model": "a kind (sd3, sd15, sdxl, shapes-sd3) or a Hub id / diffusers folder (default: --kind, else sd3)",
        "data": "image folder with metadata.jsonl/.csv, or the COCO images folder (with --captions)",
        "captions": "COCO captions_*.json", "pair_chunk": "most pair items per forward (0: all B^2 at once)",
        "resume": "'latest' or a checkpoint folder", "mixed_precision": f"one of {MIXED_PRECISION}",
        "init": "normal | zeros | null_prompt (default: the kind's)",
        "stop_after_step": "stop once this step is done, without final files (tests/resume drills)",
        "cweight": "weight of the contrastive term (1: SoftREPA; 0: prompt tuning, the denoising loss only, "
                   "which needs --dweight > 0 and runs only the positive pairs)",
        "compile": f"torch.compile the denoiser's repeated blocks: one of {', '.join(COMPILE_MODES)} (default: "
                   "eager; pays on long runs, docs/training.md)",
        "max_minutes": "time box: stop with final files after this many minutes of steps (this run), or at "
                       "--max-steps, whichever comes first",
    }
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {"default": default, "help": helps.get(f.name)}
        if isinstance(default, bool) or f.type in ("bool", "bool | None"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kwargs.update(nargs="+", type=type(default[0]) if default else str)
        elif f.type in ("int", "int | None"):
            kwargs["type"] = int
        elif f.type in ("float", "float | None"):
            kwargs["type"] = float
        elif f.type not in ("str", "str | None"):
            raise TypeError(f"TrainConfig.{f.name}: no command-line mapping for type {f.type}")
        parser.add_argument(flag, **kwargs)
