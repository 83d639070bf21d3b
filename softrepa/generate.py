"""Text-to-image generation with or without SoftREPA soft tokens (paper Algorithm 1).

The tokens are hooked into the unmodified diffusers pipeline (``softrepa.models``) and reach
both CFG branches. Defaults per model kind come from ``KINDS`` (SD3: 28 steps, CFG 4.0;
SD1.5 / SDXL: 30 steps, CFG 7.0; paper §4). FLUX.1 (``flux-dev`` / ``flux-schnell``): FluxPipeline's
own call with the tokens on its transformer (``softrepa.flux``); ``cfg`` is its ``guidance_scale``,
the guidance embedding's value (dev 3.5; schnell has none), and there is no negative branch.

Python:
    images = generate_images(pipe, ["a cat"], seeds=[0], tokens="tokens.safetensors")

CLI (PNG files with every parameter in PNG text chunks; re-running skips existing files, so an
interrupted prompt-file run resumes where it stopped):
    python -m softrepa.generate --model sd3 --tokens tokens-final.safetensors \
        --prompts prompts.txt --seeds 0 1 --output out/
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from softrepa.hooks import attach_tokens
from softrepa.images import write_png
from softrepa.models import get_kind, known_kind, load_pipeline, resolve_model
from softrepa.runtime import (DTYPES, MODEL_DTYPE_HELP, add_memory_args, add_threads_arg, apply_threads,
                              memory_from_args, model_dtype, resolve_device)
from softrepa.tokens import SoftTokens, file_sha256, load_tokens, resolve_tokens_path

# Generated PNGs (here and in evaluation/t2i.py): each parameter in its own text chunk for image
# viewers, and all of them as JSON under "parameters" for programs (``softrepa.images.write_png``).
PNG_KEY = "parameters"
PNG_LAYOUT = "per-key"

# ----------------------------------------------------------------------------- generation


def generate_images(pipe: Any, prompts: Sequence[str] | str, seeds: Sequence[int] | int = 0,
                    tokens: SoftTokens | str | os.PathLike | None = None, *, kind: str | None = None,
                    steps: int | None = None, cfg: float | None = None, negative_prompt: str = "",
                    height: int | None = None, width: int | None = None, batch_size: int = 4,
                    encoded: dict[str, torch.Tensor] | None = None, max_sequence_length: int | None = None,
                    progress: bool = False) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order.

    seeds: one per prompt, or one int for all. Each image gets its own CPU ``torch.Generator``,
        so an image does not depend on the batch it was made in (nor on the device).
    tokens: soft tokens (module or file) attached for this call only; None = the pipeline as it is
        (which may already carry attached tokens, e.g. in the trainer's validation).
    kind: model kind for the defaults (steps, cfg); inferred from the tokens or the pipeline class.
    encoded: pre-encoded prompts (``softrepa.cache.encode_prompts`` with ``negative_prompt``), one
        row per prompt, for pipelines whose text encoders were freed.
    height, width: None = the pipeline's default size.
    max_sequence_length: SD3-family T5 length; None = the kind's (256; shapes-sd3: 8).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [int(seeds)] * len(prompts) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt or a single int")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(tokens, (str, os.PathLike)):
        tokens = load_tokens(tokens, model=pipe)
    kind = kind or (tokens.config.kind if tokens is not None else known_kind(pipe, "generate"))
    spec = get_kind(kind)
    steps = spec.steps if steps is None else steps
    cfg = spec.cfg if cfg is None else cfg
    device = pipe._execution_device if hasattr(pipe, "_execution_device") else pipe.device
    takes_length = "max_sequence_length" in inspect.signature(pipe.__call__).parameters
    max_sequence_length = spec.max_sequence_length if max_sequence_length is None else max_sequence_length

    attached = attach_tokens(pipe, tokens) if tokens is not None else None
    images: list[Image.Image] = []
    try:
        for start in range(0, len(prompts), batch_size):
            stop = min(start + batch_size, len(prompts))
            kwargs: dict[str, Any] = dict(num_inference_steps=steps, guidance_scale=cfg, height=height, width=width,
                                          generator=[torch.Generator("cpu").manual_seed(s) for s in seeds[start:stop]],
                                          output_type="pil")
            if encoded is not None:
                kwargs.update({k: v[start:stop].to(device) for k, v in encoded.items()})
            else:
                kwargs.update(prompt=prompts[start:stop], negative_prompt=[negative_prompt] * (stop - start))
            if takes_length:  # SD3 family: the T5 length (zeros without T5); must match the pre-encoding
                kwargs["max_sequence_length"] = max_sequence_length
            pipe.set_progress_bar_config(disable=not progress)
            with torch.no_grad():
                images.extend(pipe(**kwargs).images)
    finally:
        if attached is not None:
            attached.detach()
    return images


def image_grid(images: Sequence[Image.Image], rows: int, cols: int) -> Image.Image:
    """Images (row-major) pasted into a rows x cols grid."""
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images do not fill a {rows}x{cols} grid")
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), (255, 255, 255))
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % cols) * width, (index // cols) * height))
    return grid


# ----------------------------------------------------------------------------- CLI


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise ValueError(f"prompt file {path} does not exist")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE (one per line)")
    return prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m softrepa.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sd3", help="a kind (sd3, sd15, sdxl, flux-dev, ...) or a Hub id / "
                        "diffusers folder")
    parser.add_argument("--kind", default=None, help="model kind when --model is an id or folder")
    parser.add_argument("--tokens", default=None, help="soft-token .safetensors file, or a Hub reference user/repo[@rev] "
                        "or user/repo/file.safetensors (omit: the base model)")
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts", default=None, help="a text file, one prompt per line")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one image per prompt and seed")
    parser.add_argument("--steps", type=int, default=None, help="default: the kind's (SD3 28, SD1.5/SDXL 30, "
                        "flux-dev 28, flux-schnell 4)")
    parser.add_argument("--cfg", type=float, default=None, help="default: the kind's (SD3 4.0, SD1.5/SDXL 7.0); FLUX: "
                        "the guidance embedding's value (flux-dev 3.5)")
    parser.add_argument("--negative-prompt", default="", help="CFG's negative prompt (FLUX: unused)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=MODEL_DTYPE_HELP)
    parser.add_argument("--max-sequence-length", type=int, default=None,
                        help="T5 length (default: the kind's: SD3 256, shapes-sd3 8, flux-dev 512, flux-schnell 256)")
    parser.add_argument("--progress", action="store_true")
    add_threads_arg(parser)
    add_memory_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_threads(args.threads)  # before torch runs anything
    try:
        prompts = read_prompts(args)
        output = Path(args.output)
        jobs = [(index, prompt, seed) for index, prompt in enumerate(prompts) for seed in args.seeds]
        todo = [job for job in jobs if not (output / f"{job[0]:05d}-s{job[2]}.png").exists()]
        print(f"{len(jobs)} images, {len(jobs) - len(todo)} already there, {len(todo)} to make")
        if not todo:
            return 0
        token_path = resolve_tokens_path(args.tokens) if args.tokens else None  # a Hub reference: fetched once
        device = resolve_device(args.device)
        source, kind = resolve_model(args.model, args.kind)
        pipe = load_pipeline(source, kind, model_dtype(args.dtype, device, kind), device, progress_bar=False,
                             without_t5=True if args.no_t5 else None, memory=memory_from_args(args, device))
        tokens = load_tokens(token_path, model=pipe) if token_path else None
        spec = get_kind(kind)
        common = {"model": args.model, "kind": kind, "steps": args.steps or spec.steps,
                  "cfg": spec.cfg if args.cfg is None else args.cfg, "negative_prompt": args.negative_prompt,
                  "tokens": str(args.tokens) if args.tokens else "none",
                  "tokens_sha256": file_sha256(token_path) if token_path else "none",
                  "software": "softrepa-edit"}
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            images = generate_images(pipe, [p for _, p, _ in batch], [s for _, _, s in batch], tokens, kind=kind,
                                     steps=common["steps"], cfg=common["cfg"], negative_prompt=args.negative_prompt,
                                     height=args.height, width=args.width, batch_size=args.batch_size,
                                     max_sequence_length=args.max_sequence_length, progress=args.progress)
            for (index, prompt, seed), image in zip(batch, images):
                path = output / f"{index:05d}-s{seed}.png"
                write_png(image, path, {**common, "prompt": prompt, "seed": seed, "width": image.width,
                                        "height": image.height}, key=PNG_KEY, layout=PNG_LAYOUT)
                print(path)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
