"""Throughput of the Appendix C caption pipeline (data_prep/caption.py): batch 1 vs batch 8.

Runs the whole pipeline (image reading, LLaVA captions, Llama rewrites, validation,
JSONL writes) on tiny random-weight LLaVA / Llama models built offline
(data_prep/tiny_models.py), so it measures the pipeline's batching and bookkeeping, not
the speed of the real 13B/8B models. The models are loaded once and injected, so loading
time is not counted; each setting runs on a fresh output file and the best of
``--repeats`` runs is kept (the machine may be shared).

    python benchmarks/caption_throughput.py [--images 16] [--repeats 2] [--device cpu] [--threads 1]

Ends with one line ``RESULT batch_speedup=<images/s at batch 8 / images/s at batch 1> model=tiny-random-llava-llama
images=<n> threads=<t>`` (the models are always these tiny random ones).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from data_prep import caption as cap
from data_prep.tiny_models import build_tiny_llama, build_tiny_llava

MODEL_NAME = "tiny-random-llava-llama"


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        # DIV2K-like aspect, small enough to stay quick; still downscaled by the pipeline.
        Image.new("RGB", (1020, 678), (index * 15 % 255, 120, 200 - index * 7 % 200)).save(folder / f"{index:03d}.png")


def time_run(images: Path, out: Path, batch_size: int, captioner, rewriter) -> float:
    config = cap.CaptionConfig(images=images, out=out, batch_size=batch_size, max_retries=0, progress=False)
    start = time.perf_counter()
    summary = cap.run_pipeline(config, captioner=captioner, rewriter=rewriter)
    elapsed = time.perf_counter() - start
    done = summary.written + summary.rejected
    if done != summary.images:
        raise RuntimeError(f"only {done} of {summary.images} images were processed")
    return elapsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="number of images per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size (best is kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="per stage")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 avoids OpenMP spinning on a shared machine")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # rejects of random text are expected; keep output clean

    import torch

    torch.set_num_threads(args.threads)
    device = cap.resolve_device(args.device)
    dtype = cap.resolve_dtype("auto", device)
    with tempfile.TemporaryDirectory(prefix="caption_bench_") as tmp:
        root = Path(tmp)
        make_images(root / "images", args.images)
        captioner = cap.LlavaCaptioner(str(build_tiny_llava(root / "llava")), device, dtype, False, args.max_new_tokens)
        rewriter = cap.ChatRewriter(str(build_tiny_llama(root / "llama")), device, dtype, False,
                                    args.max_new_tokens, temperature=0.6, top_p=0.9)
        time_run(root / "images", root / "warmup.jsonl", 8, captioner, rewriter)  # first-call costs

        results = {}
        for batch_size in (1, 8):
            best = min(
                time_run(root / "images", root / f"b{batch_size}_{repeat}.jsonl", batch_size, captioner, rewriter)
                for repeat in range(args.repeats)
            )
            results[batch_size] = args.images / best

    print(f"model: {MODEL_NAME} (tiny random-weight LLaVA + Llama from data_prep/tiny_models.py)")
    print(f"caption pipeline throughput: {args.images} images of 1020x678, "
          f"{args.max_new_tokens} new tokens max per stage, device {device} "
          f"({torch.get_num_threads()} threads), best of {args.repeats}")
    print(f"{'batch':>5}  {'images':>6}  {'seconds':>8}  {'images/s':>8}   ({MODEL_NAME})")
    for batch_size, rate in results.items():
        print(f"{batch_size:>5}  {args.images:>6}  {args.images / rate:>8.2f}  {rate:>8.2f}")
    print(f"RESULT batch_speedup={results[8] / results[1]:.2f} model={MODEL_NAME} images={args.images} "
          f"threads={torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
