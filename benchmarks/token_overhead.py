"""Forward-time overhead of soft tokens on an SD3-family or FLUX.1 transformer (random weights).

The real widths of ``--kind`` (sd3: 1536 wide, 24 heads of 64; sd3.5-medium: the same with QK
RMS-norm and dual attention in blocks 0-12; sd3.5-large: 2432 wide, 38 heads of 64, QK RMS-norm),
a few blocks (``--blocks``: the real depth does not fit a CPU run), 1024 image tokens (64x64
latents, patch 2) and 333 text tokens (77 CLIP + 256 T5); m = 4 tokens on the first min(5, blocks)
blocks. The position table is sized for these latents (pos_embed_max_size 96, not the published
192 / 384: it only sizes a lookup table). Tokens on and off are timed interleaved (on, off, on,
off, ...) so drift in machine load hits both alike; medians over the repeats.

``--kind flux``: FLUX.1-dev's transformer (3072 wide, 24 heads of 128, guidance embedding) with
``--blocks`` double-stream blocks (default 2) and ``--single-blocks`` single-stream blocks (default
2), 1024 image tokens (64x64 latents packed 2x2) and 512 T5 text tokens, FluxPipeline's ids and
sigma 0.5, guidance 3.5; m = 4 tokens on the first min(5, blocks) double blocks (with their rotary
rows). The real model has 19 + 38 blocks and tokens on 5 of them; here they are on half the
blocks, so the measured overhead overstates the real one.

``--order abba`` flips the order every repeat (on off, off on, ...), so a cost that comes with
running first or second in a pair cancels out of the medians (the default is on, off every time).

``--clock cpu`` times each forward by the process's CPU time (``time.process_time``) instead of
the wall clock: with ``--threads 1`` that is the forward's own compute, which other processes on
a shared machine do not stretch (the default stays the wall clock).

    python benchmarks/token_overhead.py [--kind sd3.5-large|flux] [--blocks 4] [--single-blocks 2] [--repeats 7]
        [--device cpu] [--threads 1] [--clock wall|cpu] [--order on-off|abba]

Ends with ``RESULT overhead_pct=<x> model=random-<kind>-<blocks>x<width> tokens_layers=<L> batch=<b> dtype=<dtype>``
(the model is always this random-weight transformer; ``--blocks`` sets its depth).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel
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
    parser.add_argument("--kind", default="sd3", choices=sorted([*SHAPES, "flux"]),
                        help="whose widths and block variants (flux: FLUX.1-dev's)")
    parser.add_argument("--blocks", type=int, default=None, help="blocks (flux: double-stream); default 4, flux 2")
    parser.add_argument("--single-blocks", type=int, default=2, help="flux only: single-stream blocks")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--order", default="on-off", choices=["on-off", "abba"],
                        help="on-off: each repeat times on then off; abba: the order flips every repeat")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: perf_counter; cpu: process CPU time (CPU device, use with --threads 1)")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        parser.error("--clock cpu times CPU work: use it with --device cpu")
    args.blocks = args.blocks or (2 if args.kind == "flux" else 4)
    return args


def sd3_setup(args, device, dtype):
    """(model, make_inputs, description, model name) for an SD3-family kind."""
    shape = SHAPES[args.kind]
    heads, width = shape["num_attention_heads"], 64 * shape["num_attention_heads"]
    model = SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, out_channels=16,
                                  num_layers=args.blocks, attention_head_dim=64, num_attention_heads=heads,
                                  joint_attention_dim=4096, caption_projection_dim=width,
                                  pooled_projection_dim=2048, pos_embed_max_size=96, qk_norm=shape["qk_norm"],
                                  dual_attention_layers=tuple(k for k in shape["dual_attention_layers"]
                                                              if k < args.blocks)).eval()
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)

    def make_inputs() -> dict:
        return dict(hidden_states=torch.randn(args.batch, 16, 64, 64, device=device, dtype=dtype),  # 1024 patches
                    encoder_hidden_states=torch.randn(args.batch, 333, 4096, device=device, dtype=dtype),
                    pooled_projections=torch.randn(args.batch, 2048, device=device, dtype=dtype),
                    timestep=torch.full((args.batch,), 500.0, device=device))

    name = f"random-{args.kind}-{args.blocks}x{width}"
    described = (f"{args.kind}-shaped transformer, random weights: {args.blocks} blocks x {width} wide, "
                 f"{heads} heads, qk_norm {shape['qk_norm']}, dual attention in {model.config.dual_attention_layers}; "
                 f"1024 image + 333 text tokens")
    return model, make_inputs, described, name


def flux_setup(args, device, dtype):
    """(model, make_inputs, description, model name) for FLUX.1-dev's widths at reduced depth."""
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=args.blocks,
                                   num_single_layers=args.single_blocks, attention_head_dim=128,
                                   num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                   guidance_embeds=True, axes_dims_rope=(16, 56, 56)).eval()
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)

    def make_inputs() -> dict:
        latents = torch.randn(args.batch, 16, 64, 64, device=device, dtype=dtype)  # (B, C, h, w)
        return dict(hidden_states=FluxPipeline._pack_latents(latents, args.batch, 16, 64, 64),  # (B, 1024, 64)
                    encoder_hidden_states=torch.randn(args.batch, 512, 4096, device=device, dtype=dtype),
                    pooled_projections=torch.randn(args.batch, 768, device=device, dtype=dtype),
                    timestep=torch.full((args.batch,), 0.5, device=device, dtype=dtype),  # sigma, as FluxPipeline
                    guidance=torch.full((args.batch,), 3.5, device=device, dtype=torch.float32),
                    txt_ids=torch.zeros(512, 3, device=device, dtype=dtype),
                    img_ids=FluxPipeline._prepare_latent_image_ids(args.batch, 32, 32, device, dtype),
                    return_dict=False)

    name = f"random-flux-{args.blocks}+{args.single_blocks}x3072"
    described = (f"FLUX.1-dev-shaped transformer, random weights: {args.blocks} double + {args.single_blocks} "
                 "single blocks x 3072 wide, 24 heads of 128, guidance embedding; 1024 image + 512 text tokens")
    return model, make_inputs, described, name


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of one attention (B, H, Lq, D) x (B, H, Lk, D): Q K^T and the weighted sum of V."""
    b, h, lq, d = query
    return 2 * b * h * lq * key[-2] * d + 2 * b * h * lq * key[-2] * value[-1]


def counting_flops():
    """torch's FlopCounterMode, with the CPU attention kernel counted too (torch counts only the
    accelerator ones)."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={cpu_attention: _sdpa_flops})


def main(argv=None) -> float:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.kind == "flux":
        model, make_inputs, described, model_name = flux_setup(args, device, dtype)
    else:
        model, make_inputs, described, model_name = sd3_setup(args, device, dtype)
    tokens = new_tokens(model, "flux-dev" if args.kind == "flux" else args.kind, num_layers=min(5, args.blocks))
    inputs = make_inputs()  # after the tokens, as the seeded draws always were
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        model(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    times = {"off": [], "on": []}
    flops = {}
    with torch.no_grad(), attach_tokens(model, tokens) as attached:
        for name, flag in (("on", True), ("off", False)):  # warm-up both paths, counting their FLOPs
            with attached.switch(flag), counting_flops() as counter:
                timed()
            flops[name] = counter.get_total_flops()
        for repeat in tqdm(range(args.repeats), desc="token overhead", leave=False):
            order = (("on", True), ("off", False))
            if args.order == "abba" and repeat % 2:  # on off, off on, ...: a cost of running second cancels
                order = order[::-1]
            for name, flag in order:
                with attached.switch(flag):
                    times[name].append(timed())
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    overhead = 100.0 * (on - off) / off
    print(f"model: {model_name} ({described}), batch {args.batch}, {args.device} {args.dtype}, m=4, "
          f"L={tokens.config.num_layers}" + (", CPU-time clock" if args.clock == "cpu" else ""))
    print(f"| tokens ({model_name}) | median s/forward | min | max |")
    print(f"|---|---|---|---|")
    for name in ("off", "on"):
        print(f"| {name} | {statistics.median(times[name]):.4f} | {min(times[name]):.4f} | {max(times[name]):.4f} |")
    # the minimum is the least load-sensitive statistic on a shared machine; shown beside the median
    print(f"overhead of the fastest runs: {100.0 * (min(times['on']) - min(times['off'])) / min(times['off']):.2f} %")
    print(f"FLOPs per forward (counted, independent of machine load): off {flops['off'] / 1e9:.1f} G, "
          f"on {flops['on'] / 1e9:.1f} G: {100.0 * (flops['on'] - flops['off']) / flops['off']:+.3f} %")
    # each on run with the off run beside it: load that drifts slowly cancels within a pair
    paired = sorted(100.0 * (a - b) / b for a, b in zip(times["on"], times["off"]))
    print(f"paired overhead (each on run vs the off run of its pair): median {statistics.median(paired):.2f} %, "
          f"range {paired[0]:.2f} .. {paired[-1]:.2f} % over {len(paired)} pairs")
    print(f"RESULT overhead_pct={overhead:.2f} model={model_name} tokens_layers={tokens.config.num_layers} "
          f"batch={args.batch} dtype={args.dtype}")
    return overhead


if __name__ == "__main__":
    main()
