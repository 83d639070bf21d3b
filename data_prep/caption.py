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
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from PIL import Image

from data_prep.jsonl_store import (
    JsonlAppender,
    merge_rows,
    read_rows,
    write_rows_atomically,
    write_text_atomically,
)
from data_prep.rewrite_check import RewriteRules, check_rewrite
from softrepa.cli_types import int_at_least
from softrepa.images import load_rgb

logger = logging.getLogger("data_prep.caption")

# --------------------------------------------------------------------------------------
# The paper's prompts, verbatim (SoftREPA paper, Appendix C "Prompt for Editing dataset").
# Typography (curly quotes, em dash) is kept as printed in the paper.
# --------------------------------------------------------------------------------------

# Appendix C: the text prompt given to LLaVA with each image.
CAPTION_PROMPT = "Describe the object and background in the image"

# Appendix C: the instruction given to Llama (the rules, up to the example).
REWRITE_INSTRUCTION = (
    "You are an AI assistant for generating paired text prompts for real image editing tasks. "
    "Your goal is to modify a given text description by replacing an object with other while "
    "strictly following these rules:\n\n"
    "\u2022 1) Modify only one object (i.e., a single meaningful concept such as an object). "
    "It could be small object.\n\n"
    "\u2022 2) The replacement must be significantly different from the original concept but "
    "contextually appropriate. Avoid unrealistic substitutions (e.g., changing \u201drabbit on "
    "grass\u201d to \u201drocket on grass\u201d).\n\n"
    "\u2022 3) Ensure diversity in word choices across different modifications.\n\n"
    "\u2022 4) Preserve all other words exactly as they are. Do not change sentence structure, "
    "introduce new elements, or modify additional details.\n\n"
    "\u2022 5) Do not provide any additional words\u2014output only the modified text description.\n\n"
    "\u2022 6) Do not change or add colors. Specifically, when modifying a building, change only "
    "the appearance, not the type of building (e.g., do not change \u201dbuilding\u201d to "
    "\u201dchurch\u201d or \u201dlighthouse\u201d).\n\n"
    "\u2022 7) Modify only one feature at a time. If changing an object (e.g., \u201dstarfish\u201d "
    "to \u201dsea turtle\u201d), do not alter its color, shape, or other attributes."
)

# Appendix C: the example that follows "Example:" in the instruction (Input / Output).
REWRITE_EXAMPLE_INPUT = (
    "The image features a close-up of a brown dog with a blue nose. The dog is standing in a "
    "grassy field, and the background is blurred, creating a focus on the dog\u2019s face. The "
    "dog\u2019s ears are perked up, and its eyes are open, giving it a curious and attentive "
    "expression. The dog\u2019s fur is brown, and the grass in the background is green, creating "
    "a natural and vibrant scene."
)
REWRITE_EXAMPLE_OUTPUT = (
    "The image features a close-up of a brown fox with a blue nose. The fox is standing in a "
    "grassy field, and the background is blurred, creating a focus on the fox\u2019s face. The "
    "fox\u2019s ears are perked up, and its eyes are open, giving it a curious and attentive "
    "expression. The fox\u2019s fur is brown, and the grass in the background is green, creating "
    "a natural and vibrant scene."
)

# The paper's second editing set (Cat2Dog): every cat photo gets this fixed pair.
CAT2DOG_SOURCE_PROMPT = "a photo of a cat"
CAT2DOG_TARGET_PROMPT = "a photo of a dog"

DEFAULT_CAPTIONER = "llava-hf/llava-1.5-13b-hf"  # the paper: llava-v1.5-13b in 4 bit
DEFAULT_REWRITER = "meta-llama/Llama-3.1-8B-Instruct"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PRESETS = ("caption", "cat2dog")
DTYPES = ("auto", "float32", "bfloat16", "float16")
FOUR_BIT_CHOICES = ("none", "captioner", "rewriter", "both")

# Test hook: exit hard (no cleanup, like a crash) after this many rows are written.
CRASH_AFTER_ROWS_ENV = "SOFTREPA_CAPTION_CRASH_AFTER_ROWS"
CRASH_EXIT_CODE = 75


def build_rewrite_chat(caption: str) -> list[dict[str, str]]:
    """The stage-2 chat: the paper's instruction as the system message, the paper's
    example as one user/assistant exchange, then the caption to rewrite.

    The paper prints the example inline ("Example: Input: ... Output: ..."). In a chat the
    assistant turn IS the output, so the example answer is given without an "Output:"
    label; the model then answers with the description alone, which the validator requires.
    """
    return [
        {"role": "system", "content": REWRITE_INSTRUCTION},
        {"role": "user", "content": f"Input: {REWRITE_EXAMPLE_INPUT}"},
        {"role": "assistant", "content": REWRITE_EXAMPLE_OUTPUT},
        {"role": "user", "content": f"Input: {caption}"},
    ]


# --------------------------------------------------------------------------------------
# Configuration
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


def shard_path(path: Path, process_index: int) -> Path:
    """Where process ``process_index`` of a multi-process run writes rows meant for ``path``."""
    return path.with_name(f"{path.stem}.rank{process_index}{path.suffix}")


def shard_paths(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{glob_escape(path.stem)}.rank*{glob_escape(path.suffix)}"))


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


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


class SingleProcess:
    """The subset of ``accelerate.PartialState`` the pipeline uses, for a plain run
    (no torch import needed, e.g. for the cat2dog preset)."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    @contextmanager
    def split_between_processes(self, inputs: list) -> Iterator[list]:
        yield inputs


def default_process_state(needs_models: bool, device_spec: str = "auto"):
    """``accelerate.PartialState`` when launched with several processes or when models run
    (it also knows each process's device); a no-op stand-in otherwise."""
    launched_world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not (needs_models or launched_world_size > 1):
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
# Device and dtype (resolved once, at the start of a run)
# --------------------------------------------------------------------------------------


def resolve_device(spec: str, process_state: Any = None):
    from softrepa.runtime import process_device

    try:
        return process_device(spec, process_state)
    except ValueError as exc:
        raise SystemExit(f"error: --device: {exc}") from None


def resolve_dtype(spec: str, device):
    """``auto``: bfloat16 where CUDA supports it (LLaVA / Llama are released in bf16), else float16/float32."""
    import torch

    from softrepa.runtime import resolve_dtype as resolve

    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return resolve(spec, device, accelerator_dtype=torch.bfloat16 if bf16 else torch.float16)


def _load_kwargs(device, dtype, load_in_4bit: bool) -> dict:
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        if device.type != "cuda":
            raise SystemExit(
                f"error: --load-in-4bit needs a CUDA GPU (bitsandbytes), but this run is on {device}. "
                "Drop --load-in-4bit (the 13B LLaVA then needs ~26 GB in bfloat16) or run on a CUDA machine."
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SystemExit("error: --load-in-4bit needs the bitsandbytes package: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}  # load straight onto the GPU (required for 4 bit)
    return kwargs


def _load_or_explain(loader: Callable[[], Any], what: str, model_id: str):
    try:
        return loader()
    except OSError as error:
        raise SystemExit(
            f"error: could not load the {what} {model_id!r}: {error}\n"
            f"Pass a local folder (--{what} DIR) or check Hub access (gated models such as Llama need "
            "an accepted licence and `huggingface-cli login`)."
        ) from None


def _pad_left(tokenizer) -> None:
    """Left padding, with EOS as the pad token when there is none: decoder-only batched
    generation continues after the prompt."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _load_generator(model_class, what: str, model_id: str, device, dtype, load_in_4bit: bool):
    """``model_class.from_pretrained(model_id)`` with ``_load_kwargs``, on ``device``, in eval mode."""
    model = _load_or_explain(
        lambda: model_class.from_pretrained(model_id, **_load_kwargs(device, dtype, load_in_4bit)), what, model_id
    )
    if device.type != "cuda":
        model.to(device)
    model.eval()
    return model


# --------------------------------------------------------------------------------------
# The two models
# --------------------------------------------------------------------------------------

Captioner = Callable[[Sequence[Image.Image]], Sequence[str]]
Rewriter = Callable[[Sequence[str], int], Sequence[str]]


def _tidy_caption(text: str) -> str:
    text = " ".join(text.split())  # one line: prompts are single-line text
    # A caption cut by max_new_tokens ends mid-sentence: keep the complete sentences.
    if text and text[-1] not in ".!?\"'\u201d" and "." in text:
        text = text[: text.rindex(".") + 1]
    return text


class LlavaCaptioner:
    """Stage 1: LLaVA (``LlavaForConditionalGeneration``) answers the paper's prompt for a
    batch of images; greedy decoding, left padding."""

    def __init__(self, model_id: str, device, dtype, load_in_4bit: bool, max_new_tokens: int):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.model_id = model_id
        self.device = device
        self.processor = _load_or_explain(lambda: AutoProcessor.from_pretrained(model_id), "captioner", model_id)
        _pad_left(self.processor.tokenizer)
        self.model = _load_generator(LlavaForConditionalGeneration, "captioner", model_id, device, dtype, load_in_4bit)
        self.max_new_tokens = max_new_tokens
        self.prompt = self._prompt_text()
        self.settings = {
            "prompt": CAPTION_PROMPT,
            "do_sample": False,
            "max_new_tokens": max_new_tokens,
            "dtype": str(dtype).removeprefix("torch."),
            "load_in_4bit": load_in_4bit,
        }

    def _prompt_text(self) -> str:
        conversation = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}
        ]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        return f"USER: <image>\n{CAPTION_PROMPT} ASSISTANT:"  # the llava-1.5 conversation format

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        import torch

        inputs = self.processor(
            images=list(images), text=[self.prompt] * len(images), return_tensors="pt", padding=True
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [_tidy_caption(text) for text in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]


class ChatRewriter:
    """Stage 2: a chat LLM (Llama-3.1-8B-Instruct by default) rewrites captions with the
    paper's instruction and example, sampling with the given seed."""

    def __init__(self, model_id: str, device, dtype, load_in_4bit: bool, max_new_tokens: int,
                 temperature: float, top_p: float):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model_id
        self.device = device
        self.tokenizer = _load_or_explain(lambda: AutoTokenizer.from_pretrained(model_id), "rewriter", model_id)
        if not getattr(self.tokenizer, "chat_template", None):
            raise SystemExit(
                f"error: --rewriter {model_id!r} has no chat template; use an instruction-tuned chat "
                f"model such as {DEFAULT_REWRITER}"
            )
        _pad_left(self.tokenizer)
        self.model = _load_generator(AutoModelForCausalLM, "rewriter", model_id, device, dtype, load_in_4bit)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.settings = {
            "chat": "system=instruction, user/assistant=paper example, user='Input: <caption>'",
            "do_sample": True,
            "temperature": temperature,
            "top_p": top_p,
            "max_new_tokens": max_new_tokens,
            "dtype": str(dtype).removeprefix("torch."),
            "load_in_4bit": load_in_4bit,
        }

    def __call__(self, captions: Sequence[str], seed: int) -> list[str]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(build_rewrite_chat(caption), add_generation_prompt=True, tokenize=False)
            for caption in captions
        ]
        # Chat templates (Llama 3) already start with the BOS token: do not add a second one.
        bos = self.tokenizer.bos_token
        add_special = not (bos and texts[0].startswith(bos))
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(self.device)
        # The answer is the caption with one concept swapped: it never needs much more
        # room than the caption, and the cap stops a rambling sample early.
        longest_caption = max(len(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in captions)
        budget = min(self.max_new_tokens, int(1.5 * longest_caption) + 16)
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=budget,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _describe(component: Any, fallback: str) -> tuple[str, dict]:
    """Model id and settings recorded in the rows, also for injected functions."""
    model_id = getattr(component, "model_id", None) or f"custom:{getattr(component, '__name__', type(component).__name__)}"
    return model_id, dict(getattr(component, "settings", {}) or {"source": fallback})


def _release_memory() -> None:
    """Give a dropped model's memory back (call after the last reference is gone)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # cat2dog runs never import torch
        pass


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


@dataclass
class ImageItem:
    path: Path  # as found under --images (relative stays relative)
    name: str  # path relative to --images, POSIX style: the stable part of the key
    sha256: str | None = None
    read_error: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.sha256)


def row_key(row: dict) -> tuple[str, str | None]:
    return (row["image_name"], row.get("image_sha256"))


def list_images(folder: Path, limit: int | None = None) -> list[ImageItem]:
    if not folder.exists():
        raise SystemExit(f"error: --images {folder}: no such folder")
    if not folder.is_dir():
        raise SystemExit(f"error: --images {folder}: not a folder (give the folder that holds the images)")
    # hidden files and folders are skipped: editor metadata, and the project's own atomic-write
    # temp files (".name.tmp-XXXX.png") that a killed process can leave behind
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise SystemExit(
            f"error: no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}. "
            "Point --images at the unpacked image folder (for DIV2K: DIV2K_train_HR)."
        )
    if limit is not None:
        paths = paths[:limit]
    return [ImageItem(path=p, name=p.relative_to(folder).as_posix()) for p in paths]


def hash_image_file(item: ImageItem) -> None:
    try:
        item.sha256 = hashlib.sha256(item.path.read_bytes()).hexdigest()
    except OSError as error:
        item.read_error = f"cannot read the file: {error.strerror or error}"


def open_image(path: Path, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Upright RGB image (downscaled to ``max_side`` on its long side) and its ORIGINAL size."""
    rgb = load_rgb(path)  # any mode -> RGB, EXIF orientation, clear errors for bad files
    size = rgb.size
    if max_side and max(size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb, size


_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # ImageInputError is a ValueError


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


class RowWriter:
    """Appends finished rows and rejects (each durable on return) and counts them."""

    def __init__(self, rows_path: Path, rejects_path: Path):
        self.rows = JsonlAppender(rows_path)
        self.rejects = JsonlAppender(rejects_path)
        self.written = 0
        self.rejected = 0
        crash_after = os.environ.get(CRASH_AFTER_ROWS_ENV)
        self._crash_after = int(crash_after) if crash_after else None

    def _after_write(self) -> None:
        if self._crash_after is not None and self.written + self.rejected >= self._crash_after:
            logger.error("%s=%d reached: exiting hard (test hook)", CRASH_AFTER_ROWS_ENV, self._crash_after)
            os._exit(CRASH_EXIT_CODE)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.written += 1
        self._after_write()

    def reject(self, item: ImageItem, stage: str, reason: str, **details: Any) -> None:
        logger.warning("rejected %s (%s): %s", item.name, stage, reason)
        self.rejects.append(
            {"image": str(item.path), "image_name": item.name, "image_sha256": item.sha256,
             "stage": stage, "reason": reason, **details}
        )
        self.rejected += 1
        self._after_write()

    def close(self) -> None:
        self.rows.close()
        self.rejects.close()


def _target_code(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "edit"


def export_flowedit_yaml(jsonl_path: Path, yaml_path: Path) -> int:
    """Write FlowEdit's ``edits.yaml`` format (a list of ``input_img``, ``source_prompt``,
    ``target_prompts``, ``target_codes``) for the rows of ``jsonl_path``; returns the count."""
    import yaml

    if not jsonl_path.exists():
        raise SystemExit(f"error: --jsonl {jsonl_path}: no such file (run the caption pipeline first)")
    if not yaml_path.parent.exists():
        raise SystemExit(f"error: --yaml {yaml_path}: folder {yaml_path.parent} does not exist; create it first")
    latest_by_image: dict[str, dict] = {}
    for row in read_rows(jsonl_path):
        latest_by_image[row["image"]] = row  # an image re-run after an edit keeps its last row
    entries = [
        {
            "input_img": row["image"],
            "source_prompt": row["source_prompt"],
            "target_prompts": [row["target_prompt"]],
            "target_codes": [_target_code((row.get("changed_span") or {}).get("target", "edit"))],
        }
        for row in latest_by_image.values()
    ]
    write_text_atomically(yaml_path, yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=10**6))
    return len(entries)


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
        for path, key in ((out_path, row_key), (rejects_path, row_key), (cache_path, _cache_key)):
            merge_rows(path, shard_paths(path), key)
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
                        summary.already_done, len(share), out_path.name, rejects_path.name)

        show_progress = config.progress and state.is_main_process
        if config.preset == "cat2dog":
            _run_cat2dog(pending, writer, show_progress)
        elif pending:
            cache_file = shard_path(cache_path, rank) if several else cache_path
            _run_caption_pipeline(config, pending, writer, cache_path, cache_file, captioner, rewriter,
                                  state, show_progress)
        summary.written, summary.rejected = writer.written, writer.rejected
    finally:
        writer.close()

    state.wait_for_everyone()
    if state.is_main_process:
        if several:
            for path, key in ((out_path, row_key), (rejects_path, row_key), (cache_path, _cache_key)):
                merge_rows(path, shard_paths(path), key)
        summary.out_rows_total = len(read_rows(out_path))
        summary.rejects_total = len(read_rows(rejects_path))
        if config.yaml:
            count = export_flowedit_yaml(out_path, config.yaml)
            logger.info("wrote %d edits to %s", count, config.yaml)
        logger.info(
            "done: %d new pairs, %d new rejects (this process); %s now has %d pairs, %s has %d rejects",
            summary.written, summary.rejected, out_path, summary.out_rows_total,
            rejects_path, summary.rejects_total,
        )
    return summary


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not enabled)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _run_cat2dog(pending: list[ImageItem], writer: RowWriter, show_progress: bool) -> None:
    span = check_rewrite(CAT2DOG_SOURCE_PROMPT, CAT2DOG_TARGET_PROMPT).span
    for item in _progress(pending, len(pending), "cat2dog", show_progress):
        try:
            _, size = open_image(item.path)
        except _IMAGE_ERRORS as error:
            writer.reject(item, "read", f"unreadable image: {error}")
            continue
        writer.write({
            "image": str(item.path),
            "image_name": item.name,
            "image_sha256": item.sha256,
            "image_size": list(size),
            "source_prompt": CAT2DOG_SOURCE_PROMPT,
            "target_prompt": CAT2DOG_TARGET_PROMPT,
            "changed_span": span.as_dict(),
            "models": {"captioner": None, "rewriter": None},
            "generation": {"preset": "cat2dog"},
        })


def _cache_key(row: dict) -> tuple:
    return (row["image_name"], row.get("image_sha256"), row.get("captioner"))


def _run_caption_pipeline(
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
    device = dtype = None
    if captioner is None or rewriter is None:
        device = resolve_device(config.device, state)
        dtype = resolve_dtype(config.dtype, device)
        logger.info("models run on %s in %s", device, str(dtype).removeprefix("torch."))

    # ---- stage 1: captions (cached, so that a crash in stage 2 does not redo them)
    captioner_id = config.captioner if captioner is None else _describe(captioner, "injected")[0]
    cached: dict[tuple, dict] = {}
    for path in [cache_path, *shard_paths(cache_path)]:
        for row in read_rows(path):
            if row.get("captioner") == captioner_id and row.get("prompt") == CAPTION_PROMPT:
                cached[(row["image_name"], row.get("image_sha256"))] = row
    to_caption = [item for item in pending if item.key not in cached]
    if to_caption:
        loaded_here = captioner is None
        if loaded_here:
            captioner = LlavaCaptioner(
                config.captioner, device, dtype, config.load_in_4bit in ("captioner", "both"),
                config.caption_max_new_tokens,
            )
        captioner_settings = _describe(captioner, "injected")[1]
        captioner_settings["max_image_side"] = config.max_image_side
        with JsonlAppender(cache_file) as cache:
            bar = _progress(None, len(to_caption), "stage 1: LLaVA captions", show_progress)
            for batch in _batches(to_caption, config.batch_size):
                readable, images = [], []
                for item in batch:
                    try:
                        image, size = open_image(item.path, config.max_image_side)
                    except _IMAGE_ERRORS as error:
                        writer.reject(item, "read", f"unreadable image: {error}")
                        continue
                    readable.append((item, size))
                    images.append(image)
                captions = list(captioner(images)) if images else []
                if len(captions) != len(images):
                    raise RuntimeError(f"captioner returned {len(captions)} captions for {len(images)} images")
                for (item, size), caption in zip(readable, captions):
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
            _release_memory()

    # ---- stage 2: rewrites, validated, retried with new seeds
    # Images without a cached caption were unreadable or got an empty caption: both are
    # in the rejects already.
    jobs = [(item, cached[item.key]) for item in pending if item.key in cached]
    if not jobs:
        return
    if rewriter is None:
        rewriter = ChatRewriter(
            config.rewriter, device, dtype, config.load_in_4bit in ("rewriter", "both"),
            config.rewrite_max_new_tokens, config.temperature, config.top_p,
        )
    rewriter_id, rewriter_settings = _describe(rewriter, "injected")
    rules = config.rewrite_rules
    bar = _progress(None, len(jobs), "stage 2: Llama rewrites", show_progress)
    for batch in _batches(jobs, config.batch_size):
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
                writer.write({
                    "image": str(item.path),
                    "image_name": item.name,
                    "image_sha256": item.sha256,
                    "image_size": cache_row["image_size"],
                    "source_prompt": cache_row["caption"],
                    "target_prompt": rewrite,
                    "changed_span": verdict.span.as_dict(),
                    "models": {"captioner": cache_row["captioner"], "rewriter": rewriter_id},
                    "generation": {
                        "captioner": cache_row.get("settings", {}),
                        "rewriter": {**rewriter_settings, "seed": seed, "attempt": attempt,
                                     "max_retries": config.max_retries},
                        "validation": {"max_span_words": rules.max_span_words,
                                       "allow_colour_change": rules.allow_colour_change},
                    },
                })
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
    bar.close()


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
