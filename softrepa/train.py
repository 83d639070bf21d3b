"""SoftREPA training: learn soft tokens with the contrastive loss (paper §3.1-3.2, Eq. 9-15).

    python -m softrepa.train --model sd3 --data /data/coco/train2017 \
        --captions /data/coco/annotations/captions_train2017.json --output runs/sd3
    accelerate launch --num_processes 2 -m softrepa.train ...        # several GPUs

From Python (e.g. with an already-loaded pipeline):

    from softrepa.train import TrainConfig, train
    result = train(TrainConfig(data="shapes/", output="runs/shapes", kind="shapes-sd3"), pipe=pipe)
    result.final_path, result.best_path, result.tokens

One step (per process, B = batch_size local images):
1. B cached latents x0 and their captions' cached embeddings (a random caption per image per
   epoch); with several processes the caption embeddings are gathered, so each image is scored
   against the global batch's B * world captions (its own at column rank * B + i). With
   ``--hard-negatives`` each process appends its images' negative captions (B more columns, image
   i's own caption stays column i), so there are 2B * world captions, its own at rank * 2B + i.
2. one (t, eps) for the batch (the same on every process: same generator seed), x_t for each image;
   the B x (B * world) error matrix through the frozen denoiser with the tokens attached
   (``softrepa.pairs``, naive or chunked), loss = CE(scale * exp(-err / tau)) + dweight * mean(diag err).
3. backward into the tokens only. The gathered embeddings are constants (frozen encoders, cached),
   so gradients flow only through each process's own pair forwards; the token gradients are then
   averaged across processes (``accelerator.reduce``), which is exactly the gradient of the mean
   loss over the global batch. Tokens are not wrapped in DDP: the chunked path calls backward
   several times per step, which DDP's per-backward all-reduce would multiply.
4. AdamW (lr 1e-3, wd 1e-4, betas (0.9, 0.999)) + CosineAnnealingWarmRestarts (T_0 5000,
   eta_min 1e-5) per step, as the authors; optional gradient clipping.

The frozen model runs in bf16/fp16 (``--mixed-precision``), the tokens stay float32 (cast per call
inside the hooks); errors and the loss are float32. fp16 uses a GradScaler.

Checkpoints (``<output>/checkpoints/step-XXXXXXXX/``, written into a temp folder then renamed):
``tokens.safetensors``, ``state.pt`` (optimizer, LR scheduler, grad scaler; read back with
``torch.load(weights_only=True)``), ``rng-<rank>.pt`` (torch / numpy / python / noise-generator
states per process) and ``trainer.json`` (step, data position, best validation loss, config).
``--resume latest`` continues exactly: the same batches, captions, t and eps as an uninterrupted run.
Outputs: ``tokens-final.safetensors``, ``tokens-best.safetensors`` (lowest held-out loss),
``log.jsonl``, ``samples/step-XXXXXXXX.png`` (validation prompts, tokens off | on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softrepa.hooks import attach_tokens
from softrepa.models import denoiser_of, get_kind, kind_of_pipeline, load_pipeline, resolve_model
from softrepa.tokens import init_from_null_prompt, new_tokens
from softrepa.cache import FeatureCache, build_cache, encode_prompts, free_text_encoders, model_fingerprint
from softrepa.data import CaptionDataset, DatasetError, epoch_order, open_dataset
from softrepa.generate import generate_images, image_grid
from softrepa.loss import DiffusionObjective, LossConfig
from softrepa.pairs import NoiseDraw, PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward
from softrepa.tokens import INITS, SoftTokens, load_tokens, save_tokens

log = logging.getLogger("softrepa.train")

LR_SCHEDULERS = ("cosine_restarts", "constant")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CHECKPOINT_FORMAT = 1
DEFAULT_PROMPTS = ("a photo of a cat sitting on a red sofa", "two dogs playing in the snow",
                   "a blue car parked in front of a yellow house", "a bowl of green apples on a wooden table")


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row with a non-finite loss or gradient."""


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

    def resolved(self, kind: str) -> "TrainConfig":
        """A copy with the kind's defaults filled in (resolution, T5 length)."""
        spec = get_kind(kind)
        return dataclasses.replace(
            self, kind=kind, resolution=self.resolution or min(512, spec.resolution),
            max_sequence_length=self.max_sequence_length or spec.max_sequence_length)

    def loss_config(self, kind: str) -> LossConfig:
        dweight = get_kind(kind).dweight if self.dweight is None else self.dweight
        return LossConfig(scale=self.scale, tau=self.tau, tau_schedule=self.tau_schedule, tau_end=self.tau_end,
                          dweight=dweight)


@dataclass
class TrainState:
    """Where the run is: saved in every checkpoint's trainer.json."""

    step: int = 0  # optimizer iterations done (skipped non-finite steps count: they used a batch)
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val: float | None = None
    nonfinite_in_row: int = 0


@dataclass
class TrainResult:
    output: Path
    tokens: SoftTokens
    step: int
    final_path: Path | None  # None when stopped early (stop_after_step)
    best_path: Path | None
    history: list[dict] = field(default_factory=list)  # the JSONL log rows of this run


# ----------------------------------------------------------------------------- small helpers


def resolve_weight_dtype(mixed_precision: str, accelerator: Any) -> torch.dtype:
    if mixed_precision == "auto":
        if accelerator.mixed_precision in WEIGHT_DTYPES and accelerator.mixed_precision != "no":
            return WEIGHT_DTYPES[accelerator.mixed_precision]  # set by `accelerate launch` / config
        return torch.bfloat16 if accelerator.device.type != "cpu" else torch.float32
    if mixed_precision not in WEIGHT_DTYPES:
        raise ValueError(f"unknown mixed precision {mixed_precision!r}; choose one of {MIXED_PRECISION}")
    return WEIGHT_DTYPES[mixed_precision]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SOFTREPA_CACHE", Path.home() / ".cache" / "softrepa" / "features"))


def rng_state(noise_generator: torch.Generator) -> dict[str, Any]:
    """Every random state of this process, as tensors and plain containers (weights-only loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "noise_generator": noise_generator.get_state(),
             "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
             "numpy_rest": [str(kind), int(pos), int(has_gauss), float(cached)],
             "python": json.dumps(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], noise_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    noise_generator.set_state(state["noise_generator"])
    kind, pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state((kind, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- batches


class BatchSource:
    """Cached features -> ``PairBatch``es in the deterministic order of (seed, epoch)."""

    def __init__(self, dataset: CaptionDataset, cache: FeatureCache, seed: int, resolution: int, needs_time_ids: bool,
                 hard_negatives: bool = False):
        self.dataset, self.cache, self.seed = dataset, cache, seed
        self.resolution, self.needs_time_ids, self.hard_negatives = resolution, needs_time_ids, hard_negatives
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.dataset), self.seed, epoch))
        return self._order[1]

    def load(self, indices: list[int], epoch: int) -> PairBatch:
        latents = torch.stack([self.cache.load_latents(self.dataset.records[i]) for i in indices])  # (B, C, h, w)
        captions = [self.dataset.caption(i, self.seed, epoch) for i in indices]
        if self.hard_negatives:  # image i's own caption stays column i; its negative is column B + i
            captions += [self.dataset.negative(i, self.seed, epoch) for i in indices]
        texts = [self.cache.load_text(caption) for caption in captions]
        text = {key: torch.stack([t[key] for t in texts]) for key in texts[0]}  # (B or 2B, n, D), (B or 2B, P)
        image_cond = {}
        if self.needs_time_ids:
            # SDXL micro-conditioning: original size, crop top-left, target size of a center crop
            r = self.resolution
            image_cond["time_ids"] = torch.tensor([[r, r, 0, 0, r, r]] * len(indices), dtype=torch.float32)
        return PairBatch(latents=latents, text=text, image_cond=image_cond)


def next_global_batch(source: BatchSource, state: TrainState, global_batch: int) -> tuple[list[int], int]:
    """The global batch at ``state``'s data position, and advance the position. Returns (indices, epoch)."""
    per_epoch = len(source.dataset) // global_batch
    order = source.order(state.epoch)
    start = state.batch_in_epoch * global_batch
    indices, epoch = order[start:start + global_batch], state.epoch
    state.batch_in_epoch += 1
    if state.batch_in_epoch >= per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return indices, epoch


def gather_text(accelerator: Any, batch: PairBatch, device: torch.device) -> PairBatch:
    """Every process's captions as negatives for the local images (see module docstring)."""
    text = {k: v.to(device) for k, v in batch.text.items()}
    if accelerator.num_processes == 1:
        return PairBatch(batch.latents, text, batch.image_cond, None)
    gathered = accelerator.gather(text)  # {key: (captions * world, ...)}, rank-major
    positives = accelerator.process_index * batch.num_captions + torch.arange(batch.num_images)
    return PairBatch(batch.latents, gathered, batch.image_cond, positives)


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_pairs(denoiser: torch.nn.Module, arch: str, objective: DiffusionObjective, batch: PairBatch,
                   loss_config: LossConfig, timesteps: tuple[int, ...] = (250, 500, 750), seed: int = 0,
                   pair_chunk: int = 0) -> dict[str, float]:
    """Loss split and accuracy on ``batch`` at fixed timesteps with fixed noise (deterministic),
    averaged over the timesteps. Runs with whatever tokens are attached and enabled."""
    generator = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    for t in timesteps:
        eps = torch.randn((1, *batch.latents.shape[1:]), generator=generator).expand_as(batch.latents)
        noise = NoiseDraw(timesteps=torch.full((batch.num_images,), int(t)), eps=eps)
        err = PairScorer(denoiser, arch, objective, batch, noise).error_matrix(pair_chunk)  # (B_img, B_txt)
        for key, value in make_loss_fn(loss_config, noise, batch.positives)(err).floats().items():
            totals[key] = totals.get(key, 0.0) + value / len(timesteps)
    return totals


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(output: Path) -> list[Path]:
    root = output / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                   and (p / "trainer.json").is_file()), key=lambda p: p.name)


def find_checkpoint(output: Path, resume: str) -> Path | None:
    """'latest' -> the newest complete checkpoint (None if there is none); else the given folder."""
    if resume == "latest":
        found = checkpoint_dirs(output)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise FileNotFoundError(f"--resume {resume}: no checkpoint there (expected {path / 'trainer.json'})")
    return path


def save_checkpoint(accelerator: Any, output: Path, state: TrainState, tokens: SoftTokens, optimizer, lr_scheduler,
                    scaler, noise_generator: torch.Generator, config: TrainConfig, keep: int) -> Path:
    """Write a checkpoint atomically: everything into a temp folder, then one rename."""
    root = output / "checkpoints"
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(noise_generator), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_tokens(tokens, tmp / "tokens.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "state.pt")
        meta = {"format": CHECKPOINT_FORMAT, "state": dataclasses.asdict(state),
                "world_size": accelerator.num_processes, "config": dataclasses.asdict(config), "time": time.time()}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1, default=str))
        if final.exists():  # a re-run of the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator: Any, optimizer, lr_scheduler, scaler,
                    noise_generator: torch.Generator) -> TrainState:
    """Restore optimizer, scheduler, scaler and RNG states; returns the train state. Never unpickles
    arbitrary objects: ``weights_only=True`` accepts tensors and plain containers only."""
    meta = json.loads((path / "trainer.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')}, this version reads {CHECKPOINT_FORMAT}")
    if meta["world_size"] != accelerator.num_processes:
        log.warning("%s was written by %d processes, resuming on %d: data order and RNG streams differ from an "
                    "uninterrupted run", path, meta["world_size"], accelerator.num_processes)
    blobs = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blobs["optimizer"])
    lr_scheduler.load_state_dict(blobs["lr_scheduler"])
    if scaler is not None and blobs["scaler"] is not None:
        scaler.load_state_dict(blobs["scaler"])
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        rng_file = path / "rng-0.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True), noise_generator)
    return TrainState(**meta["state"])


# ----------------------------------------------------------------------------- the run


class JsonlLog:
    """Appends one JSON object per line; on resume drops rows after the resumed step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled, self.rows = path, enabled, []
        if enabled and resume_step is not None and path.is_file():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in keep))

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def _freeze(pipe: Any) -> None:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()  # eval: the chunked recompute needs a deterministic model


def _prepare_pipeline(config: TrainConfig, pipe: Any, accelerator: Any) -> tuple[Any, str, str, torch.dtype, bool]:
    """Load (or adopt) the pipeline on the device in the weight dtype: (pipe, kind, model id, dtype, loaded here)."""
    device = accelerator.device
    if pipe is None:
        weight_dtype = resolve_weight_dtype(config.mixed_precision, accelerator)
        model = config.model or config.kind or "sd3"
        model_id, kind = resolve_model(model, config.kind)
        pipe = load_pipeline(model_id, kind, weight_dtype, device, progress_bar=False)
        return pipe, kind, model_id, weight_dtype, True
    kind = config.kind or kind_of_pipeline(pipe)
    # names the cache and the tokens' base_model; in-memory pipelines may have no path
    model_id = config.model or getattr(pipe.config, "_name_or_path", None) or kind
    current = denoiser_of(pipe, kind).dtype
    weight_dtype = current if config.mixed_precision == "auto" else resolve_weight_dtype(config.mixed_precision,
                                                                                         accelerator)
    # the whole pipeline in one dtype: its own sampling (validation grids) does not cast between
    # components (SD3 decodes bf16 latents with the VAE as is)
    if current == weight_dtype:
        pipe.to(device)
    else:
        pipe.to(device, weight_dtype)
    return pipe, kind, model_id, weight_dtype, False


def _make_tokens(config: TrainConfig, pipe: Any, kind: str, model_id: str, checkpoint: Path | None) -> SoftTokens:
    """Tokens from the checkpoint being resumed, else fresh with the kind's defaults and init."""
    if checkpoint is not None:
        return load_tokens(checkpoint / "tokens.safetensors", model=pipe)
    spec = get_kind(kind)
    init = config.init or ("null_prompt" if spec.use_null_prompt_init else spec.init)
    overrides = {k: v for k, v in dict(num_tokens=config.num_tokens, num_layers=config.num_layers).items()
                 if v is not None}
    tokens = new_tokens(pipe, kind, use_time=config.use_time, init="zeros" if init == "null_prompt" else init,
                        base_model=model_id, **overrides)
    if init == "null_prompt":
        if getattr(pipe, "text_encoder", None) is None:
            raise ValueError("init 'null_prompt' needs the pipeline's text encoders (they were freed or never loaded)")
        init_from_null_prompt(pipe, tokens)
    return tokens


def train(config: TrainConfig, pipe: Any = None, accelerator: Any = None) -> TrainResult:
    """Train soft tokens; see the module docstring. ``pipe``: an already-loaded diffusers pipeline
    (then ``config.kind`` names its kind, or it is inferred from the pipeline class; its dtype is
    kept unless ``mixed_precision`` is set explicitly; its text encoders are kept unless
    ``free_text_encoders=True``). The tokens are detached from ``pipe`` when training ends."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    # cpu=True on machines without an accelerator: accelerate then runs several CPU processes
    # (torchrun / accelerate launch) over gloo instead of silently training each one alone
    accelerator = accelerator or Accelerator(cpu=not torch.accelerator.is_available())
    device, main = accelerator.device, accelerator.is_main_process
    output = Path(config.output)
    if main:
        output.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    pipe, kind, model_id, weight_dtype, owns_pipe = _prepare_pipeline(config, pipe, accelerator)
    config = config.resolved(kind)
    spec = get_kind(kind)
    arch = spec.arch
    denoiser = denoiser_of(pipe, kind)
    _freeze(pipe)
    pipe.set_progress_bar_config(disable=True)
    objective = DiffusionObjective.for_pipeline(pipe, arch)
    loss_config = config.loss_config(kind)
    needs_time_ids = arch == "unet" and getattr(denoiser.config, "addition_embed_type", None) == "text_time"

    # ---- data and cache (each process encodes its share; all read everything)
    dataset = open_dataset(config.data, config.captions)
    if config.hard_negatives and not all(r.negatives for r in dataset.records):  # before the cache is built
        raise DatasetError(f"{config.data}: --hard-negatives needs a negative_caption on every item "
                           f"({sum(not r.negatives for r in dataset.records)} have none); "
                           "python -m shapes.world edits --split train writes such a folder")
    cache_dtype = weight_dtype if weight_dtype != torch.float64 else torch.float32
    cache = FeatureCache(config.cache_dir or default_cache_dir(), model_fingerprint(pipe, model_id), config.resolution,
                         cache_dtype, config.max_sequence_length)
    report = build_cache(pipe, dataset, cache, device, config.cache_batch_size, accelerator.process_index,
                         accelerator.num_processes, progress=config.progress and main)
    accelerator.wait_for_everyone()
    usable = [i for i, r in enumerate(dataset.records) if cache.has_latents(r)]
    if len(usable) < len(dataset):
        log.warning("%d of %d images are unreadable and skipped (see warnings above)", len(dataset) - len(usable),
                    len(dataset))
    global_batch = config.batch_size * accelerator.num_processes
    if len(usable) < global_batch:
        raise DatasetError(f"{config.data}: {len(usable)} usable images; a step needs batch_size x processes = "
                           f"{global_batch}")
    n_val = min(config.val_items, len(usable) - global_batch)  # training keeps at least one full batch
    if n_val < config.val_items:
        log.warning("holding out %d items for validation instead of %d: the dataset is small", n_val, config.val_items)
    dataset = dataset.subset(usable)
    split = epoch_order(len(dataset), config.seed, -1)  # a fixed shuffle for the held-out split
    val_set = dataset.subset(sorted(split[:n_val])) if n_val > 0 else None
    train_set = dataset.subset(sorted(split[n_val:]))
    source = BatchSource(train_set, cache, config.seed, config.resolution, needs_time_ids, config.hard_negatives)
    log.info("cache: %d captions and %d images encoded now, %d skipped; %d train / %d held-out items",
             report.encoded_captions, report.encoded_images, len(report.skipped), len(train_set), n_val)

    # ---- tokens (fresh, or from the checkpoint we resume)
    checkpoint = find_checkpoint(output, config.resume) if config.resume else None
    tokens = _make_tokens(config, pipe, kind, model_id, checkpoint)
    tokens.to(device=device, dtype=torch.float32)

    # ---- validation prompts, encoded while the text encoders are still here
    val_prompts = list(config.validation_prompts)
    val_encoded = None
    if val_prompts and getattr(pipe, "text_encoder", None) is not None:
        val_encoded = encode_prompts(pipe, val_prompts, device, negative_prompt="",
                                     max_sequence_length=config.max_sequence_length)
    if config.free_text_encoders or (config.free_text_encoders is None and owns_pipe):
        dropped = free_text_encoders(pipe)
        log.info("freed text encoders %s", dropped)

    # ---- optimisation
    params = [p for p in tokens.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay)
    if config.lr_scheduler == "cosine_restarts":
        lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=config.lr_cycle,
                                                                            eta_min=config.lr_min)
    elif config.lr_scheduler == "constant":
        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise ValueError(f"unknown lr_scheduler {config.lr_scheduler!r}; choose one of {LR_SCHEDULERS}")
    scaler = torch.amp.GradScaler(device.type) if weight_dtype == torch.float16 else None
    noise_generator = torch.Generator().manual_seed(config.seed)  # same seed on every process: shared t, eps

    state = TrainState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, accelerator, optimizer, lr_scheduler, scaler, noise_generator)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    elif config.resume == "latest":
        log.info("--resume latest: no checkpoint in %s, starting fresh", output / "checkpoints")
    jsonl = JsonlLog(output / "log.jsonl", main, state.step if checkpoint is not None else None)
    if main and checkpoint is None:
        (output / "log.jsonl").write_text("")
        (output / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1, default=str))

    backward = (lambda x: scaler.scale(x).backward()) if scaler is not None else (lambda x: x.backward())
    val_batch = None
    if val_set is not None:
        val_batch = BatchSource(val_set, cache, config.seed, config.resolution, needs_time_ids).load(
            list(range(len(val_set))), epoch=0)

    def validate(step: int) -> None:
        row: dict[str, Any] = {"event": "validation", "step": step}
        if val_batch is not None:
            metrics = evaluate_pairs(denoiser, arch, objective, val_batch, loss_config, config.val_timesteps,
                                     seed=config.seed + 1, pair_chunk=config.pair_chunk)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            if state.best_val is None or metrics["loss"] < state.best_val:
                state.best_val = metrics["loss"]
                row["best"] = True
                if main:
                    save_tokens(tokens, output / "tokens-best.safetensors", extra_metadata={"step": str(step)})
        if main and val_encoded is not None:
            images = []
            for on in (False, True):
                with attached.switch(on):
                    images.append(generate_images(
                        pipe, val_prompts, [config.seed] * len(val_prompts), kind=kind, steps=config.val_steps,
                        cfg=config.val_cfg, height=config.val_image_size or config.resolution,
                        width=config.val_image_size or config.resolution, batch_size=config.batch_size,
                        encoded=val_encoded, max_sequence_length=config.max_sequence_length))
            grid = image_grid([img for pair in zip(*images) for img in pair], rows=len(val_prompts), cols=2)
            (output / "samples").mkdir(exist_ok=True)
            grid.save(output / "samples" / f"step-{step:08d}.png")
            row["grid"] = f"samples/step-{step:08d}.png"
        accelerator.wait_for_everyone()
        jsonl.write(row)

    attached = attach_tokens(pipe, tokens)
    final_path = None
    progress = tqdm(total=config.max_steps, initial=state.step, disable=not (config.progress and main),
                    desc="softrepa", dynamic_ncols=True)
    loop_start = time.perf_counter()

    def out_of_time() -> bool:  # every process must agree, so the decision is reduced (any process over)
        if config.max_minutes is None:
            return False
        over = torch.tensor([float(time.perf_counter() - loop_start >= 60.0 * config.max_minutes)], device=device)
        return bool(accelerator.reduce(over, reduction="sum").item() > 0)

    try:
        while state.step < config.max_steps and not out_of_time():
            t0 = time.perf_counter()
            indices, epoch = next_global_batch(source, state, global_batch)
            rank = accelerator.process_index
            local = indices[rank * config.batch_size:(rank + 1) * config.batch_size]  # this process's images
            batch = gather_text(accelerator, source.load(local, epoch), device)
            noise = draw_noise(batch.latents, objective, noise_generator, config.per_sample_t, config.per_sample_t)
            scorer = PairScorer(denoiser, arch, objective, batch, noise)
            optimizer.zero_grad(set_to_none=True)
            out = pair_loss_backward(scorer, make_loss_fn(loss_config, noise, batch.positives), config.pair_chunk,
                                     backward)

            # every process must agree to step or to skip
            finite = torch.tensor([float(torch.isfinite(out.loss))], device=device)
            finite = bool(accelerator.reduce(finite, reduction="sum").item() == accelerator.num_processes)
            grad_norm, lr = float("nan"), optimizer.param_groups[0]["lr"]
            if finite:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    if accelerator.num_processes > 1:  # mean over processes = gradient of the global-batch loss
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
                if scaler is not None:
                    scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    params, config.max_grad_norm if config.max_grad_norm > 0 else float("inf")))
                # fp16: the scaler skips inf gradients itself (normal while it calibrates)
                finite = scaler is not None or math.isfinite(grad_norm)
            if finite:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                lr_scheduler.step()
                state.nonfinite_in_row = 0
            else:
                state.nonfinite_in_row += 1
                log.warning("step %d: non-finite loss/gradient (loss %s); step skipped (%d in a row)", state.step + 1,
                            float(out.loss), state.nonfinite_in_row)
                optimizer.zero_grad(set_to_none=True)
                if state.nonfinite_in_row >= config.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{state.nonfinite_in_row} steps in a row with a non-finite loss or gradient (last loss "
                        f"{float(out.loss)}); lower the lr, use bf16 instead of fp16, or check the data/cache")
            state.step += 1

            metrics = out.floats()
            if accelerator.num_processes > 1:  # log the global batch's mean, not the main process's share
                values = accelerator.reduce(torch.tensor(list(metrics.values()), device=device), reduction="mean")
                metrics = dict(zip(metrics, values.tolist()))
            row = {"step": state.step, "epoch": epoch, **metrics, "lr": lr,
                   "grad_norm": grad_norm, "t": float(noise.timesteps.float().mean()), "skipped": not finite,
                   "seconds": round(time.perf_counter() - t0, 4)}
            jsonl.write(row)
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}")

            if state.step % config.validate_every == 0 or state.step == config.max_steps:
                validate(state.step)
            if state.step % config.checkpoint_every == 0:
                save_checkpoint(accelerator, output, state, tokens, optimizer, lr_scheduler, scaler, noise_generator,
                                config, config.keep_checkpoints)
            if config.stop_after_step is not None and state.step >= config.stop_after_step:
                log.warning("stop_after_step %d reached: stopping without final files", config.stop_after_step)
                break
        else:
            final_path = output / "tokens-final.safetensors"
            if main:
                save_tokens(tokens, final_path, extra_metadata={"step": str(state.step)})
            accelerator.wait_for_everyone()
    finally:
        progress.close()
        attached.detach()
    best = output / "tokens-best.safetensors"
    return TrainResult(output=output, tokens=tokens, step=state.step, final_path=final_path,
                       best_path=best if best.is_file() else None, history=jsonl.rows)


# ----------------------------------------------------------------------------- CLI


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field (underscores -> dashes), typed from the defaults."""
    helps = {
        "model": "a kind (sd3, sd15, sdxl, shapes-sd3) or a Hub id / diffusers folder (default: --kind, else sd3)",
        "data": "image folder with metadata.jsonl/.csv, or the COCO images folder (with --captions)",
        "captions": "COCO captions_*.json", "pair_chunk": "most pair items per forward (0: all B^2 at once)",
        "resume": "'latest' or a checkpoint folder", "mixed_precision": f"one of {MIXED_PRECISION}",
        "init": "normal | zeros | null_prompt (default: the kind's)",
        "stop_after_step": "stop once this step is done, without final files (tests/resume drills)",
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


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m softrepa.train", description=__doc__.split("\n")[0])
    _add_config_arguments(parser)
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required")
    return TrainConfig(**vars(args))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_args(argv)
    try:
        result = train(config)
    except (DatasetError, NonFiniteLossError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done at step {result.step}: final {result.final_path}, best {result.best_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
