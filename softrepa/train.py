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

FLUX (``--kind flux-dev`` / ``flux-schnell``): the same loss with flow matching on the unpacked
latents and the guidance embedding at the kind's default; the design is in ``softrepa.flux``.

This module is the run: ``train()`` and the helpers it calls in order (the frozen model, the tokens,
the optimizer, one step, validation). The pieces it uses: ``softrepa.train_config`` (TrainConfig and
its flags), ``softrepa.batches`` (the cached data and each step's batch), ``softrepa.checkpoints``
(TrainState, RNG states, checkpoint folders).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softrepa.batches import TrainData, open_training_data
from softrepa.cache import encode_prompts, free_text_encoders
from softrepa.checkpoints import TrainState, find_checkpoint, load_checkpoint, save_checkpoint, seed_everything
from softrepa.compile import CompileInfo, compile_denoiser, run_with_fallback, uncompile
from softrepa.data import DatasetError
from softrepa.flux import PAIR_CALL, FluxDenoiser, encoding_view, flux_objective, training_guidance
from softrepa.generate import generate_images, image_grid
from softrepa.hooks import AttachedTokens, attach_tokens
from softrepa.images import write_png
from softrepa.loss import DiffusionObjective, LossConfig
from softrepa.models import denoiser_of, get_kind, known_kind, load_pipeline, resolve_model
from softrepa.pairs import NoiseDraw, PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward
from softrepa.runtime import add_threads_arg, apply_threads
from softrepa.tokens import SoftTokens, init_from_null_prompt, load_tokens, new_tokens, save_tokens
from softrepa.train_config import LR_SCHEDULERS, TrainConfig, add_config_arguments, resolve_weight_dtype

log = logging.getLogger("softrepa.train")


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row with a non-finite loss or gradient."""


@dataclass
class TrainResult:
    """What ``train()`` returns: the trained tokens and where its files are."""

    output: Path
    tokens: SoftTokens
    step: int
    final_path: Path | None  # None when stopped early (stop_after_step)
    best_path: Path | None
    history: list[dict] = field(default_factory=list)  # the JSONL log rows of this run


# ----------------------------------------------------------------------------- the run


def train(config: TrainConfig, pipe: Any = None, accelerator: Any = None) -> TrainResult:
    """Train soft tokens; see the module docstring. ``pipe``: an already-loaded diffusers pipeline
    (then ``config.kind`` names its kind, or it is inferred from the pipeline class; its dtype is
    kept unless ``mixed_precision`` is set explicitly; its text encoders are kept unless
    ``free_text_encoders=True``). The tokens are detached from ``pipe`` when training ends, and
    the blocks ``config.compile`` compiled go back to eager."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    # cpu=True on machines without an accelerator: accelerate then runs several CPU processes
    # (torchrun / accelerate launch) over gloo instead of silently training each one alone
    accelerator = accelerator or Accelerator(cpu=not torch.accelerator.is_available())
    is_main = accelerator.is_main_process
    output = Path(config.output)
    if is_main:
        output.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    # setup: the frozen model, the cached data, the tokens (fresh, or those of the checkpoint we resume)
    model = _prepare_model(config, pipe, accelerator)
    config = config.resolved(model.kind)
    loss_config = config.loss_config(model.kind)
    data = open_training_data(config, encoding_view(model.pipe, model.arch), model.model_id, model.weight_dtype,
                              model.needs_time_ids, accelerator)
    checkpoint = find_checkpoint(output, config.resume) if config.resume else None
    tokens = _make_tokens(config, model, checkpoint)
    tokens.to(device=accelerator.device, dtype=torch.float32)
    val_encoded = Validation.encode_prompts(config, encoding_view(model.pipe, model.arch),
                                            accelerator.device)  # while the encoders are here
    if config.free_text_encoders or (config.free_text_encoders is None and model.loaded_here):
        dropped = free_text_encoders(model.pipe)
        log.info("freed text encoders %s", dropped)
    opt = Optimisation.create(config, tokens, model.weight_dtype, accelerator.device)
    noise_generator = torch.Generator().manual_seed(config.seed)  # same seed on every process: shared t, eps
    state, jsonl = _start_or_resume(config, output, checkpoint, opt, noise_generator, accelerator)
    validation = Validation(config, loss_config, model, tokens, output, accelerator, data.validation_batch(),
                            val_encoded)

    # the loop: a step, its log row, then validation and a checkpoint when due
    attached = attach_tokens(model.pipe, tokens)
    final_path = None
    progress = tqdm(total=config.max_steps, initial=state.step, disable=not (config.progress and is_main),
                    desc="softrepa", dynamic_ncols=True)
    loop_start = time.perf_counter()
    try:
        while state.step < config.max_steps and not _out_of_time(config, loop_start, accelerator):
            row = _train_step(config, loss_config, model, data, opt, noise_generator, state, accelerator)
            jsonl.write(row)
            progress.update(1)
            progress.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}")
            if state.step % config.validate_every == 0 or state.step == config.max_steps:
                jsonl.write(validation.run(state, attached))
            if state.step % config.checkpoint_every == 0:
                save_checkpoint(accelerator, output, state, tokens, opt.optimizer, opt.lr_scheduler, opt.scaler,
                                noise_generator, config, config.keep_checkpoints)
            if config.stop_after_step is not None and state.step >= config.stop_after_step:
                log.warning("stop_after_step %d reached: stopping without final files", config.stop_after_step)
                break
        else:  # max_steps done or out of time: the final tokens (stop_after_step leaves none, as if killed)
            final_path = _save_final_tokens(tokens, output, state.step, accelerator)
    finally:
        progress.close()
        attached.detach()
        if model.compile_info.mode is not None:
            uncompile(model.denoiser)  # the pipeline as it came: eager
    best = output / "tokens-best.safetensors"
    return TrainResult(output=output, tokens=tokens, step=state.step, final_path=final_path,
                       best_path=best if best.is_file() else None, history=jsonl.rows)


# ----------------------------------------------------------------------------- setup


@dataclass
class FrozenModel:
    """The frozen pipeline on the device, and what the steps need from it."""

    pipe: Any
    kind: str
    model_id: str  # names the feature cache and the tokens' base_model
    weight_dtype: torch.dtype
    loaded_here: bool  # train() loaded the pipeline itself (so by default it frees the text encoders)
    denoiser: torch.nn.Module  # the pipeline's denoiser: the tokens hook into it
    arch: str
    objective: DiffusionObjective
    needs_time_ids: bool  # SDXL micro-conditioning
    pair_denoiser: torch.nn.Module  # what softrepa.pairs calls: the denoiser, or FLUX's FluxDenoiser around it
    pair_arch: str  # its softrepa.pairs call convention ("mmdit" for FLUX: softrepa.flux)
    compile_info: CompileInfo  # the denoiser's blocks compiled (config.compile), or eager and why


def _prepare_model(config: TrainConfig, pipe: Any, accelerator: Any) -> FrozenModel:
    """Load (or adopt) the pipeline on the device in the weight dtype, frozen and in eval mode."""
    device = accelerator.device
    loaded_here = pipe is None
    if loaded_here:
        weight_dtype = resolve_weight_dtype(config.mixed_precision, accelerator)
        model_id, kind = resolve_model(config.model or config.kind or "sd3", config.kind)
        pipe = load_pipeline(model_id, kind, weight_dtype, device, progress_bar=False)
    else:
        kind = config.kind or known_kind(pipe, "train")
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
    arch = get_kind(kind).arch
    denoiser = denoiser_of(pipe, kind)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()  # eval: the chunked recompute needs a deterministic model
    pipe.set_progress_bar_config(disable=True)
    needs_time_ids = arch == "unet" and getattr(denoiser.config, "addition_embed_type", None) == "text_time"
    if arch == "flux":  # flow matching on unpacked latents, the guidance embedding at the kind's default
        objective, pair_arch = flux_objective(), PAIR_CALL
        pair_denoiser = FluxDenoiser(denoiser, training_guidance(kind, denoiser))
    else:
        objective, pair_arch, pair_denoiser = DiffusionObjective.for_pipeline(pipe, arch), arch, denoiser
    return FrozenModel(pipe=pipe, kind=kind, model_id=model_id, weight_dtype=weight_dtype, loaded_here=loaded_here,
                       denoiser=denoiser, arch=arch, objective=objective, needs_time_ids=needs_time_ids,
                       pair_denoiser=pair_denoiser, pair_arch=pair_arch,
                       compile_info=compile_denoiser(denoiser, config.compile))  # compiles at the first step


def _make_tokens(config: TrainConfig, model: FrozenModel, checkpoint: Path | None) -> SoftTokens:
    """Tokens from the checkpoint being resumed, else fresh with the kind's defaults and init."""
    if checkpoint is not None:
        return load_tokens(checkpoint / "tokens.safetensors", model=model.pipe)
    spec = get_kind(model.kind)
    init = config.init or ("null_prompt" if spec.use_null_prompt_init else spec.init)
    overrides = {k: v for k, v in dict(num_tokens=config.num_tokens, num_layers=config.num_layers).items()
                 if v is not None}
    tokens = new_tokens(model.pipe, model.kind, use_time=config.use_time,
                        init="zeros" if init == "null_prompt" else init, base_model=model.model_id, **overrides)
    if init == "null_prompt":
        if getattr(model.pipe, "text_encoder", None) is None:
            raise ValueError("init 'null_prompt' needs the pipeline's text encoders (they were freed or never loaded)")
        init_from_null_prompt(model.pipe, tokens)
    return tokens


@dataclass
class Optimisation:
    """AdamW over the tokens, its LR schedule, and a GradScaler when the model runs in fp16 (else None)."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(cls, config: TrainConfig, tokens: SoftTokens, weight_dtype: torch.dtype,
               device: torch.device) -> "Optimisation":
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
        return cls(params=params, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def average_and_clip(self, accelerator: Any, max_grad_norm: float) -> float:
        """Average the token gradients over processes, unscale them (fp16) and clip them (0: no
        clipping); returns their norm before clipping."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if accelerator.num_processes > 1:  # mean over processes = gradient of the global-batch loss
                p.grad = accelerator.reduce(p.grad, reduction="mean")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm if max_grad_norm > 0 else float("inf")))

    def step(self) -> None:
        """The optimizer step (through the scaler in fp16) and the LR schedule's step."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()


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


def _start_or_resume(config: TrainConfig, output: Path, checkpoint: Path | None, opt: Optimisation,
                     noise_generator: torch.Generator, accelerator: Any) -> tuple[TrainState, JsonlLog]:
    """The run's state and log: restored from ``checkpoint`` (optimizer, scheduler, scaler and every
    RNG state; the log cut back to its step), else fresh (a new log.jsonl and config.json)."""
    state = TrainState()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, accelerator, opt.optimizer, opt.lr_scheduler, opt.scaler, noise_generator)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    elif config.resume == "latest":
        log.info("--resume latest: no checkpoint in %s, starting fresh", output / "checkpoints")
    is_main = accelerator.is_main_process
    jsonl = JsonlLog(output / "log.jsonl", is_main, state.step if checkpoint is not None else None)
    if is_main and checkpoint is None:
        (output / "log.jsonl").write_text("")
        (output / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1, default=str))
    return state, jsonl


# ----------------------------------------------------------------------------- one step


def _train_step(config: TrainConfig, loss_config: LossConfig, model: FrozenModel, data: TrainData,
                opt: Optimisation, noise_generator: torch.Generator, state: TrainState, accelerator: Any) -> dict:
    """One optimizer iteration (module docstring, 1-4): the batch, one (t, eps) draw, the pair
    losses' gradient, then the optimizer step or a skip. Advances ``state``; returns the log row."""
    t0 = time.perf_counter()
    batch, epoch = data.next_batch(state, accelerator)
    noise = draw_noise(batch.latents, model.objective, noise_generator, config.per_sample_t, config.per_sample_t)
    scorer = PairScorer(model.pair_denoiser, model.pair_arch, model.objective, batch, noise)

    def loss_and_gradient():  # from zero gradients: a compiler failure at the first step reruns it eagerly
        opt.optimizer.zero_grad(set_to_none=True)
        return pair_loss_backward(scorer, make_loss_fn(loss_config, noise, batch.positives), config.pair_chunk,
                                  opt.backward)

    out = run_with_fallback(model.compile_info, model.denoiser, loss_and_gradient)
    lr = opt.optimizer.param_groups[0]["lr"]  # the rate this step uses, before the schedule moves on
    stepped, grad_norm = _optimizer_step(config, opt, out.loss, state, accelerator)
    state.step += 1

    metrics = out.floats()
    if accelerator.num_processes > 1:  # log the global batch's mean, not the main process's share
        values = accelerator.reduce(torch.tensor(list(metrics.values()), device=accelerator.device), reduction="mean")
        metrics = dict(zip(metrics, values.tolist()))
    return {"step": state.step, "epoch": epoch, **metrics, "lr": lr, "grad_norm": grad_norm,
            "t": float(noise.timesteps.float().mean()), "skipped": not stepped,
            "seconds": round(time.perf_counter() - t0, 4)}


def _optimizer_step(config: TrainConfig, opt: Optimisation, loss: torch.Tensor, state: TrainState,
                    accelerator: Any) -> tuple[bool, float]:
    """Step the tokens with their averaged, clipped gradient; or skip the step when the loss or the
    gradient is not finite, raising after ``max_nonfinite`` skips in a row. Returns (stepped, grad norm)."""
    # every process must agree to step or to skip
    finite = torch.tensor([float(torch.isfinite(loss))], device=accelerator.device)
    finite = bool(accelerator.reduce(finite, reduction="sum").item() == accelerator.num_processes)
    grad_norm = float("nan")
    if finite:
        grad_norm = opt.average_and_clip(accelerator, config.max_grad_norm)
        # fp16: the scaler skips inf gradients itself (normal while it calibrates)
        finite = opt.scaler is not None or math.isfinite(grad_norm)
    if finite:
        opt.step()
        state.nonfinite_in_row = 0
        return True, grad_norm
    state.nonfinite_in_row += 1
    log.warning("step %d: non-finite loss/gradient (loss %s); step skipped (%d in a row)", state.step + 1,
                float(loss), state.nonfinite_in_row)
    opt.optimizer.zero_grad(set_to_none=True)
    if state.nonfinite_in_row >= config.max_nonfinite:
        raise NonFiniteLossError(
            f"{state.nonfinite_in_row} steps in a row with a non-finite loss or gradient (last loss "
            f"{float(loss)}); lower the lr, use bf16 instead of fp16, or check the data/cache")
    return False, grad_norm


def _out_of_time(config: TrainConfig, loop_start: float, accelerator: Any) -> bool:
    """Past ``max_minutes`` since the loop started. Every process must agree, so the decision is
    reduced: any process over stops them all."""
    if config.max_minutes is None:
        return False
    over = torch.tensor([float(time.perf_counter() - loop_start >= 60.0 * config.max_minutes)],
                        device=accelerator.device)
    return bool(accelerator.reduce(over, reduction="sum").item() > 0)


def _save_final_tokens(tokens: SoftTokens, output: Path, step: int, accelerator: Any) -> Path:
    """tokens-final.safetensors, written by the main process; every process waits for it."""
    final_path = output / "tokens-final.safetensors"
    if accelerator.is_main_process:
        save_tokens(tokens, final_path, extra_metadata={"step": str(step)})
    accelerator.wait_for_everyone()
    return final_path


# ----------------------------------------------------------------------------- validation


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


class Validation:
    """Every ``validate_every`` steps: the held-out loss (the best tokens so far kept as
    tokens-best.safetensors) and a grid of the validation prompts sampled with the tokens off | on."""

    def __init__(self, config: TrainConfig, loss_config: LossConfig, model: FrozenModel, tokens: SoftTokens,
                 output: Path, accelerator: Any, batch: PairBatch | None, encoded: dict | None):
        self.config, self.loss_config, self.model, self.tokens = config, loss_config, model, tokens
        self.output, self.accelerator = output, accelerator
        self.batch = batch  # the held-out items (None: none held out)
        self.encoded = encoded  # the validation prompts' embeddings (None: no grid)

    @staticmethod
    def encode_prompts(config: TrainConfig, pipe: Any, device: torch.device) -> dict | None:
        """The validation prompts' embeddings (None without prompts or text encoders); ``pipe``: the
        pipeline's ``softrepa.flux.encoding_view``."""
        if not config.validation_prompts or getattr(pipe, "text_encoder", None) is None:
            return None
        return encode_prompts(pipe, list(config.validation_prompts), device, negative_prompt="",
                              max_sequence_length=config.max_sequence_length)

    def run(self, state: TrainState, attached: AttachedTokens) -> dict[str, Any]:
        """Validate at ``state.step`` (updating ``state.best_val``); returns the log row."""
        row: dict[str, Any] = {"event": "validation", "step": state.step}
        if self.batch is not None:
            row.update(self._held_out_loss(state))
        if self.accelerator.is_main_process and self.encoded is not None:
            row["grid"] = self._sample_grid(state.step, attached)
        self.accelerator.wait_for_everyone()
        return row

    def _held_out_loss(self, state: TrainState) -> dict[str, Any]:
        config, model = self.config, self.model
        metrics = evaluate_pairs(model.pair_denoiser, model.pair_arch, model.objective, self.batch, self.loss_config,
                                 config.val_timesteps, seed=config.seed + 1, pair_chunk=config.pair_chunk)
        row: dict[str, Any] = {f"val_{k}": v for k, v in metrics.items()}
        if state.best_val is None or metrics["loss"] < state.best_val:
            state.best_val = metrics["loss"]
            row["best"] = True
            if self.accelerator.is_main_process:
                save_tokens(self.tokens, self.output / "tokens-best.safetensors",
                            extra_metadata={"step": str(state.step)})
        return row

    def _sample_grid(self, step: int, attached: AttachedTokens) -> str:
        """samples/step-XXXXXXXX.png: one row per prompt, tokens off | on; returns its path in the output."""
        config, prompts = self.config, list(self.config.validation_prompts)
        size = config.val_image_size or config.resolution
        images = []
        for on in (False, True):
            with attached.switch(on):
                images.append(generate_images(
                    self.model.pipe, prompts, [config.seed] * len(prompts), kind=self.model.kind,
                    steps=config.val_steps, cfg=config.val_cfg, height=size, width=size,
                    batch_size=config.batch_size, encoded=self.encoded,
                    max_sequence_length=config.max_sequence_length))
        grid = image_grid([img for pair in zip(*images) for img in pair], rows=len(prompts), cols=2)
        (self.output / "samples").mkdir(exist_ok=True)
        write_png(grid, self.output / "samples" / f"step-{step:08d}.png")  # atomic, as every file of a run
        return f"samples/step-{step:08d}.png"


# ----------------------------------------------------------------------------- CLI


def parse_command_line(argv: list[str] | None = None) -> tuple[TrainConfig, str | int]:
    """The run's ``TrainConfig`` and ``--threads``, which is this process's setting, not the run's:
    it stays out of the config that checkpoints and token files record."""
    parser = argparse.ArgumentParser(prog="python -m softrepa.train", description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required")
    threads = vars(args).pop("threads")
    try:
        return TrainConfig(**vars(args)), threads
    except ValueError as exc:  # a bad value (--compile fast, --lr-scheduler linear): usage and the rule, exit 2
        parser.error(str(exc))


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return parse_command_line(argv)[0]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, threads = parse_command_line(argv)
    # before torch runs anything; under accelerate launch / torchrun auto keeps their OMP_NUM_THREADS
    log.info("%d CPU thread(s) for torch", apply_threads(threads))
    try:
        result = train(config)
    except (DatasetError, NonFiniteLossError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done at step {result.step}: final {result.final_path}, best {result.best_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
