"""Forward-time overhead of soft tokens on an SD3-family transformer (random weights).

The real widths of ``--kind`` (sd3: 1536 wide, 24 heads of 64; sd3.5-medium: the same with QK
RMS-norm and dual attention in blocks 0-12; sd3.5-large: 2432 wide, 38 heads of 64, QK RMS-norm),
a few blocks (``--blocks``: the real depth does not fit a CPU run), 1024 image tokens (64x64
latents, patch 2) and 333 text tokens (77 CLIP + 256 T5); m = 4 tokens on the first min(5, blocks)
blocks. The position table is sized for these latents (pos_embed_max_size 96, not the published
192 / 384: it only sizes a lookup table). Tokens on and off are timed interleaved (on, off, on,
off, ...) so drift in machine load hits both alike; medians over the repeats.

    python benchmarks/token_overhead.py [--kind sd3.5-large] [--blocks 4] [--repeats 7] [--device cpu] [--threads 1]

Ends with ``RESULT overhead_pct=<x> model=random-<kind>-<blocks>x<width> tokens_layers=<L> batch=<b> dtype=<dtype>``
(the model is always this random-weight transformer; ``--blocks`` sets its depth).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import SD3Transformer2DModel
from tqdm.auto import tqdm

from softrepa.hooks import attach_tokens
from softrepa.tokens import new_tokens


# the published transformer configs (softrepa.models, docs/REFERENCE): heads of 64, width = heads x 64
SHAPES = {
    "sd3": dict(num_attention_heads=24, qk_norm=None, dual_attention_layers=()),
    "sd3.5-medium": dict(num_attention_heads=24, qk_norm="rms_norm", dual_attention_layers=tuple(range(13))),
    "sd3.5-large": dict(num_attention_heads=38, qk_norm="rms_norm", dual_attention_layers=()),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="sd3", choices=sorted(SHAPES), help="whose widths and block variants")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv=None) -> float:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = SHAPES[args.kind]
    heads, width = shape["num_attention_heads"], 64 * shape["num_attention_heads"]
    model = SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, out_channels=16,
                                  num_layers=args.blocks, attention_head_dim=64, num_attention_heads=heads,
                                  joint_attention_dim=4096, caption_projection_dim=width,
                                  pooled_projection_dim=2048, pos_embed_max_size=96, qk_norm=shape["qk_norm"],
                                  dual_attention_layers=tuple(k for k in shape["dual_attention_layers"]
                                                              if k < args.blocks)).eval()
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)
    tokens = new_tokens(model, args.kind, num_layers=min(5, args.blocks))
    inputs = dict(hidden_states=torch.randn(args.batch, 16, 64, 64, device=device, dtype=dtype),  # 1024 patches
                  encoder_hidden_states=torch.randn(args.batch, 333, 4096, device=device, dtype=dtype),
                  pooled_projections=torch.randn(args.batch, 2048, device=device, dtype=dtype),
                  timestep=torch.full((args.batch,), 500.0, device=device))

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {"off": [], "on": []}
    with torch.no_grad(), attach_tokens(model, tokens) as attached:
        for flag in (True, False):  # warm-up both paths
            with attached.switch(flag):
                timed()
        for _ in tqdm(range(args.repeats), desc="token overhead", leave=False):
            for name, flag in (("on", True), ("off", False)):
                with attached.switch(flag):
                    times[name].append(timed())
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    overhead = 100.0 * (on - off) / off
    model_name = f"random-{args.kind}-{args.blocks}x{width}"
    print(f"model: {model_name} ({args.kind}-shaped transformer, random weights: {args.blocks} blocks x {width} wide, "
          f"{heads} heads, qk_norm {shape['qk_norm']}, dual attention in {model.config.dual_attention_layers}; "
          f"1024 image + 333 text tokens), batch {args.batch}, {args.device} {args.dtype}, m=4, "
          f"L={tokens.config.num_layers}")
    print(f"| tokens ({model_name}) | median s/forward | min | max |")
    print(f"|---|---|---|---|")
    for name in ("off", "on"):
        print(f"| {name} | {statistics.median(times[name]):.4f} | {min(times[name]):.4f} | {max(times[name]):.4f} |")
    # the minimum is the least load-sensitive statistic on a shared machine; shown beside the median
    print(f"overhead of the fastest runs: {100.0 * (min(times['on']) - min(times['off'])) / min(times['off']):.2f} %")
    print(f"RESULT overhead_pct={overhead:.2f} model={model_name} tokens_layers={tokens.config.num_layers} "
          f"batch={args.batch} dtype={args.dtype}")
    return overhead


if __name__ == "__main__":
    main()
