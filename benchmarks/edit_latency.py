"""Seconds per FlowEdit edit: tokens off, tokens on, a cached re-edit with a new target, and 4 candidates.

    python benchmarks/edit_latency.py                      # the bundled shapes model when built, else random-sd3
    python benchmarks/edit_latency.py --model random-sd3   # random-weight SD3 sized so the transformer dominates
    python benchmarks/edit_latency.py --model random-sd3 --layers 8 --heads 8 --head-dim 32 --size 64 --repeats 5
    python benchmarks/edit_latency.py --model FOLDER       # another diffusers SD3 folder, loaded like the shapes model

Models (``--model``):

* ``shapes``: the bundled shapes-world model (assets/shapes-sd3, loaded with ``softrepa.models.load_pipeline``).
  Its transformer sees few image tokens, so costs paid once per call take most of an edit: the batch-2
  re-edit costs nearly what the batch-4 first edit does, and the ratios say little about SD3 itself.
* ``random-sd3``: the tiny SD3 of ``softrepa.tiny`` (toy CLIPs and VAE) with a random-weight transformer
  of ``--layers`` joint blocks x ``--heads * --head-dim`` wide (default 4 x 128) at ``--size`` px: the
  transformer's work grows with the batch, as on SD3.

"first edit" uses a fresh editor (cold caches: VAE encode, 4 prompt encodings, batch-4 calls);
"re-edit" edits the same image with a new target prompt on a warm editor (only the new prompt is
encoded, only the target half of the batch runs). "4 candidates" edits with 4 new seeds in one
batched run (``FlowEditor.edit_candidates``: batch 16 per step), "4 single edits" the same 4 seeds
one after another (batch 4 each), both on the warm editor. Medians over ``--repeats``. The last line
is::

    RESULT reedit_ratio=<re-edit / first edit> tokens_overhead_pct=<(tokens on / off - 1) * 100>
           candidates4_vs_single4=<4 candidates / 4 single edits>
           transformer_candidates_vs_single=<the same, transformer wall seconds only>
           model=<shapes-sd3 | random-sd3-<layers>x<width> | folder> size=<px> steps=<T> n_max=<n>
           repeats=<r> transformer_pct=<transformer share of a first edit, %> clock=<cpu | wall>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from editing.editor import FlowEditor
from editing.flowedit import FlowEditParams
from softrepa.models import KINDS, load_pipeline, model_label
from softrepa.tokens import new_tokens

SHAPES_KIND = "shapes-sd3"
SHAPES_MODEL = Path(KINDS[SHAPES_KIND].hub_id)  # the bundled folder
MODELS = ("shapes", "random-sd3")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = "shapes" if SHAPES_MODEL.is_dir() else "random-sd3"
    parser.add_argument("--model", default=default,
                        help=f"{' | '.join(MODELS)} | a diffusers SD3 folder (default: {default}; shapes when "
                             f"{SHAPES_MODEL} is built)")
    parser.add_argument("--layers", type=int, default=4, help="random-sd3: joint blocks")
    parser.add_argument("--heads", type=int, default=4, help="random-sd3: attention heads")
    parser.add_argument("--head-dim", type=int, default=32, help="random-sd3: width per head")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n-max", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="what RESULT uses; auto: process CPU time on a 1-thread CPU run (steady on a shared "
                             "machine), wall time otherwise")
    return parser.parse_args(argv)


@dataclass
class BenchModel:
    pipe: object
    kind: str  # the model kind whose text length the editor uses
    name: str  # for RESULT: no spaces
    described: str  # for the table header


def random_sd3_pipeline(layers: int, heads: int, head_dim: int, size: int, seed: int = 0):
    """``softrepa.tiny.tiny_sd3_pipeline`` with a wider, deeper random transformer (text encoders and VAE stay toy)."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from softrepa.tiny import tiny_sd3_pipeline

    torch.manual_seed(seed)
    latent = size // 2  # the tiny VAE downsamples 2x
    transformer = SD3Transformer2DModel(sample_size=latent, patch_size=1, in_channels=4, out_channels=4,
                                        num_layers=layers, attention_head_dim=head_dim, num_attention_heads=heads,
                                        caption_projection_dim=heads * head_dim, joint_attention_dim=64,
                                        pooled_projection_dim=64, pos_embed_max_size=max(latent, 32)).eval()
    return StableDiffusion3Pipeline(**{**tiny_sd3_pipeline(seed).components, "transformer": transformer})


def build_model(args: argparse.Namespace, device: torch.device) -> BenchModel:
    if args.model == "random-sd3":
        width = args.heads * args.head_dim
        pipe = random_sd3_pipeline(args.layers, args.heads, args.head_dim, args.size).to(device)
        return BenchModel(pipe, "sd3", f"random-sd3-{args.layers}x{width}",
                          f"random-sd3 (random weights: {args.layers} joint blocks x {width} wide, "
                          "2 toy CLIPs, 2x toy VAE)")
    folder = str(SHAPES_MODEL) if args.model == "shapes" else args.model
    pipe = load_pipeline(folder, SHAPES_KIND, torch.float32, device)
    blocks = pipe.transformer.config.num_layers
    width = pipe.transformer.config.caption_projection_dim
    name = model_label(folder)
    return BenchModel(pipe, SHAPES_KIND, name, f"{name} ({folder}: {blocks} joint blocks x {width} wide)")


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


class TransformerClock:
    """Wall seconds spent inside the transformer's forward calls since the last ``reset``."""

    def __init__(self, transformer: torch.nn.Module):
        self.total, self._started = 0.0, []
        transformer.register_forward_pre_hook(lambda *_: self._started.append(time.perf_counter()))
        transformer.register_forward_hook(self._stop)

    def _stop(self, *_) -> None:
        self.total += time.perf_counter() - self._started.pop()

    def reset(self) -> None:
        self.total = 0.0


def measure(model: BenchModel, args: argparse.Namespace) -> tuple[dict[str, list], list[float], dict[str, list]]:
    """Per case, (wall, cpu) seconds of each repeat; the transformer's share of each first edit; the
    transformer's wall seconds in the 4 single edits and in the 4 candidates of each repeat."""
    pipe, length = model.pipe, KINDS[model.kind].max_sequence_length
    params = FlowEditParams(steps=args.steps, n_max=args.n_max, src_cfg=3.5, tar_cfg=13.5, seed=42)
    tokens = new_tokens(pipe, model.kind, num_layers=min(5, len(pipe.transformer.transformer_blocks) - 1))
    image = Image.fromarray((np.random.RandomState(0).rand(args.size, args.size, 3) * 255).astype(np.uint8))
    source = "a red square on a gray background"
    clock = TransformerClock(pipe.transformer)

    def first_edit(use_tokens: bool, target: str) -> tuple[float, float]:
        editor = FlowEditor(pipe, tokens if use_tokens else None, max_sequence_length=length)  # cold caches
        try:
            return timed(lambda: editor.edit(image, source, target, params, use_tokens=use_tokens))
        finally:
            editor.close()

    first_edit(False, "warm-up")  # first calls allocate and pick kernels
    cases: dict[str, list] = {"first edit, tokens off": [], "first edit, tokens on": [],
                              "cached re-edit, new target": [], "4 single edits (4 seeds)": [],
                              "4 candidates, one batched run": []}
    off, on, reedit, singles, candidates = cases.values()
    share = []
    inside = {"singles": [], "candidates": []}  # transformer wall seconds: where a batching cost would sit
    warm = FlowEditor(pipe, max_sequence_length=length)
    warm.edit(image, source, "a blue circle", params, use_tokens=False)
    for r in tqdm(range(args.repeats), desc=f"edit latency ({model.name})", leave=False):
        clock.reset()
        off.append(first_edit(False, f"a blue circle {r}"))
        share.append(clock.total / off[-1][0])
        on.append(first_edit(True, f"a blue circle {r}"))
        reedit.append(timed(lambda: warm.edit(image, source, f"a green triangle {r}", params, use_tokens=False)))
        seeds = [1000 + 8 * r + k for k in range(4)]  # new seeds: no cached source velocities
        clock.reset()
        singles.append(timed(lambda: [warm.edit(image, source, "a blue circle", params.replace(seed=seed),
                                                use_tokens=False) for seed in seeds]))
        inside["singles"].append(clock.total)
        seeds = [1004 + 8 * r + k for k in range(4)]
        clock.reset()
        candidates.append(timed(lambda: warm.edit_candidates(image, source, "a blue circle", params, seeds=seeds,
                                                             use_tokens=False)))
        inside["candidates"].append(clock.total)
    return cases, share, inside


def report(model: BenchModel, args: argparse.Namespace, cases: dict[str, list], share: list[float],
           inside: dict[str, list], device: torch.device) -> None:
    clock = args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    print(f"model: {model.described}; image {args.size}x{args.size}; T={args.steps} n_max={args.n_max}; "
          f"{args.repeats} repeats, {torch.get_num_threads()} thread(s) on {device}")
    print(f"{'case (' + model.name + ')':<36} {'wall median s':>14} {'wall min s':>11} {'cpu median s':>13}")
    for name, values in cases.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(f"{name:<36} {statistics.median(walls):>14.3f} {min(walls):>11.3f} {statistics.median(cpus):>13.3f}")
    transformer_pct = statistics.median(share) * 100
    print(f"transformer share of a first edit (tokens off, wall): {transformer_pct:.0f}%")
    in_singles, in_candidates = (statistics.median(inside[name]) for name in ("singles", "candidates"))
    print(f"inside the transformer (wall medians): 4 single edits {in_singles:.3f} s (batch 4 per call), "
          f"4 candidates {in_candidates:.3f} s (batch 16 per call): ratio {in_candidates / in_singles:.3f}")
    pick = 0 if clock == "wall" else 1
    first, with_tokens, again, singles, candidates = (statistics.median(v[pick] for v in values)
                                                      for values in cases.values())
    print(f"ratios below use {clock}-time medians")
    print(f"RESULT reedit_ratio={again / first:.3f} tokens_overhead_pct={(with_tokens / first - 1) * 100:.1f} "
          f"candidates4_vs_single4={candidates / singles:.3f} "
          f"transformer_candidates_vs_single={in_candidates / in_singles:.3f} "
          f"model={model.name} size={args.size} steps={args.steps} n_max={args.n_max} repeats={args.repeats} "
          f"transformer_pct={transformer_pct:.0f} clock={clock}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args, device)
    cases, share, inside = measure(model, args)
    report(model, args, cases, share, inside, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
