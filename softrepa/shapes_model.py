"""Build the bundled shapes-world model: a real SD3-architecture pipeline trained from scratch.

    python -m softrepa.shapes_model build --out assets/shapes-sd3 [--minutes 40] [--seed 0]

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
    # denoiser stage (transformer + both text encoders)
    # the shipped model: 4988 steps (80 min of step time on a shared 2-core CPU); a time budget
    # as a safety net, steps stop at whichever comes first
    minutes: float = 240.0
    steps: int = 4988
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 100
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    num_layers: int = 6
    heads: int = 4
    head_dim: int = 32
    text_width: int = 64
    checkpoint_every: int = 100
    threads: int = 2


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build_components(config: ShapesModelConfig):
    """Randomly initialised components (seeded)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from softrepa.testing import CLIP_VOCAB_SIZE, clip_tokenizer

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


def images_to_tensor(images) -> torch.Tensor:
    array = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # (N, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8


def to_unit(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float() / 127.5 - 1.0  # [-1, 1]


def _train_stage(name: str, module: torch.nn.Module, loss_fn, pixels: torch.Tensor, steps: int, lr: float,
                 batch: int, seed: int, ckpt: Path) -> None:
    """One resumable autoencoder stage: AdamW with a cosine learning rate over ``steps`` batches of
    renders; ``loss_fn(x, generator)``; the stage's weights are checkpointed atomically at the end."""
    if ckpt.exists():
        module.load_state_dict(torch.load(ckpt, weights_only=True)[name])
        return
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    module.train()
    bar = tqdm(range(steps), desc=name, dynamic_ncols=True, mininterval=10)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(0, pixels.shape[0], (batch,), generator=generator)
        loss = loss_fn(to_unit(pixels[index]), generator)
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
        recon = vae.decode(posterior.sample(generator=generator)).sample
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
def encode_latents(vae, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior modes, then set SD3-style shift/scaling so latents are ~N(0, 1)."""
    modes = [vae.encode(to_unit(pixels[i:i + batch])).latent_dist.mode() for i in
             tqdm(range(0, pixels.shape[0], batch), desc="encode", dynamic_ncols=True)]
    latents = torch.cat(modes)  # (N, 4, 16, 16)
    shift, scale = latents.mean().item(), 1.0 / latents.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return (latents - shift) * scale


def encode_text(pipe, captions: list[str]):
    """The pipeline's own prompt encoding (with gradients: the encoders train with the transformer)."""
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None,
                                                     device=torch.device("cpu"), do_classifier_free_guidance=False,
                                                     max_sequence_length=MAX_SEQUENCE_LENGTH)
    return prompt_embeds, pooled


def train_denoiser(pipe, latents: torch.Tensor, captions: list[str], config: ShapesModelConfig, work: Path) -> dict:
    trainable = torch.nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder,
                                     "text_encoder_2": pipe.text_encoder_2})
    ema = copy.deepcopy(trainable).requires_grad_(False)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=config.lr, weight_decay=0.01, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(config.seed + 2)
    rng = np.random.default_rng(config.seed + 3)
    step, elapsed, log = 0, 0.0, []
    ckpt = work / "denoiser.pt"
    if ckpt.exists():  # resume exactly: weights, EMA, optimizer, generators, step, time used
        state = torch.load(ckpt, weights_only=True)
        trainable.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        step, elapsed, log = int(state["step"]), float(state["elapsed"]), json.loads(state["log"])
    trainable.train()
    budget = config.minutes * 60.0
    bar = tqdm(total=config.steps, initial=step, desc="denoiser", dynamic_ncols=True)
    while step < config.steps and elapsed < budget:
        start = time.perf_counter()
        lr = config.lr * min(1.0, (step + 1) / config.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, latents.shape[0], (config.batch,), generator=generator)
        x0 = latents[index]  # (B, 4, 16, 16)
        batch_captions = ["" if rng.random() < config.caption_dropout else captions[i] for i in index.tolist()]
        prompt_embeds, pooled = encode_text(pipe, batch_captions)
        # SD3 training: sigma = sigmoid(n), n ~ N(0, 1) (logit-normal); x_t = (1 - sigma) x0 + sigma eps
        sigma = torch.sigmoid(torch.randn(config.batch, generator=generator))
        eps = torch.randn(x0.shape, generator=generator)
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

    from data_prep.shapes import generate_samples

    torch.set_num_threads(config.threads)
    out = Path(out)
    work = Path(work) if work is not None else out.parent / (out.name + ".build")
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    started = time.time()
    samples = generate_samples(config.train_samples, seed=config.seed, split="train")
    pixels = images_to_tensor([s["image"] for s in samples])
    captions = [s["caption"] for s in samples]
    components = build_components(config)
    train_vae(components["vae"], pixels, config, work)
    latents = encode_latents(components["vae"], pixels)
    pipe = StableDiffusion3Pipeline(text_encoder_3=None, tokenizer_3=None, **components)
    report = train_denoiser(pipe, latents, captions, config, work)
    refine_decoder(components["vae"], pixels, config, work)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(tmp)
    report.update(config=dataclasses.asdict(config), build_minutes=(time.time() - started) / 60.0,
                  max_sequence_length=MAX_SEQUENCE_LENGTH)
    (tmp / "build_report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m softrepa.shapes_model", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the shapes-world model from scratch")
    b.add_argument("--out", default="assets/shapes-sd3")
    b.add_argument("--work", default=None, help="checkpoint folder (default: OUT.build); a rerun resumes from it")
    for f in dataclasses.fields(ShapesModelConfig):
        b.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command != "build":
        raise ValueError(f"unknown command {args.command!r}")
    config = ShapesModelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesModelConfig)})
    out = build(args.out, config, args.work)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
