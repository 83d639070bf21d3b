"""Time, memory and precision of FlowEdit and SoftREPA training at SD3's true dimensions.

Random-weight components built from the published configs (same cost as the real weights, not the
same images; nothing is downloaded): the MM-DiT transformer, CLIP-L/14 and OpenCLIP bigG/14 text
encoders, the T5 v1.1 XXL encoder, the 16-channel VAE. The CLIP tokenizer is the real one (built
offline); T5 reads the same token ids (its embedding table is widened to CLIP's 49,408 entries,
0.3 % more T5 weights than the real 32,128).

Per resolution: the seconds of one edit at the kind's preset (tokens off and on: m 4 on the first 7
blocks, the paper's SD3 setting), the floor (n_max x one batched transformer call of 4, timed in
the same run) and edit / floor, a cached re-edit (new target: batch 2), the peak accelerator memory
of an edit; then one SoftREPA training step with chunked pairs at batch 4 and 16 (seconds, peak).

    python benchmarks/real_scale.py --device cuda --dtype bfloat16                 # SD3-medium, 512 and 1024 px
    python benchmarks/real_scale.py --device cuda --dtype bfloat16 --kind sd3.5-large --resolutions 1024
    python benchmarks/real_scale.py --device cuda --dtype float16 --offload model --no-t5   # low-memory modes
    python benchmarks/real_scale.py --scale tiny                                     # the same code on a CPU

Memory is ``torch.cuda.max_memory_allocated`` on CUDA (reset before each measurement); on the CPU the
process's resident-set high-water mark above the loaded model (``/proc/self/status``, Linux). Ends with
``RESULT edit_floor_ratio=.. tokens_overhead_pct=.. peak_gb_edit=.. peak_gb_train_b16=.. kind=.. scale=..
device=.. dtype=.. resolution=..`` (the largest resolution).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editing.editor import FlowEditor
from editing.flowedit import encode_prompt
from editing.presets import get_preset
from softrepa.models import MemoryOptions, execution_device
from softrepa.runtime import DTYPES, resolve_device
from softrepa.tokens import new_tokens

# The published transformer configs (REFERENCE.md section 8): blocks, heads x 64 = width, position grid.
TRANSFORMERS = {"sd3-medium": dict(num_layers=24, num_attention_heads=24, pos_embed_max_size=192),
                "sd3.5-large": dict(num_layers=38, num_attention_heads=38, pos_embed_max_size=192, qk_norm="rms_norm")}
TINY = dict(num_layers=2, num_attention_heads=2, pos_embed_max_size=32)


@dataclass(frozen=True)
class Widths:
    """The encoder and VAE sizes of one scale."""

    clip_l: tuple[int, int, int]  # hidden, layers, heads
    clip_g: tuple[int, int, int]
    t5: tuple[int, int, int, int]  # d_model, layers, heads, d_ff
    vae_blocks: tuple[int, ...]
    head_dim: int


REAL = Widths(clip_l=(768, 12, 12), clip_g=(1280, 32, 20), t5=(4096, 24, 64, 10240), vae_blocks=(128, 256, 512, 512),
              head_dim=64)
SMALL = Widths(clip_l=(32, 1, 2), clip_g=(32, 1, 2), t5=(64, 1, 2, 128), vae_blocks=(8, 8, 8, 8), head_dim=16)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=sorted(TRANSFORMERS), default="sd3-medium")
    parser.add_argument("--scale", choices=("real", "tiny"), default="real", help="tiny: reduced widths, for a CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, help="default: 512 1024 (tiny: 64)")
    parser.add_argument("--no-t5", action="store_true", help="build the pipeline without T5")
    parser.add_argument("--offload", choices=("none", "model"), default="none", help="model CPU offload (CUDA)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--pair-chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    args.resolutions = args.resolutions or ([64] if args.scale == "tiny" else [512, 1024])
    return args


def build_pipeline(kind: str, scale: str, with_t5: bool):
    """A StableDiffusion3Pipeline of random weights at the published (or tiny) sizes."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from softrepa.tiny import CLIP_VOCAB_SIZE, clip_tokenizer

    widths = REAL if scale == "real" else SMALL
    shape = TRANSFORMERS[kind] if scale == "real" else TINY
    width = shape["num_attention_heads"] * widths.head_dim
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                        attention_head_dim=widths.head_dim, joint_attention_dim=widths.t5[0],
                                        caption_projection_dim=width, pooled_projection_dim=widths.clip_l[0] + widths.clip_g[0],
                                        **shape)

    def clip(hidden: int, layers: int, heads: int):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, projection_dim=hidden, max_position_embeddings=77, hidden_act="gelu"))

    t5 = None
    if with_t5:
        d_model, layers, heads, d_ff = widths.t5
        t5 = T5EncoderModel(T5Config(vocab_size=CLIP_VOCAB_SIZE, d_model=d_model, num_layers=layers, num_heads=heads,
                                     d_ff=d_ff, d_kv=d_model // heads, feed_forward_proj="gated-gelu"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=widths.vae_blocks,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, norm_num_groups=min(32, widths.vae_blocks[0]), shift_factor=0.0609,
                        scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False)
    tokenizer = clip_tokenizer()
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=clip(*widths.clip_l), tokenizer=tokenizer,
                                    text_encoder_2=clip(*widths.clip_g), tokenizer_2=tokenizer,
                                    text_encoder_3=t5, tokenizer_3=tokenizer if with_t5 else None)


class Meter:
    """Seconds and peak memory (GB) of a block: CUDA's allocator peak, or the CPU's RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn) -> tuple[float, float]:
        """(seconds, peak GB) of ``fn()``: on CUDA the allocator's peak (weights included), on the CPU
        the process's resident-set peak (weights included)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        seconds = time.perf_counter() - start
        if self.device.type == "cuda":
            return seconds, torch.cuda.max_memory_allocated(self.device) / 2**30
        return seconds, _status_kb("VmHWM") / 2**20


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def token_layers(pipe) -> int:
    """The paper's SD3 setting, m 4 on the first 7 blocks (fewer on a tiny model)."""
    return min(7, len(pipe.transformer.transformer_blocks) - 1)


def measure_edits(pipe, resolution: int, meter: Meter, repeats: int) -> dict:
    """Edit seconds (tokens off / on), the floor, the cached re-edit, and the edit's peak memory."""
    params = get_preset("sd3").params  # T 50, n_max 33: FlowEdit's SD3 defaults
    tokens = new_tokens(pipe, "sd3", num_layers=token_layers(pipe))
    image = Image.fromarray((np.random.RandomState(0).rand(resolution, resolution, 3) * 255).astype(np.uint8))
    source, target = "a photo of a red car parked on a street", "a photo of a blue car parked on a street"
    editor = FlowEditor(pipe, tokens, max_side=resolution)
    try:
        editor.edit(image, source, "warm-up", params.replace(n_max=2), use_tokens=False)  # kernels, allocator
        device = execution_device(pipe)
        latent = torch.randn(4, 16, resolution // 8, resolution // 8, device=device, dtype=pipe.transformer.dtype)
        text = encode_prompt(pipe, source)
        embeds = text.embeds.expand(4, -1, -1).to(device, pipe.transformer.dtype)
        pooled = text.pooled.expand(4, -1).to(device, pipe.transformer.dtype)
        timestep = torch.full((4,), 500.0, device=device)

        def one_call():
            with torch.no_grad():
                pipe.transformer(hidden_states=latent, timestep=timestep, encoder_hidden_states=embeds,
                                 pooled_projections=pooled, return_dict=False)

        results: dict[str, list[float]] = {"off": [], "on": [], "reedit": [], "call": [], "peak": []}
        for r in range(repeats):
            editor.clear_cache()
            seconds, peak = meter.run(lambda: editor.edit(image, source, target, params, use_tokens=False))
            results["off"].append(seconds)
            results["peak"].append(peak)
            editor.clear_cache()
            results["on"].append(meter.run(lambda: editor.edit(image, source, target, params, use_tokens=True))[0])
            results["reedit"].append(meter.run(lambda: editor.edit(image, source, f"{target}, at night {r}", params,
                                                                   use_tokens=True))[0])
            results["call"].append(meter.run(one_call)[0])
    finally:
        editor.close()
    row = {name: statistics.median(values) for name, values in results.items()}
    row["peak"] = max(results["peak"])
    row["floor"] = params.n_max * row["call"]
    return row


def measure_training(pipe, batch: int, resolution: int, pair_chunk: int, meter: Meter) -> tuple[float, float]:
    """(seconds, peak GB) of one SoftREPA step with chunked pairs (forward + backward of B^2 pairs)."""
    from softrepa.hooks import attach_tokens
    from softrepa.loss import DiffusionObjective, LossConfig
    from softrepa.pairs import PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward

    transformer, device = pipe.transformer, execution_device(pipe)
    tokens = new_tokens(pipe, "sd3", num_layers=token_layers(pipe))
    objective, config = DiffusionObjective("flow"), LossConfig(tau=1.0)
    generator = torch.Generator(device="cpu").manual_seed(0)
    side = resolution // 8
    text_dim, pooled_dim = transformer.config.joint_attention_dim, transformer.config.pooled_projection_dim
    batch_ = PairBatch(torch.randn(batch, 16, side, side, generator=generator).to(device),
                       {"prompt_embeds": torch.randn(batch, 333, text_dim, generator=generator).to(device),
                        "pooled_prompt_embeds": torch.randn(batch, pooled_dim, generator=generator).to(device)})
    noise = draw_noise(batch_.latents, objective, generator)
    with attach_tokens(transformer, tokens):
        def step():  # the frozen model in its dtype, the tokens float32 (PairScorer casts per call)
            tokens.zero_grad(set_to_none=True)
            pair_loss_backward(PairScorer(transformer, "mmdit", objective, batch_, noise),
                               make_loss_fn(config, noise, None), pair_chunk)

        step()  # warm-up
        return meter.run(step)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.scale == "tiny" and device.type == "cpu":
        torch.set_num_threads(1)
    pipe = build_pipeline(args.kind, args.scale, with_t5=not args.no_t5)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    for module in pipe.components.values():  # frozen, as in editing and training: no weight gradients
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    if args.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    meter = Meter(device)
    mode = ", ".join(m for m in ("no T5" if args.no_t5 else "", f"{args.offload} offload" if args.offload != "none"
                                 else "") if m) or "all on the device"
    name = f"{args.kind} ({args.scale} scale)"
    print(f"model: {name}, random weights; {device} {str(dtype).replace('torch.', '')}; {mode}; MemoryOptions: "
          f"{MemoryOptions(offload=args.offload)}")
    print("| resolution | edit off s | edit on s | floor s | edit / floor | tokens % | re-edit s | peak GB (edit) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for resolution in args.resolutions:
        row = measure_edits(pipe, resolution, meter, args.repeats)
        rows[resolution] = row
        print(f"| {resolution} | {row['off']:.2f} | {row['on']:.2f} | {row['floor']:.2f} | {row['off'] / row['floor']:.3f} "
              f"| {(row['on'] / row['off'] - 1) * 100:.1f} | {row['reedit']:.2f} | {row['peak']:.2f} |")
    resolution = max(args.resolutions)
    train = {}
    batches = args.train_batches if args.offload == "none" else []  # training does not run offloaded
    print(f"\n| training step at {resolution} px (pair chunk {args.pair_chunk}) | seconds | peak GB |\n|---|---|---|")
    for batch in batches:
        train[batch] = measure_training(pipe, batch, resolution, args.pair_chunk, meter)
        print(f"| batch {batch} ({batch * batch} pairs) | {train[batch][0]:.2f} | {train[batch][1]:.2f} |")
    row, last_batch = rows[resolution], max(args.train_batches)
    train_peak = f"{train[last_batch][1]:.2f}" if last_batch in train else "not-measured"
    print(f"RESULT edit_floor_ratio={row['off'] / row['floor']:.3f} tokens_overhead_pct={(row['on'] / row['off'] - 1) * 100:.1f} "
          f"peak_gb_edit={row['peak']:.2f} peak_gb_train_b{last_batch}={train_peak} kind={args.kind} "
          f"scale={args.scale} device={device.type} dtype={str(dtype).replace('torch.', '')} resolution={resolution}")
    return {"edits": rows, "train": train}


if __name__ == "__main__":
    main()
