"""Seconds per FlowEdit edit: first edits (tokens off, on), cached re-edits (alone and after 4
variations), 4 candidates against 4 single edits; with ``--compile``, compiled against eager.

    python benchmarks/edit_latency.py                      # the bundled shapes model when built, else random-sd3
    python benchmarks/edit_latency.py --model random-sd3   # random-weight SD3 sized so the transformer dominates
    python benchmarks/edit_latency.py --model random-sd3 --layers 8 --heads 8 --head-dim 32 --size 64 --repeats 5
    python benchmarks/edit_latency.py --model FOLDER       # another diffusers SD3 folder, loaded like the shapes model
    python benchmarks/edit_latency.py --compile            # FlowEditor(compile="default") against eager

Models (``--model``):

* ``shapes``: the bundled shapes-world model (assets/shapes-sd3, loaded with ``softrepa.models.load_pipeline``).
  Its transformer sees few image tokens, so costs paid once per call take most of an edit: the batch-2
  re-edit costs nearly what the batch-4 first edit does, and the ratios say little about SD3 itself.
* ``random-sd3``: the tiny SD3 of ``softrepa.tiny`` (toy CLIPs and VAE) with a random-weight transformer
  of ``--layers`` joint blocks x ``--heads * --head-dim`` wide (default 4 x 128) at ``--size`` px: the
  transformer's work grows with the batch, as on SD3.

Cases, each on an editor of its own so that no case evicts what another measures (the table's last
column says what the editor holds when the case is timed, and its "reused" column counts the steps
that found their source velocities: n/n for a hit, 0/n for a miss):

* "first edit": a fresh editor (cold caches: VAE encode, 4 prompt encodings, batch-4 calls);
* "re-edit": the same image and seed with a new target prompt, on an editor that made the first edit
  just before (only the new prompt is encoded, only the target half of the batch runs);
* "4 single edits" / "4 candidates": 4 new seeds, one after another (batch 4 each) or in one batched
  run (``FlowEditor.edit_candidates``: batch 16 per step), the image and prompts cached;
* "re-edit after 4 variations": on the editor that made the first edit and then the 4 candidates, a
  new target for the first seed, then for one of the variations' seeds: what a person does who tries
  variations and goes back (the editor keeps a velocity table per seed, within its byte budget).

Medians over ``--repeats``. The last line is::

    RESULT reedit_ratio=<re-edit / first edit> reedit_after_variations_ratio=<first seed's re-edit
           after 4 variations / first edit> reedit_variation_seed_ratio=<a variation's seed re-edited /
           first edit> tokens_overhead_pct=<(tokens on / off - 1) * 100>
           candidates4_vs_single4=<4 candidates / 4 single edits>
           transformer_candidates_vs_single=<the same, transformer wall seconds only>
           model=<shapes-sd3 | random-sd3-<layers>x<width> | folder> size=<px> steps=<T> n_max=<n>
           repeats=<r> transformer_pct=<transformer share of a first edit, %> clock=<cpu | wall>

``--compile [MODE]`` (default mode ``default``; ``softrepa.compile.COMPILE_MODES``) measures instead, on
one pipeline and one editor (``FlowEditor(..., compile=MODE)``) in one process: eager and compiled
edits interleaved after warm-up (tokens off, a new seed each, so each runs the full batch); the cold
compile (the first compiled edit minus a warm eager edit, inductor's on-disk cache emptied first); the
compile from that cache (the same in a second process whose ``TORCHINDUCTOR_CACHE_DIR`` is the first
one's, ``--out``/inductor-cache); and the recompiles (dynamo's frame counter,
``torch._dynamo.utils.counters``) over 10 varied edits after ``editing.compile.warm_up``: prompts,
seeds, n_max, guidance, a mask, 2-4 candidates, a cache hit, tokens on and off. The last line is::

    RESULT compiled_vs_eager=<compiled / eager, per edit> compile_cold_s=<s> compile_cached_s=<s>
           recompiles=<frames compiled during the 10 edits> mode=<mode> model=... clock=<cpu | wall>
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from editing.compile import warm_up
from editing.editor import EditResult, FlowEditor
from editing.flowedit import FlowEditParams
from softrepa.compile import COMPILE_MODES, eager_blocks
from softrepa.models import KINDS, load_pipeline, model_label
from softrepa.tokens import new_tokens

SHAPES_KIND = "shapes-sd3"
SHAPES_MODEL = Path(KINDS[SHAPES_KIND].hub_id)  # the bundled folder
MODELS = ("shapes", "random-sd3")
SOURCE = "a red square on a gray background"
MIB = 2**20


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
    parser.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, default=None,
                        help="measure FlowEditor(compile=MODE) against eager instead (default mode: default)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/edit_latency"),
                        help="--compile: inductor's on-disk cache goes in OUT/inductor-cache (emptied first)")
    parser.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)  # the second process
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


@dataclass
class Setup:
    """What every case edits: the model, its random soft tokens, a random picture, the parameters."""

    model: BenchModel
    tokens: object
    image: Image.Image
    params: FlowEditParams

    def editor(self, use_tokens: bool = False, **options) -> FlowEditor:
        return FlowEditor(self.model.pipe, self.tokens if use_tokens else None, kind=self.model.kind, **options)


def make_setup(model: BenchModel, args: argparse.Namespace) -> Setup:
    pipe = model.pipe
    tokens = new_tokens(pipe, model.kind, num_layers=min(5, len(pipe.transformer.transformer_blocks) - 1))
    image = Image.fromarray((np.random.RandomState(0).rand(args.size, args.size, 3) * 255).astype(np.uint8))
    params = FlowEditParams(steps=args.steps, n_max=args.n_max, src_cfg=3.5, tar_cfg=13.5, seed=42)
    return Setup(model, tokens, image, params)


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


# ----------------------------------------------------------------------------- latency cases


@dataclass
class Case:
    """One row: what its editor holds when timed, and per repeat (wall s, cpu s, steps reused, steps run)."""

    holds: str
    runs: list

    def time(self, edits) -> None:
        """Time ``edits()`` (a list of runs' results), counting the steps whose source velocities were reused."""
        results: list[list[EditResult]] = []
        wall, cpu = timed(lambda: results.extend(edits()))
        firsts = [run[0] for run in results]  # a run's candidates share its stats
        self.runs.append((wall, cpu, sum(r.stats.source_velocities_reused for r in firsts),
                          sum(r.params.n_max * r.params.n_avg for r in firsts)))


def measure(setup: Setup, args: argparse.Namespace) -> tuple[dict[str, Case], list[float], dict[str, list], FlowEditor]:
    """The cases (module docstring); the transformer's share of each first edit; the transformer's wall
    seconds in the 4 single edits and in the 4 candidates of each repeat; the variations' editor."""
    image, params, pipe = setup.image, setup.params, setup.model.pipe
    clock = TransformerClock(pipe.transformer)

    def first_edit(use_tokens: bool, target: str) -> list[list[EditResult]]:
        editor = setup.editor(use_tokens)  # cold caches
        try:
            return [[editor.edit(image, SOURCE, target, params, use_tokens=use_tokens)]]
        finally:
            editor.close()

    first_edit(False, "warm-up")  # first calls allocate and pick kernels
    cases = {"first edit, tokens off": Case("nothing (a new editor)", []),
             "first edit, tokens on": Case("nothing (a new editor)", []),
             "re-edit, new target": Case("this image and seed, edited just before", []),
             "4 single edits (4 new seeds)": Case("the image and prompts", []),
             "4 candidates, one batched run": Case("the image, prompts and first seed", []),
             "re-edit after 4 variations": Case("the first seed and the 4 variations' seeds", []),
             "re-edit of a variation's seed": Case("the first seed and the 4 variations' seeds", [])}
    off, on, reedit, singles, candidates, back, variation = cases.values()
    share, inside = [], {"singles": [], "candidates": []}  # transformer wall seconds: where a batching cost sits
    warm, single, user = setup.editor(), setup.editor(), setup.editor()  # one editor per case: none evicts another
    for editor in (warm, single, user):
        editor.edit(image, SOURCE, "a blue circle", params, use_tokens=False)
    for r in tqdm(range(args.repeats), desc=f"edit latency ({setup.model.name})", leave=False):
        clock.reset()
        off.time(lambda: first_edit(False, f"a blue circle {r}"))
        share.append(clock.total / off.runs[-1][0])
        on.time(lambda: first_edit(True, f"a blue circle {r}"))
        reedit.time(lambda: [[warm.edit(image, SOURCE, f"a green triangle {r}", params, use_tokens=False)]])
        seeds = [1000 + 4 * r + k for k in range(4)]  # new seeds: no source velocities cached yet
        clock.reset()
        singles.time(lambda: [[single.edit(image, SOURCE, "a blue circle", params.replace(seed=seed),
                                           use_tokens=False)] for seed in seeds])
        inside["singles"].append(clock.total)
        clock.reset()
        candidates.time(lambda: [user.edit_candidates(image, SOURCE, "a blue circle", params, seeds=seeds,
                                                      use_tokens=False)])
        inside["candidates"].append(clock.total)
        back.time(lambda: [[user.edit(image, SOURCE, f"a green triangle {r}", params, use_tokens=False)]])
        variation.time(lambda: [[user.edit(image, SOURCE, f"a yellow star {r}", params.replace(seed=seeds[r % 4]),
                                           use_tokens=False)]])
    return cases, share, inside, user


def result_clock(args: argparse.Namespace, device: torch.device) -> str:
    return args.clock if args.clock != "auto" else ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")


def report(setup: Setup, args: argparse.Namespace, cases: dict[str, Case], share: list[float],
           inside: dict[str, list], user: FlowEditor, device: torch.device) -> None:
    model, clock = setup.model, result_clock(args, device)
    print(f"model: {model.described}; image {args.size}x{args.size}; T={args.steps} n_max={args.n_max}; "
          f"{args.repeats} repeats, {torch.get_num_threads()} thread(s) on {device}; each case on an editor of its own")
    print(f"{'case (' + model.name + ')':<32} {'wall median s':>13} {'wall min s':>10} {'cpu median s':>12} "
          f"{'reused':>7}  the editor holds")
    for name, case in cases.items():
        walls, cpus = [v[0] for v in case.runs], [v[1] for v in case.runs]
        reused = f"{statistics.median(v[2] for v in case.runs):.0f}/{case.runs[0][3]}"
        print(f"{name:<32} {statistics.median(walls):>13.3f} {min(walls):>10.3f} {statistics.median(cpus):>12.3f} "
              f"{reused:>7}  {case.holds}")
    info = user.cache_info()
    print(f"velocity cache of the variations' editor: {info['velocity_sets']} tables, "
          f"{info['velocity_bytes'] / MIB:.2f} MiB of its {info['velocity_budget_bytes'] / MIB:.0f} MiB budget")
    transformer_pct = statistics.median(share) * 100
    print(f"transformer share of a first edit (tokens off, wall): {transformer_pct:.0f}%")
    in_singles, in_candidates = (statistics.median(inside[name]) for name in ("singles", "candidates"))
    print(f"inside the transformer (wall medians): 4 single edits {in_singles:.3f} s (batch 4 per call), "
          f"4 candidates {in_candidates:.3f} s (batch 16 per call): ratio {in_candidates / in_singles:.3f}")
    pick = 0 if clock == "wall" else 1
    first, with_tokens, again, singles, candidates, back, variation = (
        statistics.median(v[pick] for v in case.runs) for case in cases.values())
    print(f"ratios below use {clock}-time medians")
    print(f"RESULT reedit_ratio={again / first:.3f} reedit_after_variations_ratio={back / first:.3f} "
          f"reedit_variation_seed_ratio={variation / first:.3f} tokens_overhead_pct={(with_tokens / first - 1) * 100:.1f} "
          f"candidates4_vs_single4={candidates / singles:.3f} "
          f"transformer_candidates_vs_single={in_candidates / in_singles:.3f} "
          f"model={model.name} size={args.size} steps={args.steps} n_max={args.n_max} repeats={args.repeats} "
          f"transformer_pct={transformer_pct:.0f} clock={clock}")


# ----------------------------------------------------------------------------- compiled against eager


def plain_edit(setup: Setup, editor: FlowEditor, seed: int) -> EditResult:
    """The timed edit: tokens off, a new seed each time (no cached source velocities: the full batch)."""
    return editor.edit(setup.image, SOURCE, "a blue circle", setup.params.replace(seed=seed), use_tokens=False)


def first_compile(setup: Setup, editor: FlowEditor) -> float:
    """Wall seconds the first compiled edit takes beyond a warm eager one (the same work: image and
    prompts cached, a new seed each). Wall time: inductor compiles in worker processes."""
    with eager_blocks(setup.model.pipe.transformer):
        plain_edit(setup, editor, 0)  # first calls allocate and pick kernels; the caches fill
        warm, _ = timed(lambda: plain_edit(setup, editor, 1))
    cold, _ = timed(lambda: plain_edit(setup, editor, 2))
    return cold - warm


def varied_edits(setup: Setup, editor: FlowEditor) -> list[tuple[str, object]]:
    """10 edits of one image size that differ in everything else a person changes: (label, run)."""
    from editing.masks import AutoMask

    image, params, tokens = setup.image, setup.params, editor.has_tokens
    left = np.zeros(image.size[::-1], dtype=np.float32)
    left[:, : image.size[0] // 2] = 1.0  # a drawn mask: the left half may change

    def edit(target: str, seed: int, use_tokens: bool = False, source: str = SOURCE, **changes):
        return lambda: editor.edit(image, source, target, params.replace(seed=seed, **changes), use_tokens=use_tokens)

    def candidates(seeds: list[int], use_tokens: bool = False, mask=None):
        return lambda: editor.edit_candidates(image, SOURCE, "a blue circle", params, seeds=seeds,
                                              use_tokens=use_tokens, mask=mask)

    return [("new prompts", edit("a blue square", 5, source="a red square")),
            ("a cache hit (batch 2)", edit("a green square", 5, source="a red square", tar_cfg=7.0)),
            ("half the n_max", edit("a blue circle", 6, n_max=max(1, params.n_max // 2))),
            ("src CFG 1 (batch 3)", edit("a blue circle", 7, src_cfg=1.0, tar_cfg=5.0)),
            ("a drawn mask", lambda: editor.edit(image, SOURCE, "a blue circle", params.replace(seed=8),
                                                 use_tokens=False, mask=left)),
            ("2 candidates", candidates([9, 10])),
            ("3 candidates, tokens on", candidates([11, 12, 13], use_tokens=tokens)),
            ("tokens on the target only", edit("a blue circle", 14, use_tokens=tokens, token_branches="target")),
            ("4 candidates, automatic mask", candidates([15, 16, 17, 18], mask=AutoMask())),
            ("the authors' guidance, tokens on", edit("a blue circle", 19, use_tokens=tokens, guidance="authors"))]


def count_compiles(edits: list[tuple[str, object]]) -> dict:
    """Frames dynamo compiled (each a compile or recompile) and graphs made while ``edits`` ran, and
    the edits that compiled anything."""
    from torch._dynamo.utils import counters

    def now() -> tuple[int, int]:
        return counters["frames"]["total"], counters["stats"]["unique_graphs"]

    start, culprits = now(), []
    for label, edit in tqdm(edits, desc="varied compiled edits", leave=False):
        before = now()
        edit()
        if now()[0] > before[0]:
            culprits.append(f"{label} ({now()[0] - before[0]})")
    end = now()
    return {"frames": end[0] - start[0], "graphs": end[1] - start[1], "culprits": culprits}


def cached_compile_seconds(raw_argv: list[str]) -> float:
    """``first_compile`` in a second process, which finds the first one's kernels in inductor's on-disk
    cache (``TORCHINDUCTOR_CACHE_DIR``, set by ``main``, is inherited)."""
    command = [sys.executable, str(Path(__file__).resolve()), *raw_argv, "--compile-probe"]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=3600)
    found = re.search(r"^PROBE compile_s=(\S+)$", done.stdout, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"the second process printed no PROBE line (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return float(found.group(1))


def measure_compile(setup: Setup, args: argparse.Namespace, raw_argv: list[str]) -> dict:
    """Compiled against eager on one editor (module docstring): per-edit runs, compile seconds, recompiles."""
    editor = setup.editor(use_tokens=True, compile=args.compile)
    found: dict = {"info": dict(editor.compile_info.to_dict())}
    if editor.compile_info.mode is None:
        return found  # fell back to eager: the note says why
    found["cold"] = first_compile(setup, editor)
    found["warm_up"], _ = timed(lambda: warm_up(editor))  # tokens on, the smallest size: their graphs too
    plain_edit(setup, editor, 3)
    found["eager"], found["compiled"] = [], []
    for r in tqdm(range(args.repeats), desc=f"eager vs compiled ({setup.model.name})", leave=False):
        with eager_blocks(setup.model.pipe.transformer):
            found["eager"].append(timed(lambda: plain_edit(setup, editor, 100 + 2 * r)))
        found["compiled"].append(timed(lambda: plain_edit(setup, editor, 101 + 2 * r)))
    found["compiles"] = count_compiles(varied_edits(setup, editor))
    found["info"] = dict(editor.compile_info.to_dict())  # a failed compile falls back during an edit
    found["cached"] = cached_compile_seconds(raw_argv)
    return found


def report_compile(setup: Setup, args: argparse.Namespace, found: dict, device: torch.device) -> None:
    model, clock, info = setup.model, result_clock(args, device), found["info"]
    print(f"model: {model.described}; image {args.size}x{args.size}; T={args.steps} n_max={args.n_max}; "
          f"{args.repeats} repeats, {torch.get_num_threads()} thread(s) on {device}; compile: {info}")
    if "eager" not in found:
        print(f"RESULT compiled_vs_eager=nan compile_cold_s=nan compile_cached_s=nan recompiles=nan "
              f"mode=eager-fallback model={model.name} clock={clock}")
        return
    print(f"{'edit (' + model.name + ', tokens off)':<36} {'wall median s':>13} {'wall min s':>10} {'cpu median s':>12}")
    for name in ("eager", "compiled"):
        runs = found[name]
        print(f"{name + ', after warm-up':<36} {statistics.median(r[0] for r in runs):>13.3f} "
              f"{min(r[0] for r in runs):>10.3f} {statistics.median(r[1] for r in runs):>12.3f}")
    print(f"compile (wall s beyond a warm eager edit): cold {found['cold']:.1f} (inductor cache emptied), "
          f"from the on-disk cache in a second process {found['cached']:.1f}; editing.compile.warm_up "
          f"(tokens on, smallest size) {found['warm_up']:.1f}")
    compiles = found["compiles"]
    print(f"over 10 varied edits after warm-up: {compiles['frames']} frames compiled, {compiles['graphs']} graphs "
          f"made (torch._dynamo.utils.counters){': ' + ', '.join(compiles['culprits']) if compiles['culprits'] else ''}")
    pick = 0 if clock == "wall" else 1
    eager_s, compiled_s = (statistics.median(r[pick] for r in found[name]) for name in ("eager", "compiled"))
    print(f"ratio below uses {clock}-time medians")
    print(f"RESULT compiled_vs_eager={compiled_s / eager_s:.3f} compile_cold_s={found['cold']:.1f} "
          f"compile_cached_s={found['cached']:.1f} recompiles={found['compiles']['frames']} mode={info['mode']} "
          f"model={model.name} size={args.size} steps={args.steps} n_max={args.n_max} repeats={args.repeats} "
          f"clock={clock}")


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(raw_argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.compile and not args.compile_probe:  # a cold compile: this run's own, empty on-disk cache
        cache = (args.out / "inductor-cache").resolve()
        shutil.rmtree(cache, ignore_errors=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    setup = make_setup(build_model(args, device), args)
    if args.compile_probe:
        editor = setup.editor(use_tokens=True, compile=args.compile)
        print(f"PROBE compile_s={first_compile(setup, editor):.3f}")
    elif args.compile:
        report_compile(setup, args, measure_compile(setup, args, raw_argv), device)
    else:
        cases, share, inside, user = measure(setup, args)
        report(setup, args, cases, share, inside, user, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
