"""Prompt help for the web editor (issue #16): **Describe** writes the source prompt from the image, and
**Instruction -> target** turns a one-line instruction ("make the square an outline") and the source
prompt into the target prompt, with the one-concept validator's verdict for the person to accept or
change.

What this module implements
---------------------------
* ``pick_describer(settings)`` / ``pick_instructor(settings)``: the helper for the app's settings, or
  None when there is none (the page hides the control). The shapes model (kind ``shapes-sd3``) gets
  ``ShapesDescriber`` / ``ShapesInstructor``, always: no model, no download (``shapes/describe.py``:
  the ground-truth classifier reads the image, the world's caption grammar writes it; its docstring
  says why an instruction can be applied there without a language model, honestly). Other models get
  ``LlavaDescriber`` only when ``--captioner MODEL`` / ``SOFTREPA_CAPTIONER`` names a LLaVA checkpoint,
  and ``LlmInstructor`` only when ``--rewriter MODEL`` / ``SOFTREPA_REWRITER`` names a chat model.
* ``LlavaDescriber``: data_prep's ``LlavaCaptioner`` with the paper's prompt ("Describe the object and
  background in the image", greedy), loaded on first use on the app's device.
* ``LlmInstructor``: data_prep's ``ChatRewriter`` settings and loading, asked with
  ``data_prep.prompts.build_instruction_chat`` (the paper's one-concept rules and example, plus the
  instruction), each answer checked with ``data_prep.rewrite_check.check_rewrite`` and a failed one
  retried with the next seed, as the caption pipeline does. Colour changes are allowed by default
  (``RewriterConfig.allow_colour_change``): the paper forbids them to keep its dataset to object swaps,
  but here the person asks for the change.

Errors a person can act on (a model that does not load, an instruction the shapes world cannot apply,
a missing image) raise ``PromptHelpError``, a ``UserInputError`` whose message names the flag or the
control to change; a failed model load is kept and reported again without retrying.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from PIL import Image

from app.controls import UserInputError
from data_prep.caption import CaptionConfig
from data_prep.models import ChatRewriter
from data_prep.prompts import build_instruction_chat
from data_prep.rewrite_check import RewriteRules, check_rewrite
from shapes.describe import DescribeError, describe_edit, describe_scene_image

if TYPE_CHECKING:
    from app.settings import AppSettings

log = logging.getLogger(__name__)

SHAPES_KIND = "shapes-sd3"
CAPTIONER_FLAG = "--captioner / SOFTREPA_CAPTIONER"
REWRITER_FLAG = "--rewriter / SOFTREPA_REWRITER"
MAX_REASON_CHARS = 400  # of a load error in the page's message (the whole error is in the log)


class PromptHelpError(UserInputError):
    """Describe or Instruction -> target cannot run; the message says what to change."""


def _rgb(image: Any) -> Image.Image:
    """The page's image (PIL, numpy array or file path) as RGB; ``PromptHelpError`` when there is none."""
    if image is None:
        raise PromptHelpError("Upload a source image first.")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "shape"):
        return Image.fromarray(image).convert("RGB")
    from softrepa.images import load_rgb

    return load_rgb(image)


class _LazyModel:
    """A model loaded on first ``get()`` (thread-safe). A failed load is kept: every later ``get()``
    raises the same message, naming ``flag``, without trying again."""

    def __init__(self, load: Callable[[], Any], what: str, model_id: str, flag: str, advice: str):
        self._load, self._what, self._model_id, self._flag, self._advice = load, what, model_id, flag, advice
        self._model: Any = None
        self._error: str | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> Any:
        with self._lock:
            if self._model is None and self._error is None:
                log.info("loading the %s %s", self._what, self._model_id)
                try:
                    self._model = self._load()
                except PromptHelpError as exc:  # already says what to change (the device)
                    self._error = str(exc)
                except SystemExit as exc:  # data_prep's loaders exit with a message meant for a command line
                    self._error = self._explain(str(exc.code).removeprefix("error: "))
                except Exception as exc:  # noqa: BLE001 - from_pretrained raises many types; all mean "cannot load"
                    self._error = self._explain(f"{type(exc).__name__}: {exc}")
                if self._error:
                    log.warning("the %s %s did not load: %s", self._what, self._model_id, self._error)
            if self._error is not None:
                raise PromptHelpError(self._error)
            return self._model

    def _explain(self, reason: str) -> str:
        reason = " ".join(reason.split()).rstrip(".")
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + " [...]"
        return (f"The {self._what} {self._model_id!r} (set by {self._flag}) could not be loaded: {reason}. "
                f"{self._advice}")


def _device_and_dtype(device: str, dtype: str):
    """torch device and dtype for a language model: ``auto`` as the caption pipeline resolves it."""
    from data_prep.models import resolve_dtype
    from softrepa.runtime import resolve_device

    try:
        resolved = resolve_device(device)
        return resolved, resolve_dtype(dtype, resolved)
    except ValueError as exc:
        raise PromptHelpError(f"Prompt help cannot run on --device / SOFTREPA_DEVICE {device!r}: {exc}.") from None


# ----------------------------------------------------------------------------- Describe


class Describer(Protocol):
    """Writes the source prompt of an image."""

    name: str  # what the page may show beside the button, e.g. "LLaVA (llava-hf/llava-1.5-13b-hf)"

    def describe(self, image: Any) -> str: ...


class ShapesDescriber:
    """The shapes model's describer: the classifier's reading in the training grammar (shapes/describe.py)."""

    name = "shapes classifier"

    def __init__(self, classifier=None):
        self.classifier = classifier  # None: the shipped one, loaded once on first use

    def describe(self, image: Any) -> str:
        try:
            return describe_scene_image(_rgb(image), self.classifier)
        except DescribeError as exc:
            raise PromptHelpError(str(exc)) from None


@dataclass(frozen=True)
class CaptionerConfig:
    """How ``LlavaDescriber`` runs LLaVA (the caption pipeline's defaults)."""

    max_new_tokens: int = CaptionConfig.caption_max_new_tokens
    max_image_side: int = CaptionConfig.max_image_side  # larger images are downscaled first
    load_in_4bit: bool = False  # bitsandbytes, CUDA only


class LlavaDescriber:
    """The paper's captioner (LLaVA with "Describe the object and background in the image"), loaded on
    first ``describe`` on ``device`` ("auto": CUDA, then MPS, then CPU) in ``dtype``."""

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "auto", config: CaptionerConfig | None = None):
        self.model_id, self.config = model_id, config or CaptionerConfig()
        self.name = f"LLaVA ({model_id})"
        self._model = _LazyModel(lambda: self._load(device, dtype), "captioner", model_id, CAPTIONER_FLAG,
                                 "Give a LLaVA checkpoint in transformers format (a Hub id or a local folder), or "
                                 "unset it to hide the Describe button.")
        self._run_lock = threading.Lock()

    def _load(self, device: str, dtype: str):
        from data_prep.models import LlavaCaptioner

        torch_device, torch_dtype = _device_and_dtype(device, dtype)
        return LlavaCaptioner(self.model_id, torch_device, torch_dtype, self.config.load_in_4bit,
                              self.config.max_new_tokens)

    @property
    def loaded(self) -> bool:
        return self._model.loaded

    def describe(self, image: Any) -> str:
        picture = _rgb(image)
        side = self.config.max_image_side
        if max(picture.size) > side:
            picture.thumbnail((side, side), Image.Resampling.BICUBIC)
        captioner = self._model.get()
        with self._run_lock:
            caption = captioner([picture])[0]
        if not caption.strip():
            raise PromptHelpError("The captioner returned an empty description; write the source prompt yourself.")
        return caption


# ----------------------------------------------------------------------------- Instruction -> target


@dataclass
class InstructionResult:
    """A target prompt for the person to accept or change.

    target: the target prompt. source: the source prompt it was written against (the shapes model
    writes both from the image, so it can differ from the one given: ``source_changed``).
    ok: the one-concept validator accepted it; notes: its verdict and what to check, one line each.
    """

    target: str
    source: str
    ok: bool
    notes: list[str] = field(default_factory=list)
    changed: tuple[str, str] | None = None  # (old words, new words)
    source_changed: bool = False

    @property
    def message(self) -> str:
        """The verdict and notes as markdown lines for the page."""
        head = "**Valid:** one change" if self.ok else "**Check this target:** the validator did not accept it"
        return "  \n".join([head, *self.notes])


class Instructor(Protocol):
    """Turns an instruction and the source prompt into the target prompt."""

    name: str
    needs_image: bool  # True: ``rewrite`` reads the source image (the shapes model's)

    def rewrite(self, instruction: str, source_prompt: str, image: Any = None) -> InstructionResult: ...


def _verdict(source: str, target: str, rules: RewriteRules) -> tuple[bool, tuple[str, str] | None, str]:
    check = check_rewrite(source, target, rules)
    if not check.ok:
        return False, None, f"Not one change: {check.reason}."
    span = check.span
    places = f" ({span.occurrences} places)" if span.occurrences > 1 else ""
    return True, (span.source, span.target), f"'{span.source}' -> '{span.target}'{places}"


class ShapesInstructor:
    """The shapes model's instructions, applied to the classifier's reading of the image (shapes/describe.py)."""

    name = "shapes world vocabulary"
    needs_image = True

    def __init__(self, classifier=None):
        self.classifier = classifier

    def rewrite(self, instruction: str, source_prompt: str, image: Any = None) -> InstructionResult:
        if image is None:
            raise PromptHelpError("Upload a source image first: the shapes model's instructions are applied to what "
                                  "the classifier sees in it.")
        try:
            described = describe_edit(_rgb(image), instruction, self.classifier)
        except DescribeError as exc:
            raise PromptHelpError(str(exc)) from None
        source, target = described.source.text, described.target.text
        ok, changed, verdict = _verdict(source, target, RewriteRules(allow_colour_change=True))
        edit = described.edit
        what = "the background" if edit.cell is None else f"the {edit.attribute}"
        notes = [verdict, f"Changes {what} from {edit.old} to {edit.new}."]
        source_changed = " ".join((source_prompt or "").split()) != source
        if source_changed:
            notes.append("The target is written against the image's description, which is now the source prompt.")
        return InstructionResult(target, source, ok, notes, changed, source_changed)


@dataclass(frozen=True)
class RewriterConfig:
    """How ``LlmInstructor`` runs the chat model and checks its answers (the caption pipeline's defaults,
    but colour changes allowed: see the module doc)."""

    max_new_tokens: int = CaptionConfig.rewrite_max_new_tokens
    temperature: float = CaptionConfig.temperature
    top_p: float = CaptionConfig.top_p
    seed: int = CaptionConfig.seed  # attempt k samples with seed + k
    max_retries: int = CaptionConfig.max_retries
    max_span_words: int = CaptionConfig.max_span_words
    allow_colour_change: bool = True
    load_in_4bit: bool = False

    @property
    def rules(self) -> RewriteRules:
        return RewriteRules(max_span_words=self.max_span_words, allow_colour_change=self.allow_colour_change)


class InstructionRewriter(ChatRewriter):
    """``ChatRewriter`` (same loading, chat-template check and sampling) asked with the instruction-aware
    chat, one caption at a time; ``last_prompt`` is the text the model was given."""

    last_prompt: str = ""

    def rewrite(self, caption: str, instruction: str, seed: int) -> str:
        answer = self.generate([build_instruction_chat(caption, instruction)], [caption], seed)[0]
        self.last_prompt = self.last_texts[0]
        return answer


class LlmInstructor:
    """A chat model (Llama-3.1-8B-Instruct in the paper) rewrites the source prompt as the instruction asks;
    loaded on first ``rewrite`` on ``device`` in ``dtype``; answers checked and retried (module doc)."""

    needs_image = False

    def __init__(self, model_id: str, device: str = "auto", dtype: str = "auto", config: RewriterConfig | None = None):
        self.model_id, self.config = model_id, config or RewriterConfig()
        self.name = f"chat model ({model_id})"
        self._model = _LazyModel(lambda: self._load(device, dtype), "rewriter", model_id, REWRITER_FLAG,
                                 "Give an instruction-tuned chat model with a chat template (a Hub id or a local "
                                 "folder), or unset it to hide the instruction box.")
        self._run_lock = threading.Lock()  # one generation at a time: sampling seeds torch's global generator

    def _load(self, device: str, dtype: str) -> InstructionRewriter:
        torch_device, torch_dtype = _device_and_dtype(device, dtype)
        c = self.config
        return InstructionRewriter(self.model_id, torch_device, torch_dtype, c.load_in_4bit, c.max_new_tokens,
                                   c.temperature, c.top_p)

    @property
    def loaded(self) -> bool:
        return self._model.loaded

    @property
    def model(self) -> InstructionRewriter:
        """The loaded rewriter (loads it on first use)."""
        return self._model.get()

    def rewrite(self, instruction: str, source_prompt: str, image: Any = None) -> InstructionResult:
        instruction, source = " ".join((instruction or "").split()), " ".join((source_prompt or "").split())
        if not instruction:
            raise PromptHelpError("Type an instruction first, e.g. 'replace the dog with a fox'.")
        if not source:
            raise PromptHelpError("Write the source prompt first (or describe the image): the instruction is "
                                  "applied to it.")
        model, c = self.model, self.config
        reasons: list[str] = []
        for attempt in range(c.max_retries + 1):
            with self._run_lock:
                target = model.rewrite(source, instruction, c.seed + attempt)
            ok, changed, verdict = _verdict(source, target, c.rules)
            if ok:
                notes = [verdict]
                if not any(word.lower() in instruction.lower() for word in changed[1].split()):
                    notes.append("The new words are not in your instruction: check that this is the change you "
                                 "asked for.")
                if attempt:
                    notes.append(f"Accepted at attempt {attempt + 1} of {c.max_retries + 1}.")
                return InstructionResult(target, source, True, notes, changed)
            reasons.append(f"attempt {attempt + 1}: {verdict}")
        return InstructionResult(target, source, False, reasons + ["Edit the target by hand, or try again with a "
                                                                   "plainer instruction."])


# ----------------------------------------------------------------------------- for the app's settings


def pick_describer(settings: AppSettings) -> Describer | None:
    """The Describe button's helper: the shapes describer for the shapes model; LLaVA when ``captioner``
    is set (``--captioner`` / ``SOFTREPA_CAPTIONER``, loaded on first use); else None (hide the button)."""
    if settings.kind == SHAPES_KIND:
        return ShapesDescriber()
    if getattr(settings, "captioner", None):
        return LlavaDescriber(settings.captioner, settings.device, settings.dtype)
    return None


def pick_instructor(settings: AppSettings) -> Instructor | None:
    """The instruction box's helper: the shapes world's for the shapes model; the chat model when
    ``rewriter`` is set (``--rewriter`` / ``SOFTREPA_REWRITER``, loaded on first use); else None (hide it)."""
    if settings.kind == SHAPES_KIND:
        return ShapesInstructor()
    if getattr(settings, "rewriter", None):
        return LlmInstructor(settings.rewriter, settings.device, settings.dtype)
    return None
