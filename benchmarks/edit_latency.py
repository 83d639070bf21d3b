"""Seconds per FlowEdit edit: tokens off, tokens on, and a cached re-edit with a new target.

    python benchmarks/edit_latency.py                     # a random-weight SD3 sized so the transformer dominates
    python benchmarks/edit_latency.py --model assets/shapes-sd3
    python benchmarks/edit_latency.py --layers 8 --heads 8 --head-dim 32 --size 64 --repeats 5

"first edit" uses a fresh editor (cold caches: VAE encode, 4 prompt encodings, batch-4 calls);
"re-edit" edits the same image with a new target prompt on a warm editor (only the new prompt is
encoded, only the target half of the batch runs). Medians over ``--repeats``. The last line is::

    RESULT reedit_ratio=<re-edit / first edit> tokens_overhead_pct=<(tokens on / off - 1) * 100>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

from editing.editor import FlowEditor
from editing.flowedit import FlowEditParams
from softrepa.models import KINDS
from softrepa.tokens import new_tokens

SHAPES_MODEL = REPO / "assets" / "shapes-sd3"


def bench_pipeline(layers: int, heads: int, head_dim: int, size: int, seed: int = 0):
    """The tiny SD3 of ``softrepa.tiny`` with a wider, deeper transformer (text encoders and VAE stay toy)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from softrepa.tiny import clip_tokenizer, tiny_clip_text_encoder, tiny_vae

    torch.manual_seed(seed)
    latent = size // 2  # the tiny VAE downsamples 2x
    transformer = SD3Transformer2DModel(sample_size=latent, patch_size=1, in_channels=4, out_channels=4,
                                        num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                        caption_projection_dim=heads * head_dim, joint_attention_dim=64,
                                        pooled_projection_dim=64, pos_embed_max_size=max(latent, 32)).eval()
    tokenizer = clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 1, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=tiny_clip_text_encoder(seed + 2), tokenizer=tokenizer,
        text_encoder_2=tiny_clip_text_encoder(seed + 3), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help=f"diffusers SD3 folder (default: {SHAPES_MODEL} when present, "
                                                      "else a random-weight model built from the flags below)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n-max", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="what RESULT uses; auto: process CPU time on a 1-thread CPU run (steady on a shared "
                             "machine), wall time otherwise")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model = args.model or (str(SHAPES_MODEL) if SHAPES_MODEL.is_dir() else None)
    if model is not None:
        from softrepa.models import load_pipeline

        pipe = load_pipeline(model, "shapes-sd3", torch.float32, device)
        described = model
    else:
        pipe = bench_pipeline(args.layers, args.heads, args.head_dim, args.size).to(device)
        described = (f"random SD3: {args.layers} joint blocks, width {args.heads * args.head_dim}, "
                     f"2 toy CLIPs, 2x toy VAE")
    params = FlowEditParams(steps=args.steps, n_max=args.n_max, src_cfg=3.5, tar_cfg=13.5, seed=42)
    kind = "shapes-sd3" if model is not None else "sd3"
    text_length = KINDS[kind].max_sequence_length
    tokens = new_tokens(pipe, kind, num_layers=min(5, len(pipe.transformer.transformer_blocks) - 1))
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(args.size, args.size, 3) * 255).astype(np.uint8))
    source = "a red square on a gray background"

    in_transformer = [0.0]

    def start_clock(*_):
        in_transformer.append(-time.perf_counter())

    def stop_clock(*_):
        in_transformer[0] += time.perf_counter() + in_transformer.pop()

    pipe.transformer.register_forward_pre_hook(start_clock)
    pipe.transformer.register_forward_hook(stop_clock)

    def first_edit(use_tokens: bool, target: str) -> tuple[float, float]:
        editor = FlowEditor(pipe, tokens if use_tokens else None, max_sequence_length=text_length)  # cold caches
        try:
            return timed(lambda: editor.edit(image, source, target, params, use_tokens=use_tokens))
        finally:
            editor.close()

    first_edit(False, "warm-up")  # first calls allocate and pick kernels
    off, on, reedit, share = [], [], [], []
    warm = FlowEditor(pipe, max_sequence_length=text_length)
    warm.edit(image, source, "a blue circle", params, use_tokens=False)
    for r in range(args.repeats):
        in_transformer[0] = 0.0
        off.append(first_edit(False, f"a blue circle {r}"))
        share.append(in_transformer[0] / off[-1][0])
        on.append(first_edit(True, f"a blue circle {r}"))
        reedit.append(timed(lambda: warm.edit(image, source, f"a green triangle {r}", params, use_tokens=False)))

    clock = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    rows = [("first edit, tokens off", off), ("first edit, tokens on", on), ("cached re-edit, new target", reedit)]
    print(f"model: {described}; image {image.size[0]}x{image.size[1]}; T={params.steps} n_max={params.n_max}; "
          f"{args.repeats} repeats, {torch.get_num_threads()} thread(s) on {device}")
    print(f"{'case':<28} {'wall median s':>14} {'wall min s':>11} {'cpu median s':>13}")
    for name, values in rows:
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(f"{name:<28} {statistics.median(walls):>14.3f} {min(walls):>11.3f} {statistics.median(cpus):>13.3f}")
    print(f"transformer share of a first edit (tokens off, wall): {statistics.median(share) * 100:.0f}%")
    pick = 0 if clock == "wall" else 1
    first, with_tokens, again = (statistics.median(v[pick] for v in values) for _, values in rows)
    print(f"ratios below use {clock}-time medians")
    print(f"RESULT reedit_ratio={again / first:.3f} tokens_overhead_pct={(with_tokens / first - 1) * 100:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
