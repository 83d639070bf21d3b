"""Time, memory and precision of FlowEdit and SoftREPA training at SD3's true dimensions.

Random-weight components built from the published configs by ``softrepa.random_models`` (same cost as
the real weights, not the same images; nothing is downloaded): the MM-DiT transformer, CLIP-L/14 and
OpenCLIP bigG/14 text encoders, the T5 v1.1 XXL encoder, the 16-channel VAE. The CLIP tokenizer is the real one (built
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

import numpy as np
import torch
from PIL import Image

from editing.editor import FlowEditor
from editing.flowedit import encode_prompt
from editing.presets import get_preset
from softrepa.models import MemoryOptions, execution_device
from softrepa.random_models import MODELS, Meter, build_pipeline, measure_training, token_layers
from softrepa.runtime import DTYPES, resolve_device
from softrepa.tokens import new_tokens

SD3_MODELS = sorted(name for name, model in MODELS.items() if model.arch == "mmdit")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=SD3_MODELS, default="sd3-medium")
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
        train[batch] = measure_training(pipe, MODELS[args.kind].kind, batch, resolution, args.pair_chunk, meter)
        print(f"| batch {batch} ({batch * batch} pairs) | {train[batch][0]:.2f} | {train[batch][1]:.2f} |")
    row, last_batch = rows[resolution], max(args.train_batches)
    train_peak = f"{train[last_batch][1]:.2f}" if last_batch in train else "not-measured"
    print(f"RESULT edit_floor_ratio={row['off'] / row['floor']:.3f} tokens_overhead_pct={(row['on'] / row['off'] - 1) * 100:.1f} "
          f"peak_gb_edit={row['peak']:.2f} peak_gb_train_b{last_batch}={train_peak} kind={args.kind} "
          f"scale={args.scale} device={device.type} dtype={str(dtype).replace('torch.', '')} resolution={resolution}")
    return {"edits": rows, "train": train}


if __name__ == "__main__":
    main()
