"""Peak memory and speed of one SoftREPA training step: naive (all B^2 pairs in one forward) vs
chunked (at most ``--pair-chunk`` pairs per forward, exact same gradient; softrepa/pairs.py).

    python benchmarks/train_memory.py [--sizes 2 4 8 16] [--pair-chunk 16] [--repeats 3]

Model: an SD3-shaped transformer at reduced size (random weights, no download): 4 joint blocks,
width 128 (4 heads x 32), patch 2 over 16 x 32 x 32 latents (256 image tokens), 77 + 16 text
tokens of width 256, pooled 128; soft tokens m = 4 on the first 3 blocks. float32, one CPU thread.

Memory: each configuration runs in its own subprocess. torch's CPU allocations bypass Python's
allocator, so ``tracemalloc`` cannot see them; instead the worker reads the kernel's resident-set
high-water mark (VmHWM). After building the model and one warm-up step it resets VmHWM
(``echo 5 > /proc/self/clear_refs``) and records VmRSS as the baseline; the reported peak is
VmHWM - baseline over one measured step: the step's activations, graph and gradients. The
workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc maps each tensor-sized block on its own
and returns it on free: without it, heap pages kept from the warm-up step hide the next step's
peak (the same configuration measured 33 or 74 MB from run to run).
Speed: pairs per second of a step (forward + backward), measured in a separate process per B with
normal malloc settings, naive and chunked steps alternated after a warm-up of each; the fastest
of ``--repeats`` per mode (the machine is shared: the minimum is the least disturbed run, and
alternating keeps load drifts from favouring one mode).

Ends with ``RESULT mem_ratio_b16_b4=<chunked peak at B=16 / at B=4> speed_ratio=<chunked pairs/s /
naive pairs/s at B=8> model=random-sd3-4x128 pair_chunk=<chunk>`` (the model is always this one).

``--compile [MODE]`` measures instead whether ``TrainConfig(compile=MODE)`` pays: per B (default 4
and 8), in one process, chunked steps with the blocks compiled (``softrepa.compile``) and eager
(``eager_blocks``), alternated after a warm-up of each, the fastest of ``--repeats``; and the compile,
the first compiled step's seconds beyond a warm eager one, with inductor's on-disk cache empty (a
fresh ``TORCHINDUCTOR_CACHE_DIR``). Ends with ``RESULT compiled_vs_eager_b<B>=<compiled / eager step>
... compile_s_b<B>=<s> ... mode=<mode> model=random-sd3-4x128 pair_chunk=<chunk>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from softrepa.compile import COMPILE_MODES

MODEL_NAME = "random-sd3-4x128"
MODEL_DESCRIBED = (f"{MODEL_NAME} (SD3-shaped transformer, random weights: 4 joint blocks x 128 wide, 4 heads; "
                   "256 image + 93 text tokens; soft tokens m 4 on 3 blocks; float32, 1 thread)")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _setup(batch: int):
    """The SD3-shaped model with tokens attached, and a step function for either mode (pair chunk)."""
    import torch

    torch.set_num_threads(1)
    from diffusers import SD3Transformer2DModel

    from softrepa.hooks import attach_tokens
    from softrepa.loss import DiffusionObjective, LossConfig
    from softrepa.pairs import PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward
    from softrepa.tokens import new_tokens

    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=4,
                                  attention_head_dim=32, num_attention_heads=4, joint_attention_dim=256,
                                  caption_projection_dim=128, pooled_projection_dim=128, pos_embed_max_size=64)
    model.eval().requires_grad_(False)
    tokens = new_tokens(model, "sd3", num_layers=3)
    attach_tokens(model, tokens)
    objective, config = DiffusionObjective("flow"), LossConfig(tau=1.0)
    generator = torch.Generator().manual_seed(0)

    def step(pair_chunk: int) -> float:
        batch_ = PairBatch(torch.randn(batch, 16, 32, 32, generator=generator),
                           {"prompt_embeds": torch.randn(batch, 93, 256, generator=generator),
                            "pooled_prompt_embeds": torch.randn(batch, 128, generator=generator)})
        noise = draw_noise(batch_.latents, objective, generator)
        tokens.zero_grad(set_to_none=True)
        start = time.perf_counter()
        pair_loss_backward(PairScorer(model, "mmdit", objective, batch_, noise), make_loss_fn(config, noise, None),
                           pair_chunk)
        return time.perf_counter() - start

    return model, step


def memory_worker(batch: int, pair_chunk: int) -> dict:
    """Peak RSS above the post-warm-up baseline during one step (pair_chunk 0 = naive)."""
    _, step = _setup(batch)
    step(pair_chunk)  # warm-up: lazily built buffers, allocator state
    Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
    baseline = _status_kb("VmRSS")
    step(pair_chunk)
    return {"peak_mb": (_status_kb("VmHWM") - baseline) / 1024}


def speed_worker(batch: int, pair_chunk: int, repeats: int) -> dict:
    """Naive and chunked steps alternated in one process (machine load drifts hit both alike);
    the fastest of ``repeats`` for each."""
    _, step = _setup(batch)
    step(0), step(pair_chunk)  # warm-up
    times: dict[str, list[float]] = {"naive": [], "chunked": []}
    for _ in range(repeats):
        times["naive"].append(step(0))
        times["chunked"].append(step(pair_chunk))
    return {mode: min(values) for mode, values in times.items()}


def compile_worker(batch: int, pair_chunk: int, repeats: int, mode: str) -> dict:
    """Compiled and eager chunked steps alternated on one model; the compile's own seconds."""
    from softrepa.compile import compile_denoiser, eager_blocks

    model, step = _setup(batch)
    step(pair_chunk)  # warm-up
    warm = step(pair_chunk)
    info = compile_denoiser(model, mode)
    if info.mode is None:
        raise RuntimeError(info.note)
    compile_s = step(pair_chunk) - warm  # the first compiled step: forward, no-grad and backward graphs
    step(pair_chunk)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        with eager_blocks(model):
            times["eager"].append(step(pair_chunk))
        times["compiled"].append(step(pair_chunk))
    return {"compile_s": compile_s, **{name: min(values) for name, values in times.items()}}


def run_worker(kind: str, batch: int, pair_chunk: int, repeats: int, mode: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kind == "memory":
        # glibc: serve every block >= 64 KiB with its own mmap and unmap it on free, so RSS follows
        # the live tensors instead of heap pages kept from earlier steps (not for timing: the
        # page faults cost the chunked path, which allocates more often, several times more)
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    with contextlib.ExitStack() as stack:
        if kind == "compile":  # a cold compile: inductor's on-disk cache starts empty
            env["TORCHINDUCTOR_CACHE_DIR"] = stack.enter_context(tempfile.TemporaryDirectory(prefix="train-compile-"))
        out = subprocess.run([sys.executable, __file__, "--worker", kind, "--batch", str(batch),
                              "--pair-chunk", str(pair_chunk), "--repeats", str(repeats),
                              *(["--compile", mode] if mode else [])],
                             capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} worker B={batch} chunk={pair_chunk} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="batch sizes (default 2 4 8 16; --compile: 4 8)")
    parser.add_argument("--pair-chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, default=None,
                        help="measure compiled against eager steps instead (default mode: default; sizes 4 8)")
    parser.add_argument("--worker", choices=("memory", "speed", "compile"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([4, 8] if args.compile else [2, 4, 8, 16])
    return args


def compare_compiled(args: argparse.Namespace) -> int:
    """The ``--compile`` table and RESULT line (module docstring)."""
    print(f"model: {MODEL_DESCRIBED}; pair_chunk {args.pair_chunk}, fastest of {args.repeats}; compile {args.compile}")
    print(f"{'B':>3} {'pairs':>5} {'eager s':>8} {'compiled s':>10} {'ratio':>6} {'compile s':>9}   ({MODEL_NAME})",
          flush=True)
    found = {}
    for batch in tqdm(args.sizes, desc="batch sizes", leave=False):
        r = found[batch] = run_worker("compile", batch, args.pair_chunk, args.repeats, args.compile)
        tqdm.write(f"{batch:>3} {batch * batch:>5} {r['eager']:>8.3f} {r['compiled']:>10.3f} "
                   f"{r['compiled'] / r['eager']:>6.3f} {r['compile_s']:>9.1f}", file=sys.stdout)
    ratios = " ".join(f"compiled_vs_eager_b{b}={r['compiled'] / r['eager']:.3f}" for b, r in found.items())
    compiles = " ".join(f"compile_s_b{b}={r['compile_s']:.1f}" for b, r in found.items())
    print(f"RESULT {ratios} {compiles} mode={args.compile} model={MODEL_NAME} pair_chunk={args.pair_chunk}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "memory":
        print(json.dumps(memory_worker(args.batch, args.pair_chunk)))
        return 0
    if args.worker == "speed":
        print(json.dumps(speed_worker(args.batch, args.pair_chunk, args.repeats)))
        return 0
    if args.worker == "compile":
        print(json.dumps(compile_worker(args.batch, args.pair_chunk, args.repeats, args.compile)))
        return 0
    if args.compile:
        return compare_compiled(args)

    rows: dict[tuple[int, str], dict] = {}
    print(f"model: {MODEL_DESCRIBED}; pair_chunk {args.pair_chunk}, fastest of {args.repeats}")
    print(f"{'B':>3} {'pairs':>5} {'mode':>8} {'peak MB':>9} {'step s':>8} {'pairs/s':>8}   ({MODEL_NAME})", flush=True)
    for batch in tqdm(args.sizes, desc="batch sizes", leave=False):
        speed = run_worker("speed", batch, args.pair_chunk, args.repeats)
        for mode, chunk in (("naive", 0), ("chunked", args.pair_chunk)):
            peak = run_worker("memory", batch, chunk, 1)["peak_mb"]
            r = rows[batch, mode] = {"peak_mb": peak, "seconds": speed[mode],
                                     "pairs_per_s": batch * batch / speed[mode]}
            tqdm.write(f"{batch:>3} {batch * batch:>5} {mode:>8} {peak:>9.1f} {r['seconds']:>8.3f} "
                       f"{r['pairs_per_s']:>8.1f}", file=sys.stdout)
    mem_ratio = speed_ratio = float("nan")
    if (16, "chunked") in rows and (4, "chunked") in rows:
        mem_ratio = rows[16, "chunked"]["peak_mb"] / rows[4, "chunked"]["peak_mb"]
    if (8, "chunked") in rows:
        speed_ratio = rows[8, "chunked"]["pairs_per_s"] / rows[8, "naive"]["pairs_per_s"]
    print(f"RESULT mem_ratio_b16_b4={mem_ratio:.3f} speed_ratio={speed_ratio:.3f} model={MODEL_NAME} "
          f"pair_chunk={args.pair_chunk}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
