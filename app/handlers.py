"""What the web app does, without the page: load the model, check inputs, run edits, keep history.

Every function here takes and returns plain values (paths, strings, numbers, dataclasses), so the
tests drive them without a browser. The Gradio layer (``app/ui.py``) only maps components to these
values and back. Problems a person can fix arrive as ``gr.Error`` with a message saying what to do;
unexpected failures are logged with their traceback on the server and reach the page as a short
message, never as a stack trace, and the server keeps serving.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import secrets
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import gradio as gr
import torch
from PIL import Image

from app.examples import OUTPUT_KEYS, Example, load_examples, produced_by
from app.settings import AppSettings
from editing.cli import safe_name
from softrepa.models import load_pipeline
from softrepa.runtime import resolve_device, resolve_dtype
from editing.editor import EditResult, FlowEditor
from editing.flowedit import GUIDANCE_MODES, TOKEN_BRANCHES, FlowEditParams
from editing.inputs import MIN_PATCHES, PreparedImage
from editing.presets import PRESETS, default_preset_name, get_preset
from softrepa.models import KINDS
from softrepa.images import ImageInputError
from softrepa.tokens import file_sha256

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (steps done, total steps)
F = TypeVar("F", bound=Callable[..., Any])

# Labels shown on the controls; error messages quote them so a person finds the control to fix.
LABELS: dict[str, str] = {
    "image": "Source image",
    "source_prompt": "Source prompt",
    "target_prompt": "Target prompt",
    "use_tokens": "Soft tokens",
    "tar_cfg": "Target CFG",
    "src_cfg": "Source CFG",
    "n_max": "Edit strength (n_max)",
    "steps": "Steps (T)",
    "n_min": "Detail steps (n_min)",
    "n_avg": "Noise samples per step (n_avg)",
    "seed": "Seed",
    "randomize_seed": "Random seed",
    "max_side": "Max side (px)",
    "guidance": "Guidance convention",
    "token_branches": "Tokens on",
}
CFG_RANGE = (0.0, 30.0)  # the FlowEdit demo's sliders go to 30; 0..1 is allowed (standard CFG 1 = conditional only)
MAX_STEPS = 100
MAX_N_AVG = 8
MAX_SEED = 2**31 - 1  # what the seed box holds; FlowEditParams accepts up to 2**63 - 1 from the API
MODEL_WAIT_S = 600.0  # how long an edit waits for a model that is still loading


# ----------------------------------------------------------------------------- errors


class UserInputError(ValueError):
    """A problem the person using the app can fix; the message says how."""


class EditCancelled(Exception):
    """The person pressed Cancel: raised from the progress callback to stop the edit between steps."""


def reports_errors(fn: F) -> F:
    """Turn what a handler raises into a ``gr.Error`` a person can read (the server keeps serving).

    Known input problems keep their message; out-of-memory gets advice; anything else is logged
    with its traceback and shown as a one-line notice (no stack trace in the page).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except EditCancelled:
            raise gr.Error("Edit cancelled.", title="Cancelled", print_exception=False) from None
        except (UserInputError, ImageInputError) as exc:
            raise gr.Error(str(exc), title="Check the inputs", print_exception=False) from None
        except torch.OutOfMemoryError:
            log.warning("out of memory in %s", fn.__name__)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the failed edit's memory back before the next one
            raise gr.Error("The device ran out of memory. Lower 'Max side (px)' or the noise samples per step, "
                           "or try again when fewer edits are running.", title="Out of memory",
                           print_exception=False) from None
        except ValueError as exc:  # parameter checks of the editing library, worded for people
            raise gr.Error(str(exc), title="Check the inputs", print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the page gets a message, the log gets the traceback
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"The edit failed because of an internal error ({type(exc).__name__}). The details are "
                           "in the server log; other settings or another image may work.", title="Internal error",
                           print_exception=False) from None

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------- the model


@dataclass
class LoadedModel:
    editor: FlowEditor
    warnings: list[str] = field(default_factory=list)  # e.g. tokens that could not be loaded


def load_editor(settings: AppSettings) -> LoadedModel:
    """Load the pipeline and tokens of ``settings`` into a ``FlowEditor``.

    Raises ``RuntimeError`` with a message for a person when the model cannot be loaded. A token
    file that does not load or fit is not fatal: the app edits without tokens and says why.
    """
    spec = KINDS[settings.kind]
    if settings.is_bundled_model and not Path(settings.model).is_dir():
        raise RuntimeError(f"The bundled shapes model is not installed at {settings.model_label}. Build it with "
                           "`python -m shapes.model build --out assets/shapes-sd3`, or start the app with "
                           "--model <Hub id or folder> (SOFTREPA_MODEL on a Space).")
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        pipe = load_pipeline(settings.model, settings.kind, dtype, device, without_t5=True if settings.no_t5 else None)
    except Exception as exc:  # noqa: BLE001 - from_pretrained raises many types; all mean "cannot load this"
        log.exception("loading %s failed", settings.model)
        raise RuntimeError(f"Could not load the model {settings.model_label!r} ({type(exc).__name__}: {exc}). Give "
                           "a local diffusers folder or a Hub id you can access (gated models need "
                           "`huggingface-cli login`).") from exc
    max_length = settings.max_sequence_length or spec.max_sequence_length
    editor = FlowEditor(pipe, tokens=None, max_side=side_slider_range(settings.kind)[1],
                        max_sequence_length=max_length, model_name=settings.model_label)
    warnings = []
    if settings.tokens is not None:
        try:
            editor.set_tokens(settings.tokens)
        except (OSError, ValueError, RuntimeError) as exc:
            warnings.append(f"Soft tokens {Path(settings.tokens).name} could not be used ({exc}); editing without "
                            "tokens.")
    return LoadedModel(editor, warnings)


@dataclass
class ServiceStatus:
    state: str  # "loading", "ready" or "failed"
    message: str  # markdown for the page's status line


class EditorService:
    """Owns the model (loaded once, in the background or before serving), the cancel switches of the
    sessions and the folder results are written to. One per app; handlers receive it."""

    def __init__(self, settings: AppSettings, loader: Callable[[AppSettings], LoadedModel] = load_editor):
        self.settings = settings
        self._loader = loader
        self._loaded: LoadedModel | None = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._load_lock = threading.Lock()
        self._load_started: float | None = None
        self.load_seconds: float | None = None
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_lock = threading.Lock()
        self._examples: list[Example] | None = None

    # loading -----------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (idempotent, thread-safe); failures are kept for ``status``/``editor``."""
        with self._load_lock:
            if self._ready.is_set():
                return
            self._load_started = time.perf_counter()
            try:
                self._loaded = self._loader(self.settings)
                log.info("model %s loaded in %.1f s", self.settings.model_label,
                         time.perf_counter() - self._load_started)
                for warning in self._loaded.warnings:
                    log.warning("%s", warning)
            except Exception as exc:  # noqa: BLE001 - the page shows the message; the server keeps serving
                log.error("model not loaded: %s", exc)
                self._error = str(exc)
            finally:
                self.load_seconds = time.perf_counter() - self._load_started
                self._ready.set()

    def start_loading(self) -> threading.Thread:
        """Load in a background thread so the page is served while the model loads."""
        thread = threading.Thread(target=self.load, name="softrepa-model-loader", daemon=True)
        thread.start()
        return thread

    def status(self) -> ServiceStatus:
        if not self._ready.is_set():
            elapsed = time.perf_counter() - self._load_started if self._load_started else 0.0
            return ServiceStatus("loading", f"**Loading** {self.settings.model_label} ... ({elapsed:.0f} s); edits "
                                            "start when it is ready")
        if self._loaded is None:
            return ServiceStatus("failed", f"**Model not loaded:** {self._error}")
        editor = self._loaded.editor
        tokens = f"soft tokens {self._loaded_tokens_name()}" if editor.has_tokens else "no soft tokens"
        device = str(editor.pipe.transformer.device)
        dtype = str(editor.pipe.transformer.dtype).replace("torch.", "")
        parts = [f"**Ready:** {self.settings.model_label} ({self.settings.kind}) on {device} ({dtype}), {tokens}, "
                 f"loaded in {self.load_seconds:.1f} s"]
        parts += [f"**Warning:** {w}" for w in self._loaded.warnings]
        return ServiceStatus("ready", "  \n".join(parts))

    def _loaded_tokens_name(self) -> str:
        info = self._loaded.editor.tokens_info if self._loaded else None
        return (info or {}).get("file") or "(in memory)"

    def editor(self, timeout: float = MODEL_WAIT_S) -> FlowEditor:
        """The loaded editor, waiting for a load in progress; ``UserInputError`` when there is none."""
        if not self._ready.is_set() and self._load_started is None:
            self.load()  # nobody started it (tests, API-only use): load in this thread
        if not self._ready.wait(timeout):
            raise UserInputError(f"The model is still loading after {timeout:.0f} s; try again in a moment.")
        if self._loaded is None:
            raise UserInputError(f"The model could not be loaded, so nothing can be edited: {self._error}")
        return self._loaded.editor

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set() and self._loaded is not None

    def side_range(self) -> tuple[int, int, int]:
        """(minimum, maximum, step) of the max-side control: the loaded model's own limits, or the
        kind's usual ones while it loads."""
        if not self.is_ready:
            return side_slider_range(self.settings.kind)
        editor = self._loaded.editor
        smallest, largest = side_limits(editor)
        return smallest, largest, editor.factor

    @property
    def has_tokens(self) -> bool:
        """Whether edits can use soft tokens: the loaded editor's, or the settings' while loading."""
        if self.is_ready:
            return self._loaded.editor.has_tokens
        return self.settings.tokens is not None

    # sessions ----------------------------------------------------------------

    def begin_edit(self, session: str) -> threading.Event:
        """A fresh cancel switch for ``session``'s next edit (an old Cancel press does not carry over)."""
        event = threading.Event()
        with self._cancel_lock:
            self._cancel[session] = event
        return event

    def cancel(self, session: str) -> bool:
        """Stop ``session``'s running edit at its next step; False when it has none."""
        with self._cancel_lock:
            event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        return True

    def end_edit(self, session: str, event: threading.Event) -> None:
        with self._cancel_lock:
            if self._cancel.get(session) is event:
                del self._cancel[session]

    def session_dir(self, session: str) -> Path:
        """Results of one browser session (or API client); old sessions' folders are pruned here."""
        root = self.settings.outputs_dir
        root.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.settings.outputs_max_age_s
        for old in root.iterdir():
            try:
                if old.is_dir() and old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:  # another thread pruned it first
                continue
        folder = root / safe_name(session or "anonymous", 64)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # examples ----------------------------------------------------------------

    def examples(self) -> list[Example]:
        """The gallery (computed once; results only when the running model made them)."""
        if self._examples is None:
            # the token file's hash, read from disk: the gallery is built before the model has loaded
            tokens = self.settings.tokens
            tokens_sha = file_sha256(tokens) if tokens and Path(tokens).is_file() else None
            producer = produced_by(self.settings.model_label, tokens_sha)
            self._examples = load_examples(self.settings.examples_dir, self.settings.kind, producer,
                                           self.settings.temp_dir / "examples")
        return self._examples


# ----------------------------------------------------------------------------- controls -> parameters


@dataclass
class EditControls:
    """The values of the page's controls (and of the API's parameters), as sent."""

    source_prompt: str
    target_prompt: str
    use_tokens: bool = True
    tar_cfg: float = 13.5
    src_cfg: float = 3.5
    n_max: int = 33
    steps: int = 50
    n_min: int = 0
    n_avg: int = 1
    seed: int = 42
    randomize_seed: bool = False
    max_side: int = 1024
    guidance: str = "standard"
    token_branches: str = "both"


CONTROL_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EditControls))


def _whole_number(name: str, value: Any, low: int, high: int) -> int:
    label = LABELS[name]
    if isinstance(value, bool) or value is None:
        raise UserInputError(f"{label} must be a whole number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{label} must be a whole number, got {value!r}.") from None
    if not math.isfinite(number) or number != math.floor(number):
        raise UserInputError(f"{label} must be a whole number, got {value!r}.")
    if not low <= number <= high:
        raise UserInputError(f"{label} must be between {low} and {high}, got {int(number)}.")
    return int(number)


def _decimal(name: str, value: Any, low: float, high: float) -> float:
    label = LABELS[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{label} must be a number, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high:
        raise UserInputError(f"{label} must be between {low:g} and {high:g}, got {value!r}.")
    return number


def side_limits(editor: FlowEditor) -> tuple[int, int]:
    """(smallest, largest) long side the model takes: 4 patches up to what its position grid covers."""
    smallest = editor.min_side or MIN_PATCHES * editor.factor
    return smallest, editor.max_side


def params_from_controls(controls: EditControls, editor: FlowEditor) -> tuple[FlowEditParams, int]:
    """(FlowEdit parameters, max side) from the controls; ``UserInputError`` naming the control to fix."""
    steps = _whole_number("steps", controls.steps, 1, MAX_STEPS)
    n_max = _whole_number("n_max", controls.n_max, 0, MAX_STEPS)
    if n_max > steps:
        raise UserInputError(f"{LABELS['n_max']} is {n_max} but there are only {steps} steps: it counts how many of "
                             f"the T steps edit, so it can be at most {steps}.")
    if n_max == 0:
        raise UserInputError(f"{LABELS['n_max']} is 0, which returns the input unchanged; raise it to edit.")
    n_min = _whole_number("n_min", controls.n_min, 0, MAX_STEPS)
    if n_min > n_max:
        raise UserInputError(f"{LABELS['n_min']} ({n_min}) cannot be larger than {LABELS['n_max']} ({n_max}): the "
                             "detail steps are the last of the editing steps.")
    n_avg = _whole_number("n_avg", controls.n_avg, 1, MAX_N_AVG)
    seed = secrets.randbelow(MAX_SEED + 1) if controls.randomize_seed else _whole_number("seed", controls.seed, 0,
                                                                                         2**63 - 1)
    smallest, largest = side_limits(editor)
    max_side = _whole_number("max_side", controls.max_side, smallest, 2**16)
    # the page's slider range comes from the model kind (known before the model loads); the loaded
    # model's own limit wins: above it, use the limit
    max_side = min(max_side, largest)
    if controls.guidance not in GUIDANCE_MODES:
        raise UserInputError(f"{LABELS['guidance']} must be one of {', '.join(GUIDANCE_MODES)}, got "
                             f"{controls.guidance!r}.")
    if controls.token_branches not in TOKEN_BRANCHES:
        raise UserInputError(f"{LABELS['token_branches']} must be one of {', '.join(TOKEN_BRANCHES)}, got "
                             f"{controls.token_branches!r}.")
    params = FlowEditParams(steps=steps, n_max=n_max, n_min=n_min, n_avg=n_avg,
                            src_cfg=_decimal("src_cfg", controls.src_cfg, *CFG_RANGE),
                            tar_cfg=_decimal("tar_cfg", controls.tar_cfg, *CFG_RANGE), seed=seed,
                            guidance=controls.guidance, token_branches=controls.token_branches)
    params.check()
    return params, max_side


def check_prompt(editor: FlowEditor, name: str, prompt: Any) -> list[str]:
    """Refuse an empty prompt or one longer than the model reads; warnings for partial truncation.

    SD3 reads a prompt with two CLIP encoders (77 tokens) and T5 (``max_sequence_length`` tokens):
    over the CLIP limit but within T5's, T5 still reads it all (a warning); over both, or over
    CLIP without T5 (the shapes model), the end of the prompt would be silently dropped (an error).
    """
    label = LABELS[name]
    if not isinstance(prompt, str) or not prompt.strip():
        what = "what the picture shows" if name == "source_prompt" else "what you want the picture to show"
        raise UserInputError(f"The {label.lower()} is empty: describe {what}.")
    try:
        warning = editor.check_prompt_length(prompt, label.lower())
    except ValueError as exc:
        raise UserInputError(_sentence(str(exc))) from None
    return [_sentence(warning)] if warning else []


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def prepare_source(editor: FlowEditor, image: str | Path | Image.Image | None, max_side: int) -> PreparedImage:
    """Open and fit the source image; ``UserInputError`` / ``ImageInputError`` with a readable message."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise UserInputError("There is no source image: upload one, paste one, or pick an example.")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise UserInputError("The source image did not arrive; upload it again.")
        # bytes, not the path: messages then say "the image", not the server's temporary file name
        source: bytes | Image.Image = path.read_bytes()
    elif isinstance(image, Image.Image):
        source = image
    else:
        raise UserInputError(f"The source image must be an image file, got {type(image).__name__}.")
    return editor.prepare(source, max_side=max_side)


# ----------------------------------------------------------------------------- running edits


@dataclass
class OutputImage:
    path: str  # PNG with the edit's parameters in its metadata
    use_tokens: bool
    label: str


@dataclass
class EditOutcome:
    """What one Edit or Compare press produced (also a history entry)."""

    mode: str  # "edit" or "compare"
    source_path: str  # the prepared input, PNG (the "before" of the slider)
    images: list[OutputImage]  # one for edit; without then with tokens for compare
    controls: EditControls  # as to restore them (the seed actually used, randomize off)
    details: dict[str, Any]  # seed, parameters, timings, input preparation, model
    summary: str  # one markdown line
    notices: list[str] = field(default_factory=list)  # for gr.Info (input resized, prompt truncated for CLIP)

    @property
    def final(self) -> OutputImage:
        """The image the before/after slider and the history show (with tokens in a comparison)."""
        return self.images[-1]


def tokens_label(use_tokens: bool) -> str:
    return "with soft tokens" if use_tokens else "without soft tokens"


def _summary(mode: str, params: FlowEditParams, results: list[EditResult], prepared: PreparedImage) -> str:
    seconds = " + ".join(f"{r.stats.seconds:.2f} s" for r in results)
    tokens = "tokens off vs on" if mode == "compare" else ("tokens on" if results[0].use_tokens else "tokens off")
    size = "x".join(map(str, prepared.report.final_size))
    return (f"**Done in {seconds}** · seed {params.seed} · T {params.steps}, n_max {params.n_max}, n_min "
            f"{params.n_min}, n_avg {params.n_avg}, src CFG {params.src_cfg:g}, tar CFG {params.tar_cfg:g} · "
            f"{tokens} · {size} px")


def _run(service: EditorService, image: Any, controls: EditControls, token_states: list[bool], session: str,
         progress: ProgressFn | None) -> EditOutcome:
    editor = service.editor()
    if any(token_states) and not editor.has_tokens:
        raise UserInputError("This app runs without soft tokens (none were given or they could not be loaded), so "
                             "it can only edit with tokens off: untick 'Soft tokens'. Compare needs tokens.")
    notices = check_prompt(editor, "source_prompt", controls.source_prompt)
    notices += check_prompt(editor, "target_prompt", controls.target_prompt)
    params, max_side = params_from_controls(controls, editor)
    prepared = prepare_source(editor, image, max_side)
    notices += [f"The image was {note}." for note in prepared.report.notes]

    cancel = service.begin_edit(session)
    total = params.n_max * len(token_states)
    results: list[EditResult] = []
    try:
        for index, use_tokens in enumerate(token_states):
            offset = index * params.n_max

            def step(done: int, _steps: int, offset: int = offset) -> None:
                if cancel.is_set():
                    raise EditCancelled()
                if progress is not None:
                    progress(offset + done, total)

            step(0, params.n_max)
            results.append(editor.edit(prepared, controls.source_prompt, controls.target_prompt, params,
                                       use_tokens=use_tokens, progress=step))
    finally:
        service.end_edit(session, cancel)

    mode = "compare" if len(token_states) > 1 else "edit"
    folder = service.session_dir(session)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-{safe_name(controls.target_prompt, 40)}"
    source_path = folder / f"{stem}-input.png"
    prepared.image.save(source_path, format="PNG")
    images = []
    for result in results:
        suffix = "tokens" if result.use_tokens else "no-tokens"
        path = result.save(folder / f"{stem}-{suffix}.png", extra={"app": {"mode": mode}})
        images.append(OutputImage(str(path), result.use_tokens, tokens_label(result.use_tokens).capitalize()))
    details = {
        "mode": mode, "model": editor.model_name, "kind": service.settings.kind,
        "source_prompt": controls.source_prompt, "target_prompt": controls.target_prompt,
        "seed": params.seed, "params": params.to_dict(), "max_side": max_side,
        "tokens": editor.tokens_info and {k: editor.tokens_info.get(k) for k in ("file", "sha256")},
        "input": prepared.report.to_dict(),
        "results": [{"use_tokens": r.use_tokens, "seconds": round(r.stats.seconds, 3),
                     "transformer_calls": r.stats.transformer_calls,
                     "source_latents_cached": r.stats.source_latents_cached,
                     "source_velocities_reused": r.stats.source_velocities_reused} for r in results],
        "seconds": round(sum(r.stats.seconds for r in results), 3),
    }
    used = dataclasses.replace(controls, seed=params.seed, randomize_seed=False, max_side=max_side,
                               use_tokens=token_states[-1])
    return EditOutcome(mode, str(source_path), images, used, details, _summary(mode, params, results, prepared),
                       notices)


@reports_errors
def edit(service: EditorService, image: Any, controls: EditControls, session: str = "",
         progress: ProgressFn | None = None) -> EditOutcome:
    """One edit with the tokens state of ``controls.use_tokens``."""
    return _run(service, image, controls, [bool(controls.use_tokens)], session, progress)


@reports_errors
def compare(service: EditorService, image: Any, controls: EditControls, session: str = "",
            progress: ProgressFn | None = None) -> EditOutcome:
    """The same edit (same seed) without and with soft tokens."""
    return _run(service, image, controls, [False, True], session, progress)


# ----------------------------------------------------------------------------- history


def add_to_history(history: list[EditOutcome] | None, outcome: EditOutcome, limit: int) -> list[EditOutcome]:
    """Newest first, at most ``limit`` entries (a new list: Gradio state is per session)."""
    return ([outcome] + list(history or []))[:limit]


def history_gallery(history: list[EditOutcome]) -> list[tuple[str, str]]:
    """(image, caption) per entry for the history gallery."""
    return [(entry.final.path, f"{entry.controls.target_prompt[:60]} · seed {entry.controls.seed}"
             + (" · compare" if entry.mode == "compare" else "")) for entry in history]


def history_entry(history: list[EditOutcome], index: Any) -> EditOutcome:
    if not isinstance(index, int) or not 0 <= index < len(history or []):
        raise UserInputError("That history entry is no longer available.")
    return history[index]


# ----------------------------------------------------------------------------- presets and examples


def preset_choices() -> list[tuple[str, str]]:
    """(label, name) for the preset menu: the name and the two numbers people compare presets by."""
    return [(f"{name} (n_max {preset.params.n_max}, tar CFG {preset.params.tar_cfg:g})", name)
            for name, preset in PRESETS.items()]


def default_preset(service: EditorService) -> str:
    return default_preset_name(service.settings.kind, service.has_tokens)


def controls_for_params(params: FlowEditParams, use_tokens: bool, base: EditControls) -> EditControls:
    return dataclasses.replace(base, tar_cfg=params.tar_cfg, src_cfg=params.src_cfg, n_max=params.n_max,
                               steps=params.steps, n_min=params.n_min, n_avg=params.n_avg, seed=params.seed,
                               randomize_seed=False, guidance=params.guidance, token_branches=params.token_branches,
                               use_tokens=use_tokens)


def preset_controls(name: str, base: EditControls, has_tokens: bool) -> EditControls:
    """``base`` with the preset's parameters (tokens on only when the preset wants them and the app has them)."""
    if name not in PRESETS:
        raise UserInputError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    preset = get_preset(name)
    return controls_for_params(preset.params, preset.use_tokens and has_tokens, base)


def initial_controls(service: EditorService) -> EditControls:
    """The controls at page load: the model's default preset, its resolution as max side."""
    low, high, _ = service.side_range()
    resolution = min(max(KINDS[service.settings.kind].resolution, low), high)
    base = EditControls(source_prompt="", target_prompt="", max_side=resolution)
    return preset_controls(default_preset(service), base, service.has_tokens)


def side_slider_range(kind: str) -> tuple[int, int, int]:
    """(minimum, maximum, step) of the max-side slider for a model kind: a quarter to twice its
    training resolution, in steps of its usual patch size (the loaded model clamps further)."""
    resolution = KINDS[kind].resolution
    step = 16 if resolution >= 256 else 8
    return max(step, resolution // 4), resolution * 2, step


@dataclass
class ExampleSelection:
    image: str
    controls: EditControls
    outcome: EditOutcome | None  # the precomputed results, when this model made them


def select_example(service: EditorService, index: Any, base: EditControls) -> ExampleSelection:
    examples = service.examples()
    if not isinstance(index, int) or not 0 <= index < len(examples):
        raise UserInputError("That example is not available.")
    example = examples[index]
    has_tokens = service.has_tokens
    base = dataclasses.replace(base, source_prompt=example.source_prompt, target_prompt=example.target_prompt)
    if example.params is not None:
        controls = controls_for_params(FlowEditParams.from_dict(example.params), has_tokens, base)
    else:
        controls = preset_controls(default_preset(service), base, has_tokens)
    outcome = None
    if example.has_outputs:
        shown = [key for key in OUTPUT_KEYS if key in example.outputs and (has_tokens or key == "without_tokens")]
        images = [OutputImage(example.outputs[key], key == "with_tokens",
                              tokens_label(key == "with_tokens").capitalize()) for key in shown]
        if images:
            mode = "compare" if len(images) > 1 else "edit"
            details = {"mode": mode, "precomputed": True, "example": example.name, "params": example.params}
            outcome = EditOutcome(mode, example.image, images, controls, details,
                                  f"**Precomputed example** ({example.name}) · seed {controls.seed} · press Edit or "
                                  "Compare to run it again")
    return ExampleSelection(example.image, controls, outcome)


def example_rows(service: EditorService) -> list[list[str]]:
    return [[example.image, example.source_prompt, example.target_prompt] for example in service.examples()]
