"""Source/target prompt pairs for image editing, as in the SoftREPA paper, Appendix C.

Stage 1: LLaVA describes each image with the paper's prompt -> the SOURCE prompt.
Stage 2: Llama-3.1-8B-Instruct rewrites that caption with the paper's instruction and
example so that exactly one concept changes -> the TARGET prompt. Each rewrite is checked
(``data_prep/rewrite_check.py``); a failing one is retried with another seed, and an image
that never gets a valid rewrite goes to the rejects file with the reason.

    python data_prep/caption.py --images DIV2K_train_HR --out data/div2k_pairs.jsonl \\
        --yaml data/div2k_edits.yaml [--limit N] [--batch-size B] [--device auto]
        [--dtype auto] [--load-in-4bit [captioner|rewriter|both]]
    python -m data_prep.caption --preset cat2dog --images cats/ --out data/cat2dog.jsonl
    python -m data_prep.caption export-yaml --jsonl data/div2k_pairs.jsonl --yaml edits.yaml
    accelerate launch data_prep/caption.py --images ... --out ...   # several GPUs

Output: one JSON row per image in ``--out`` (docs/data_prep.md), failures in
``<out stem>.rejects.jsonl``, stage-1 captions cached in ``<out stem>.stage1-captions.jsonl``.
Rows are appended and fsync'd one by one; a rerun skips images already done (path +
content hash), so a crashed or interrupted run is resumed by running the same command.

This module holds the run's configuration, its command line and the pipeline; the prompts are
in ``data_prep/prompts.py``, the models in ``data_prep/models.py``, the input images in
``data_prep/images.py`` and the output files in ``data_prep/outputs.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.images import IMAGE_ERRORS, ImageItem, hash_image_file, list_images, open_image
from data_prep.jsonl_store import JsonlAppender, merge_rows, read_rows, write_rows_atomically
from data_prep.models import (
    DEFAULT_CAPTIONER,
    DEFAULT_REWRITER,
    Captioner,
    ChatRewriter,
    LlavaCaptioner,
    Rewriter,
    describe_model,
    release_memory,
    resolve_device,
    resolve_dtype,
)
from data_prep.outputs import RowWriter, export_flowedit_yaml, row_key, shard_path, shard_paths
from data_prep.prompts import CAPTION_PROMPT, CAT2DOG_SOURCE_PROMPT, CAT2DOG_TARGET_PROMPT
from data_prep.rewrite_check import RewriteRules, check_rewrite
from softrepa.cli_types import int_at_least

logger = logging.getLogger("data_prep.caption")

PRESETS = ("caption", "cat2dog")
DTYPES = ("auto", "float32", "bfloat16", "float16")
FOUR_BIT_CHOICES = ("none", "captioner", "rewriter", "both")


# --------------------------------------------------------------------------------------
# Configuration and command line
# --------------------------------------------------------------------------------------


@dataclass
class CaptionConfig:
    """Everything a run needs; built from the command line by :func:`config_from_args`."""

    images: Path
    out: Path
    preset: str = "caption"
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: str = "none"
    captioner: str = DEFAULT_CAPTIONER
    rewriter: str = DEFAULT_REWRITER
    caption_max_new_tokens: int = 256
    rewrite_max_new_tokens: int = 512
    max_image_side: int = 768  # the CLIP-L/336 tower sees 336 px; 2K DIV2K images are cut down first
    temperature: float = 0.6  # Llama-3.1-Instruct's own sampling defaults
    top_p: float = 0.9
    seed: int = 0
    max_retries: int = 3
    max_span_words: int = 4
    allow_colour_change: bool = False
    rejects: Path | None = None
    yaml: Path | None = None
    retry_rejects: bool = False
    progress: bool = True

    @property
    def rejects_path(self) -> Path:
        # Named after --out so that two runs writing into one folder do not share rejects.
        return self.rejects or self.out.with_name(f"{self.out.stem}.rejects.jsonl")

    @property
    def caption_cache_path(self) -> Path:
        return self.out.with_name(f"{self.out.stem}.stage1-captions.jsonl")

    @property
    def rewrite_rules(self) -> RewriteRules:
        return RewriteRules(max_span_words=self.max_span_words, allow_colour_change=self.allow_colour_change)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.caption",
        description="Build source/target prompt pairs for image editing (SoftREPA paper, Appendix C). "
        "Also: 'python -m data_prep.caption export-yaml --jsonl FILE --yaml FILE'.",
    )
    parser.add_argument("--images", type=Path, required=True, help="folder of images (e.g. DIV2K_train_HR)")
    parser.add_argument("--out", type=Path, required=True, help="output JSONL file (appended to; reruns resume)")
    parser.add_argument("--preset", choices=PRESETS, default="caption",
                        help="caption: LLaVA + Llama pipeline (default); cat2dog: fixed "
                        f"'{CAT2DOG_SOURCE_PROMPT}' -> '{CAT2DOG_TARGET_PROMPT}' pairs, no models")
    parser.add_argument("--limit", type=int_at_least(1), help="only the first N images (sorted by name)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per generate call (both stages)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="auto: bfloat16 (or float16) on GPU, float32 on CPU")
    parser.add_argument("--load-in-4bit", nargs="?", const="both", default="none", choices=FOUR_BIT_CHOICES,
                        help="load models in 4 bit with bitsandbytes (CUDA only). Bare flag: both models; "
                        "'captioner' matches the paper (4-bit LLaVA, full Llama)")
    parser.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="LLaVA Hub id or local folder")
    parser.add_argument("--rewriter", default=DEFAULT_REWRITER, help="chat LLM Hub id or local folder")
    parser.add_argument("--caption-max-new-tokens", type=int_at_least(1), default=256)
    parser.add_argument("--rewrite-max-new-tokens", type=int_at_least(1), default=512)
    parser.add_argument("--max-image-side", type=int_at_least(1), default=768,
                        help="downscale larger images to this many pixels on the long side before LLaVA")
    parser.add_argument("--temperature", type=float, default=0.6, help="rewriter sampling temperature")
    parser.add_argument("--top-p", type=float, default=0.9, help="rewriter nucleus sampling")
    parser.add_argument("--seed", type=int, default=0, help="first rewriter seed; retry k uses seed + k")
    parser.add_argument("--max-retries", type=int_at_least(0), default=3,
                        help="extra rewrite attempts (new seed each) before an image is rejected")
    parser.add_argument("--max-span-words", type=int_at_least(1), default=4,
                        help="longest allowed changed span, in words, on each side")
    parser.add_argument("--allow-colour-change", action="store_true",
                        help="accept 'red car' -> 'blue car' (the paper forbids colour edits)")
    parser.add_argument("--rejects", type=Path, help="rejects file (default: <out stem>.rejects.jsonl next to --out)")
    parser.add_argument("--yaml", type=Path, help="also write a FlowEdit-style edits.yaml of all rows at the end")
    parser.add_argument("--retry-rejects", action="store_true", help="process images listed in the rejects file again")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_args(args: argparse.Namespace) -> CaptionConfig:
    names = CaptionConfig.__dataclass_fields__.keys()
    return CaptionConfig(**{name: getattr(args, name) for name in names if hasattr(args, name)})


# --------------------------------------------------------------------------------------
# Processes (one, or several under `accelerate launch`)
# --------------------------------------------------------------------------------------


def default_process_state(needs_models: bool, device_spec: str = "auto"):
    """``accelerate.PartialState`` when launched with several processes or when models run
    (it also knows each process's device); a no-op stand-in otherwise."""
    launched_world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not (needs_models or launched_world_size > 1):
        from softrepa.runtime import SingleProcess  # here: importing this module stays free of torch

        return SingleProcess()
    import torch
    from accelerate import PartialState

    # Without cpu=True, PartialState on a machine with no CUDA ignores the launcher's
    # processes (each would believe it is alone and redo every image).
    on_cpu = device_spec == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    if state.num_processes != launched_world_size:
        raise SystemExit(
            f"error: launched with WORLD_SIZE={launched_world_size} but accelerate set up "
            f"{state.num_processes} process(es); check the `accelerate launch` options"
        )
    return state


# --------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    images: int = 0  # images considered (after --limit) by this process
    already_done: int = 0
    written: int = 0
    rejected: int = 0
    out_rows_total: int = 0  # rows in --out after the run (main process)
    rejects_total: int = 0
    out: Path | None = None
    rejects: Path | None = None


def _check_output_location(config: CaptionConfig) -> None:
    for flag, path in (("--out", config.out), ("--rejects", config.rejects), ("--yaml", config.yaml)):
        if path is None:
            continue
        if path.exists() and path.is_dir():
            raise SystemExit(f"error: {flag} {path} is a folder; give a file name such as {path / 'pairs.jsonl'}")
        if not path.parent.exists():
            raise SystemExit(
                f"error: {flag} {path}: folder {path.parent} does not exist; "
                f"create it first (mkdir -p {path.parent}) or choose another path"
            )


def run_pipeline(
    config: CaptionConfig,
    captioner: Captioner | None = None,
    rewriter: Rewriter | None = None,
    process_state: Any = None,
) -> RunSummary:
    """Run the preset on ``config.images``; resumable (see module doc).

    ``captioner`` (images -> captions) and ``rewriter`` (captions, seed -> rewrites) replace
    the LLaVA / Llama models when given, e.g. for tests or another model family; a model is
    only loaded for a stage that has pending work and no injected function.
    """
    if config.preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {config.preset!r}")
    _check_output_location(config)
    candidates = list_images(config.images, config.limit)

    needs_models = config.preset == "caption" and (captioner is None or rewriter is None)
    state = process_state or default_process_state(needs_models, config.device)
    several = state.num_processes > 1
    out_path, rejects_path, cache_path = config.out, config.rejects_path, config.caption_cache_path

    if state.is_main_process:
        # Fold shards a crashed multi-process run left behind into the main files, so the
        # done-set below is complete.
        _merge_shards(config)
        if config.retry_rejects:
            names = {item.name for item in candidates}
            kept = [row for row in read_rows(rejects_path) if row["image_name"] not in names]
            write_rows_atomically(rejects_path, kept)
    state.wait_for_everyone()

    done = {row_key(row) for row in read_rows(out_path)} | {row_key(row) for row in read_rows(rejects_path)}
    summary = RunSummary(out=out_path, rejects=rejects_path)
    # Split the full candidate list (not the pending one): each process's share is then
    # fixed whatever the others write meanwhile, so no image is done twice.
    with state.split_between_processes(candidates) as share:
        share = list(share)
    summary.images = len(share)

    rank = state.process_index
    writer = RowWriter(
        shard_path(out_path, rank) if several else out_path,
        shard_path(rejects_path, rank) if several else rejects_path,
    )
    try:
        pending = _pending_images(share, done, writer, summary)
        show_progress = config.progress and state.is_main_process
        if config.preset == "cat2dog":
            _run_cat2dog(pending, writer, show_progress)
        elif config.preset == "caption":
            if pending:
                cache_file = shard_path(cache_path, rank) if several else cache_path
                _run_model_stages(config, pending, writer, cache_path, cache_file, captioner, rewriter,
                                  state, show_progress)
        else:
            raise ValueError(f"preset must be one of {PRESETS}, got {config.preset!r}")
        summary.written, summary.rejected = writer.written, writer.rejected
    finally:
        writer.close()

    state.wait_for_everyone()
    if state.is_main_process:
        if several:
            _merge_shards(config)
        _report(config, summary)
    return summary


def _merge_shards(config: CaptionConfig) -> None:
    """Fold the per-process shards of the rows, rejects and caption cache into the main files."""
    for path, key in ((config.out, row_key), (config.rejects_path, row_key), (config.caption_cache_path, _cache_key)):
        merge_rows(path, shard_paths(path), key)


def _cache_key(row: dict) -> tuple:
    """A stage-1 cache row's key: one caption per image and captioner."""
    return (row["image_name"], row.get("image_sha256"), row.get("captioner"))


def _pending_images(share: list[ImageItem], done: set, writer: RowWriter, summary: RunSummary) -> list[ImageItem]:
    """The images of this process's share still to do: hashed, the done ones counted in
    ``summary``, unreadable files rejected."""
    pending: list[ImageItem] = []
    for item in share:
        hash_image_file(item)
        if item.key in done:
            summary.already_done += 1
        elif item.read_error:
            writer.reject(item, "read", item.read_error)
        else:
            pending.append(item)
    if summary.already_done:
        logger.info("%d of %d images already done (in %s or %s); skipping them",
                    summary.already_done, len(share), summary.out.name, summary.rejects.name)
    return pending


def _report(config: CaptionConfig, summary: RunSummary) -> None:
    """After the run (main process): totals into ``summary``, the yaml export, the closing log line."""
    summary.out_rows_total = len(read_rows(summary.out))
    summary.rejects_total = len(read_rows(summary.rejects))
    if config.yaml:
        count = export_flowedit_yaml(summary.out, config.yaml)
        logger.info("wrote %d edits to %s", count, config.yaml)
    logger.info(
        "done: %d new pairs, %d new rejects (this process); %s now has %d pairs, %s has %d rejects",
        summary.written, summary.rejected, summary.out, summary.out_rows_total,
        summary.rejects, summary.rejects_total,
    )


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not enabled)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _image_fields(item: ImageItem, size: Sequence[int]) -> dict:
    """The fields every pair row starts with: which image it was made from."""
    return {"image": str(item.path), "image_name": item.name, "image_sha256": item.sha256, "image_size": list(size)}


def _run_cat2dog(pending: list[ImageItem], writer: RowWriter, show_progress: bool) -> None:
    span = check_rewrite(CAT2DOG_SOURCE_PROMPT, CAT2DOG_TARGET_PROMPT).span
    for item in _progress(pending, len(pending), "cat2dog", show_progress):
        try:
            _, size = open_image(item.path)
        except IMAGE_ERRORS as error:
            writer.reject(item, "read", f"unreadable image: {error}")
            continue
        writer.write({
            **_image_fields(item, size),
            "source_prompt": CAT2DOG_SOURCE_PROMPT,
            "target_prompt": CAT2DOG_TARGET_PROMPT,
            "changed_span": span.as_dict(),
            "models": {"captioner": None, "rewriter": None},
            "generation": {"preset": "cat2dog"},
        })


# --------------------------------------------------------------------------------------
# The caption preset's two model stages
# --------------------------------------------------------------------------------------


@dataclass
class StageContext:
    """What the two model stages of one process's run share."""

    config: CaptionConfig
    writer: RowWriter
    device: Any  # the torch.device models are loaded on; None when both models are injected
    dtype: Any
    show_progress: bool


def _run_model_stages(
    config: CaptionConfig,
    pending: list[ImageItem],
    writer: RowWriter,
    cache_path: Path,
    cache_file: Path,
    captioner: Captioner | None,
    rewriter: Rewriter | None,
    state: Any,
    show_progress: bool,
) -> None:
    """Stage 1 (LLaVA captions) then stage 2 (Llama rewrites) for this process's pending images."""
    device = dtype = None
    if captioner is None or rewriter is None:
        device = resolve_device(config.device, state)
        dtype = resolve_dtype(config.dtype, device)
        logger.info("models run on %s in %s", device, str(dtype).removeprefix("torch."))
    stages = StageContext(config=config, writer=writer, device=device, dtype=dtype, show_progress=show_progress)
    captions = run_caption_stage(stages, pending, captioner, cache_path, cache_file)
    # Images without a caption were unreadable or got an empty caption: both are in the
    # rejects already.
    jobs = [(item, captions[item.key]) for item in pending if item.key in captions]
    if jobs:
        run_rewrite_stage(stages, jobs, rewriter)


def _cached_captions(cache_path: Path, captioner_id: str) -> dict[tuple, dict]:
    """Stage-1 cache rows (main file and shards) of this captioner and prompt, by image key."""
    cached: dict[tuple, dict] = {}
    for path in [cache_path, *shard_paths(cache_path)]:
        for row in read_rows(path):
            if row.get("captioner") == captioner_id and row.get("prompt") == CAPTION_PROMPT:
                cached[row_key(row)] = row
    return cached


def run_caption_stage(
    stages: StageContext, pending: list[ImageItem], captioner: Captioner | None, cache_path: Path, cache_file: Path
) -> dict[tuple, dict]:
    """Stage 1: captions of the pending images, cached (appended to ``cache_file``, this process's
    part of ``cache_path``) so that a crash in stage 2 does not redo them. Returns the cache rows
    by image key. ``captioner`` None: LLaVA is loaded, only if some image has no cached caption,
    and dropped at the end so that stage 2 has the GPU memory."""
    config, writer = stages.config, stages.writer
    captioner_id = config.captioner if captioner is None else describe_model(captioner, "injected")[0]
    cached = _cached_captions(cache_path, captioner_id)
    to_caption = [item for item in pending if item.key not in cached]
    if not to_caption:
        return cached
    loaded_here = captioner is None
    if loaded_here:
        captioner = LlavaCaptioner(
            config.captioner, stages.device, stages.dtype, config.load_in_4bit in ("captioner", "both"),
            config.caption_max_new_tokens,
        )
    captioner_settings = describe_model(captioner, "injected")[1]
    captioner_settings["max_image_side"] = config.max_image_side
    with JsonlAppender(cache_file) as cache:
        bar = _progress(None, len(to_caption), "stage 1: LLaVA captions", stages.show_progress)
        for batch in _batches(to_caption, config.batch_size):
            for item, size, caption in _caption_batch(batch, captioner, config.max_image_side, writer):
                if not caption.strip():
                    # Not cached: a later --retry-rejects run captions it again.
                    writer.reject(item, "caption", "the captioner returned an empty caption",
                                  models={"captioner": captioner_id})
                    continue
                row = {
                    "image_name": item.name, "image_sha256": item.sha256, "image_size": list(size),
                    "captioner": captioner_id, "prompt": CAPTION_PROMPT, "caption": caption,
                    "settings": captioner_settings,
                }
                cache.append(row)
                cached[item.key] = row
            bar.update(len(batch))
        bar.close()
    if loaded_here:
        captioner = None  # stage 2 may need the GPU memory: drop LLaVA before Llama loads
        release_memory()
    return cached


def _caption_batch(
    batch: list[ImageItem], captioner: Captioner, max_side: int, writer: RowWriter
) -> list[tuple[ImageItem, tuple[int, int], str]]:
    """Open a batch's images (unreadable ones are rejected) and caption them in one call:
    (item, original size, caption) per readable image."""
    readable, images = [], []
    for item in batch:
        try:
            image, size = open_image(item.path, max_side)
        except IMAGE_ERRORS as error:
            writer.reject(item, "read", f"unreadable image: {error}")
            continue
        readable.append((item, size))
        images.append(image)
    captions = list(captioner(images)) if images else []
    if len(captions) != len(images):
        raise RuntimeError(f"captioner returned {len(captions)} captions for {len(images)} images")
    return [(item, size, caption) for (item, size), caption in zip(readable, captions)]


def run_rewrite_stage(stages: StageContext, jobs: list[tuple[ImageItem, dict]], rewriter: Rewriter | None) -> None:
    """Stage 2: each caption (``jobs``: image and its stage-1 cache row) is rewritten so that one
    concept changes; a valid rewrite becomes a pair row, an image without one after
    ``max_retries`` more seeds is rejected. ``rewriter`` None: the chat LLM (Llama) is loaded."""
    config = stages.config
    if rewriter is None:
        rewriter = ChatRewriter(
            config.rewriter, stages.device, stages.dtype, config.load_in_4bit in ("rewriter", "both"),
            config.rewrite_max_new_tokens, config.temperature, config.top_p,
        )
    rewriter_id, rewriter_settings = describe_model(rewriter, "injected")
    bar = _progress(None, len(jobs), "stage 2: Llama rewrites", stages.show_progress)
    for batch in _batches(jobs, config.batch_size):
        _rewrite_batch(stages, batch, rewriter, rewriter_id, rewriter_settings, bar)
    bar.close()


def _rewrite_batch(stages: StageContext, batch: list[tuple[ImageItem, dict]], rewriter: Rewriter,
                   rewriter_id: str, rewriter_settings: dict, bar) -> None:
    """Rewrite a batch of captions, retrying the invalid rewrites with the next seed."""
    config, writer, rules = stages.config, stages.writer, stages.config.rewrite_rules
    attempts: dict[str, list[dict]] = {item.name: [] for item, _ in batch}
    remaining = batch
    for attempt in range(config.max_retries + 1):
        if not remaining:
            break
        seed = config.seed + attempt
        rewrites = list(rewriter([row["caption"] for _, row in remaining], seed))
        if len(rewrites) != len(remaining):
            raise RuntimeError(f"rewriter returned {len(rewrites)} rewrites for {len(remaining)} captions")
        failed = []
        for (item, cache_row), rewrite in zip(remaining, rewrites):
            rewrite = rewrite.strip()
            verdict = check_rewrite(cache_row["caption"], rewrite, rules)
            if not verdict.ok:
                attempts[item.name].append({"seed": seed, "rewrite": rewrite, "reason": verdict.reason})
                failed.append((item, cache_row))
                continue
            generation = {**rewriter_settings, "seed": seed, "attempt": attempt, "max_retries": config.max_retries}
            writer.write(_pair_row(item, cache_row, rewrite, verdict.span, rewriter_id, generation, rules))
            bar.update(1)
        remaining = failed
    for item, cache_row in remaining:
        tries = attempts[item.name]
        writer.reject(
            item, "rewrite",
            f"no valid rewrite in {len(tries)} attempts (last: {tries[-1]['reason']})",
            source_prompt=cache_row["caption"], attempts=tries,
            models={"captioner": cache_row["captioner"], "rewriter": rewriter_id},
        )
        bar.update(1)


def _pair_row(item: ImageItem, cache_row: dict, rewrite: str, span, rewriter_id: str, rewriter_generation: dict,
              rules: RewriteRules) -> dict:
    """The output row of a valid rewrite: the image, both prompts, the changed span and how
    each was made."""
    return {
        **_image_fields(item, cache_row["image_size"]),
        "source_prompt": cache_row["caption"],
        "target_prompt": rewrite,
        "changed_span": span.as_dict(),
        "models": {"captioner": cache_row["captioner"], "rewriter": rewriter_id},
        "generation": {
            "captioner": cache_row.get("settings", {}),
            "rewriter": rewriter_generation,
            "validation": {"max_span_words": rules.max_span_words,
                           "allow_colour_change": rules.allow_colour_change},
        },
    }


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _export_yaml_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.caption export-yaml",
        description="Write FlowEdit's edits.yaml format from a caption JSONL file.",
    )
    parser.add_argument("--jsonl", type=Path, required=True, help="rows written by the caption pipeline")
    parser.add_argument("--yaml", type=Path, required=True, help="edits.yaml to write")
    args = parser.parse_args(argv)
    count = export_flowedit_yaml(args.jsonl, args.yaml)
    print(f"wrote {count} edits to {args.yaml}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export-yaml"]:
        return _export_yaml_main(argv[1:])
    config = config_from_args(parse_args(argv))
    run_pipeline(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
