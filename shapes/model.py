"""Build the bundled shapes-world model: a real SD3-architecture pipeline trained from scratch.

    python -m shapes.model build --out assets/shapes-sd3 [--minutes 40] [--seed 0] [--device cuda]
    python -m shapes.model samples --out docs/shapes_model_samples.png   # captioned sample sheet

Components (all standard diffusers / transformers classes, so
``StableDiffusion3Pipeline.from_pretrained("assets/shapes-sd3", text_encoder_3=None, tokenizer_3=None)``
loads it offline -- diffusers' documented way to run SD3 without T5):

* ``AutoencoderKL``: 64 px RGB -> 16 x 16 x 4 latents (4x), trained on renders with an L2 +
  small KL loss; ``shift_factor`` / ``scaling_factor`` set from the latent statistics, as SD3's.
* two ``CLIPTextModelWithProjection`` encoders with the real CLIP tokenizer (max length 64;
  the longest world caption is 57 tokens), trained jointly with the transformer;
* ``text_encoder_3 = None``: the pipeline feeds zeros for T5. Their count is the call's
  ``max_sequence_length``; the model is trained with ``MAX_SEQUENCE_LENGTH`` (8) of them and the
  project's callers pass that (``KINDS["shapes-sd3"].max_sequence_length``) -- 256 zero tokens
  would cost 3.4x the compute on CPU for nothing;
* ``SD3Transformer2DModel`` (6 joint blocks, 128 wide, patch 2 -> 64 image tokens), rectified
  flow with SD3's logit-normal timestep sampling, 10 % caption dropout so CFG works, EMA weights;
* ``FlowMatchEulerDiscreteScheduler`` with shift 1.0 (small images need no high-noise shift).

The build is seeded and resumable: each stage checkpoints atomically under ``--work`` and a
rerun continues where it stopped. Weights are saved in fp16 (the folder stays well under 40 MB).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shapes.web_captions import CAPTION_MODES, WebCaptionConfig, generate_web_samples
from softrepa.atomic import atomic_path
from softrepa.models import load_pipeline, write_kind_marker

LR_SCHEDULES = ("constant", "cosine")
MAX_SEQUENCE_LENGTH = 8  # zero "T5" tokens the model is trained with (see module docstring)
TEXT_MAX_LENGTH = 64


@dataclass
class ShapesModelConfig:
    seed: int = 0
    train_samples: int = 30000
    # VAE stage
    vae_steps: int = 800
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # decoder stage: encoder frozen (latents unchanged), decoder trained further for sharper decoding
    decoder_steps: int = 2500
    decoder_lr: float = 5e-4
    # denoiser stage (transformer + both text encoders). These defaults are the CPU recipe (4988
    # steps of batch 32: 80 min of step time on 2 cores). The shipped model used the GPU recipe
    # (Makefile `shapes`: 5232 steps of batch 256, then 1011 of batch 1024 continued with
    # --init-from, 7 min on an H200; its build_report.json holds both configs). Steps stop at
    # `steps` or `minutes`, whichever first.
    minutes: float = 240.0
    steps: int = 4988
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 100
    # "constant" after warm-up, or "cosine": decay to 0 over the budget (whichever of `steps` and
    # `minutes` runs out first), the usual way to end a run and settle its weights.
    lr_schedule: str = "constant"
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    num_layers: int = 6
    heads: int = 4
    head_dim: int = 32
    text_width: int = 64
    checkpoint_every: int = 100
    threads: int = 2
    # where the stages run ("auto": cuda if present). Random draws (batch indices, noise, t) come
    # from CPU generators, so a GPU build sees the same batches as a CPU build.
    device: str = "auto"
    workers: int = 1  # processes that render (and tokenize) the training set
    # A diffusers folder written by an earlier build: continue training its transformer and text
    # encoders (fresh optimiser, new renders when the seed differs) and keep its VAE as it is (the
    # VAE stages are skipped, the latent shift/scale kept). Empty: train everything from scratch.
    init_from: str = ""
    # Training captions: "clean" (the world's captions) or "web" (degraded like web alt-text,
    # shapes/web_captions.py, with these two knobs; the other web knobs keep their defaults).
    captions: str = "clean"
    web_drop_object: float = 0.35
    web_wrong_attribute: float = 0.2

    def __post_init__(self) -> None:
        for name in ("train_samples", "batch", "vae_batch", "workers", "threads", "checkpoint_every", "warmup"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.captions not in CAPTION_MODES:
            raise ValueError(f"captions must be one of {CAPTION_MODES}, got {self.captions!r}")
        WebCaptionConfig(drop_object=self.web_drop_object, wrong_attribute=self.web_wrong_attribute)  # validates

    def web_config(self) -> WebCaptionConfig | None:
        """The web-caption degradation to train on, or None for clean captions."""
        if self.captions == "clean":
            return None
        return WebCaptionConfig(drop_object=self.web_drop_object, wrong_attribute=self.web_wrong_attribute)


def _atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def build_components(config: ShapesModelConfig):
    """Randomly initialised components (seeded)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from softrepa.tiny import CLIP_VOCAB_SIZE, clip_tokenizer

    torch.manual_seed(config.seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=64, shift_factor=0.0, scaling_factor=1.0)
    text_config = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=config.text_width,
                                 intermediate_size=4 * config.text_width, num_hidden_layers=3, num_attention_heads=4,
                                 max_position_embeddings=TEXT_MAX_LENGTH, projection_dim=config.text_width,
                                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_act="gelu")
    text_encoder = CLIPTextModelWithProjection(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    width = config.heads * config.head_dim
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4,
                                        num_layers=config.num_layers, attention_head_dim=config.head_dim,
                                        num_attention_heads=config.heads, caption_projection_dim=width,
                                        joint_attention_dim=2 * config.text_width,
                                        pooled_projection_dim=2 * config.text_width, pos_embed_max_size=16)
    tokenizer = clip_tokenizer(model_max_length=TEXT_MAX_LENGTH)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    return dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, transformer=transformer,
                tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler)


def _render_chunk(job: tuple) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Samples ``start .. start + n`` of the training split: pixels (n, 64, 64, 3) uint8, captions
    (web-like when ``web`` is a WebCaptionConfig: same images), and their CLIP token ids
    (n, TEXT_MAX_LENGTH) -- tokenizing once here keeps the tokenizer (tens of ms per batch) out of
    the training loop."""
    from shapes.world import generate_samples
    from softrepa.tiny import clip_tokenizer

    start, n, seed, web = job
    if web is None:
        samples = generate_samples(n, seed=seed, split="train", start=start)
    else:
        samples = generate_web_samples(n, seed, web, split="train", start=start)
    captions = [s["caption"] for s in samples]
    pixels = np.stack([np.asarray(s["image"], dtype=np.uint8) for s in samples])
    return pixels, captions, tokenize(clip_tokenizer(model_max_length=TEXT_MAX_LENGTH), captions)


def tokenize(tokenizer, captions: list[str]) -> np.ndarray:
    """Token ids exactly as ``StableDiffusion3Pipeline`` makes them for its CLIP encoders."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="np").input_ids
    return ids.astype(np.int64)  # (n, TEXT_MAX_LENGTH)


def render_training_set(config: ShapesModelConfig, chunk: int = 2000):
    """(pixels (N, 3, 64, 64) uint8, captions, token ids (N, TEXT_MAX_LENGTH)), rendered by
    ``config.workers`` processes; identical for any worker count (samples are seeded by index)."""
    jobs = [(start, min(chunk, config.train_samples - start), config.seed, config.web_config())
            for start in range(0, config.train_samples, chunk)]
    if config.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(config.workers) as pool:
            parts = list(tqdm(pool.map(_render_chunk, jobs), total=len(jobs), desc="render", dynamic_ncols=True))
    else:
        parts = [_render_chunk(job) for job in tqdm(jobs, desc="render", dynamic_ncols=True)]
    pixels = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    captions = [c for p in parts for c in p[1]]
    ids = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    return pixels, captions, ids


def to_unit(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float() / 127.5 - 1.0  # [-1, 1]


def _train_stage(name: str, module: torch.nn.Module, loss_fn, pixels: torch.Tensor, steps: int, lr: float,
                 batch: int, seed: int, ckpt: Path) -> None:
    """One resumable autoencoder stage: AdamW with a cosine learning rate over ``steps`` batches of
    renders (moved to the module's device); ``loss_fn(x, generator)``; the stage's weights are
    checkpointed atomically at the end."""
    device = next(module.parameters()).device
    if ckpt.exists():
        module.load_state_dict(torch.load(ckpt, weights_only=True, map_location=device)[name])
        return
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    module.train()
    bar = tqdm(range(steps), desc=name, dynamic_ncols=True, mininterval=10)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(0, pixels.shape[0], (batch,), generator=generator)
        loss = loss_fn(to_unit(pixels[index].to(device)), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    module.eval()
    _atomic_torch_save({name: module.state_dict()}, ckpt)


def train_vae(vae, pixels: torch.Tensor, config: ShapesModelConfig, work: Path) -> None:
    """Encoder and decoder together: L2 reconstruction of a posterior sample + a small KL."""

    def loss_fn(x, generator):
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(x.device)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample  # a posterior sample
        return F.mse_loss(recon, x) + config.vae_kl_weight * posterior.kl().mean()

    _train_stage("vae", vae, loss_fn, pixels, config.vae_steps, config.vae_lr, config.vae_batch, config.seed + 1,
                 work / "vae.pt")


def refine_decoder(vae, pixels: torch.Tensor, config: ShapesModelConfig, work: Path) -> None:
    """Train the decoder (and post_quant_conv) further on the frozen encoder's posterior modes.

    The latents the denoiser learns from do not change, so this stage can run beside (or after)
    the denoiser stage: the joint VAE stage is short, and its decoder is what limits sharpness.
    """
    parts = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})

    def loss_fn(x, generator):
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        return F.mse_loss(vae.decode(z).sample, x)

    _train_stage("decoder", parts, loss_fn, pixels, config.decoder_steps, config.decoder_lr, config.vae_batch,
                 config.seed + 4, work / "decoder.pt")


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 256, fit_scaling: bool = True) -> torch.Tensor:
    """Posterior modes (on the VAE's device), normalised with the VAE's shift/scaling. With
    ``fit_scaling`` those are first set SD3-style from these latents, so they are ~N(0, 1); a
    continued build keeps the ones its denoiser was trained with."""
    modes = [vae.encode(to_unit(pixels[i:i + batch].to(vae.device))).latent_dist.mode() for i in
             tqdm(range(0, pixels.shape[0], batch), desc="encode", dynamic_ncols=True)]
    latents = torch.cat(modes)  # (N, 4, 16, 16)
    if fit_scaling:
        vae.register_to_config(shift_factor=latents.mean().item(), scaling_factor=1.0 / latents.std().item())
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def encode_text(pipe, ids: torch.Tensor, max_sequence_length: int = MAX_SEQUENCE_LENGTH):
    """``pipe.encode_prompt`` for pre-tokenized captions (with gradients: the encoders train with the
    transformer): both CLIP encoders read the same ids (the build uses one tokenizer for both),
    their penultimate hidden states are concatenated and zero-padded to the transformer's
    joint width, followed by ``max_sequence_length`` zero tokens standing in for T5; pooled =
    both projections. tests/shapes/test_model.py checks it equals ``encode_prompt``.

    ids: (B, TEXT_MAX_LENGTH) -> prompt_embeds (B, TEXT_MAX_LENGTH + max_sequence_length, D), pooled (B, P)
    """
    hidden, pooled = [], []
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # (B, 64, w)
        pooled.append(out[0])  # text_embeds (B, w)
    clip = torch.cat(hidden, dim=-1)  # (B, 64, 2w)
    width = pipe.transformer.config.joint_attention_dim
    clip = F.pad(clip, (0, width - clip.shape[-1]))
    t5 = clip.new_zeros(clip.shape[0], max_sequence_length, width)
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


def train_denoiser(pipe, latents: torch.Tensor, ids: torch.Tensor, empty_ids: torch.Tensor,
                   config: ShapesModelConfig, work: Path) -> dict:
    """Rectified-flow training of the transformer and both text encoders on (latents, caption ids);
    ``empty_ids`` (the empty caption's ids) replace a caption with probability ``caption_dropout``."""
    device = latents.device
    trainable = torch.nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder,
                                     "text_encoder_2": pipe.text_encoder_2})
    ema = copy.deepcopy(trainable).requires_grad_(False)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=0.01, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(config.seed + 2)
    rng = np.random.default_rng(config.seed + 3)
    step, elapsed, log = 0, 0.0, []
    ckpt = work / "denoiser.pt"
    if ckpt.exists():  # resume exactly: weights, EMA, optimizer, generators, step, time used
        state = torch.load(ckpt, weights_only=True, map_location=device)
        trainable.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        step, elapsed, log = int(state["step"]), float(state["elapsed"]), json.loads(state["log"])
    trainable.train()
    budget = config.minutes * 60.0
    bar = tqdm(total=config.steps, initial=step, desc="denoiser", dynamic_ncols=True)
    while step < config.steps and elapsed < budget:
        start = time.perf_counter()
        lr = config.lr * min(1.0, (step + 1) / config.warmup)
        if config.lr_schedule == "cosine":
            progress = min(1.0, max(step / config.steps, elapsed / budget))
            lr *= 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, latents.shape[0], (config.batch,), generator=generator)
        x0 = latents[index.to(device)]  # (B, 4, 16, 16)
        dropped = torch.from_numpy(rng.random(config.batch) < config.caption_dropout)  # (B,)
        batch_ids = torch.where(dropped[:, None], empty_ids[None], ids[index])  # (B, 64)
        prompt_embeds, pooled = encode_text(pipe, batch_ids.to(device))
        # SD3 training: sigma = sigmoid(n), n ~ N(0, 1) (logit-normal); x_t = (1 - sigma) x0 + sigma eps
        sigma = torch.sigmoid(torch.randn(config.batch, generator=generator)).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        x_t = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * eps
        v = pipe.transformer(hidden_states=x_t, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                             timestep=sigma * 1000).sample
        loss = F.mse_loss(v, eps - x0)  # rectified-flow velocity target
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for p_ema, p in zip(ema.parameters(), trainable.parameters()):
                p_ema.lerp_(p.detach(), 1 - decay)
        step += 1
        elapsed += time.perf_counter() - start
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.1e}")
            log.append({"step": step, "loss": loss.item(), "elapsed_s": round(elapsed, 1)})
        if step % config.checkpoint_every == 0:
            _atomic_torch_save({"model": trainable.state_dict(), "ema": ema.state_dict(),
                                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                "numpy_rng": json.dumps(rng.bit_generator.state), "step": step,
                                "elapsed": elapsed, "log": json.dumps(log)}, ckpt)
    bar.close()
    trainable.load_state_dict(ema.state_dict())  # ship the EMA weights
    trainable.eval()
    return {"steps": step, "minutes": elapsed / 60.0, "final_loss": log[-1]["loss"] if log else None, "log": log}


def build(out: str | os.PathLike, config: ShapesModelConfig, work: str | os.PathLike | None = None) -> Path:
    from diffusers import StableDiffusion3Pipeline

    from softrepa.runtime import resolve_device

    torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the model is fp32; TF32 matmuls are ample for it
        torch.backends.cudnn.allow_tf32 = True
    out = Path(out)
    work = Path(work) if work is not None else out.parent / (out.name + ".build")
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    started = time.time()
    pixels, _, ids = render_training_set(config)
    if config.init_from:
        pipe = load_pipeline(config.init_from, "shapes-sd3", torch.float32, device)  # the kind loads it without T5
    else:
        components = build_components(config)
        pipe = StableDiffusion3Pipeline(text_encoder_3=None, tokenizer_3=None, **components).to(device)
        train_vae(pipe.vae, pixels, config, work)
    empty_ids = torch.from_numpy(tokenize(pipe.tokenizer, [""])[0])
    latents = encode_latents(pipe.vae, pixels, fit_scaling=not config.init_from)  # (N, 4, 16, 16) on the device
    report = train_denoiser(pipe, latents, ids, empty_ids, config, work)
    if not config.init_from:
        refine_decoder(pipe.vae, pixels, config, work)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to("cpu", torch.float16).save_pretrained(tmp)
    load_in_float32(tmp)
    forget_source_paths(tmp)
    write_kind_marker(tmp, "shapes-sd3")  # loaded by any means, the folder says what it is
    report.update(config=dataclasses.asdict(config), build_minutes=(time.time() - started) / 60.0,
                  max_sequence_length=MAX_SEQUENCE_LENGTH, device=str(device),
                  device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    previous = Path(config.init_from) / "build_report.json" if config.init_from else None
    if previous is not None and previous.exists():  # keep the history of a continued model
        report["continued_from"] = json.loads(previous.read_text())
    (tmp / "build_report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def load_in_float32(folder: Path) -> None:
    """Weights are stored in fp16 to keep the folder small, but the model is meant to run in fp32
    on CPU. diffusers loads fp16 weights as fp32 by default; transformers loads the dtype its
    config names, so the text encoders' configs are set to float32: a plain
    ``StableDiffusion3Pipeline.from_pretrained(folder)`` then has one dtype throughout."""
    for name in ("text_encoder", "text_encoder_2"):
        path = folder / name / "config.json"
        config = json.loads(path.read_text())
        config["dtype"] = "float32"
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def forget_source_paths(folder: Path) -> None:
    """Drop the ``_name_or_path`` entries diffusers writes into the configs of a pipeline it loaded
    (a continued build): they name the folder on the machine that built it, nothing a user needs."""
    for path in [folder / "model_index.json", *folder.glob("*/config.json")]:
        config = json.loads(path.read_text())
        if config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def sample_sheet_of_model(model: str | None, out: str | os.PathLike, n: int = 16, seed: int = 1234,
                          tokens: str | None = None, cfg: float | None = None, device: str = "cpu") -> Path:
    """Generate held-out (val split) captions with the model and write them as a captioned grid
    (the layout of ``python -m shapes.world sheet``), image i from seed i."""
    from shapes.world import generate_samples, sample_sheet
    from softrepa.generate import generate_images
    from softrepa.runtime import resolve_device

    pipe = load_pipeline(model, "shapes-sd3", device=resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    samples = generate_samples(n, seed=seed, split="val")
    images = generate_images(pipe, [s["caption"] for s in samples], list(range(n)), kind="shapes-sd3", cfg=cfg,
                             tokens=tokens, progress=True)
    out = Path(out)
    sample_sheet([{**s, "image": image} for s, image in zip(samples, images)]).save(out)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shapes.model", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the shapes-world model from scratch")
    b.add_argument("--out", default="assets/shapes-sd3")
    b.add_argument("--work", default=None, help="checkpoint folder (default: OUT.build); a rerun resumes from it")
    for f in dataclasses.fields(ShapesModelConfig):
        b.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       **({"choices": LR_SCHEDULES} if f.name == "lr_schedule" else {}),
                       **({"choices": CAPTION_MODES} if f.name == "captions" else {}))
    s = sub.add_parser("samples", help="a captioned sheet of the model's images for held-out captions")
    s.add_argument("--model", default=None, help="diffusers folder (default: the bundled model)")
    s.add_argument("--tokens", default=None, help="soft-token file to apply (default: none)")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--seed", type=int, default=1234, help="seed of the held-out captions")
    s.add_argument("--cfg", type=float, default=None, help="default: the kind's")
    s.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "samples":
        print(f"wrote {sample_sheet_of_model(args.model, args.out, args.n, args.seed, args.tokens, args.cfg, args.device)}")
        return 0
    if args.command != "build":
        raise ValueError(f"unknown command {args.command!r}")
    config = ShapesModelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesModelConfig)})
    out = build(args.out, config, args.work)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
