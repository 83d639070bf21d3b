"""The caption pipeline's two models, and loading them: ``LlavaCaptioner`` (stage 1, LLaVA
describes an image with the paper's prompt) and ``ChatRewriter`` (stage 2, a chat LLM rewrites the
caption so that one concept changes), both batched with left padding; the device and dtype they
run in; 4-bit loading; and giving a dropped model's GPU memory back.

torch and transformers are imported where a model is loaded or run, so that importing this module
(``--help``, the model-free cat2dog preset) stays quick.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from data_prep.prompts import CAPTION_PROMPT, build_rewrite_chat

DEFAULT_CAPTIONER = "llava-hf/llava-1.5-13b-hf"  # the paper: llava-v1.5-13b in 4 bit
DEFAULT_REWRITER = "meta-llama/Llama-3.1-8B-Instruct"

# --------------------------------------------------------------------------------------
# Device and dtype (resolved once, at the start of a run), and loading
# --------------------------------------------------------------------------------------


def resolve_device(spec: str, process_state: Any = None):
    """``--device`` for this process (under ``accelerate launch``, the one accelerate assigned);
    a bad value exits with the reason."""
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
        self.last_texts: list[str] = []  # the prompts of the last ``generate``
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
        return self.generate([build_rewrite_chat(caption) for caption in captions], captions, seed)

    def generate(self, chats: Sequence[list[dict[str, str]]], captions: Sequence[str], seed: int) -> list[str]:
        """One sampled answer per chat (``captions``: the caption each chat rewrites, for the length
        budget); ``last_texts`` keeps the prompts the model was given."""
        import torch

        texts = [self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
        self.last_texts = texts
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


def describe_model(component: Any, fallback: str) -> tuple[str, dict]:
    """Model id and settings recorded in the rows, also for injected functions."""
    model_id = getattr(component, "model_id", None) or f"custom:{getattr(component, '__name__', type(component).__name__)}"
    return model_id, dict(getattr(component, "settings", {}) or {"source": fallback})


def release_memory() -> None:
    """Give a dropped model's memory back (call after the last reference is gone)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # no model was loaded: torch may not even be installed
        pass
