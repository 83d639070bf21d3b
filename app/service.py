"""The model behind the app: loading it (once, in the background or before serving), its status
line, the sessions' cancel switches, the results folder and the example gallery.

One ``EditorService`` per app; the handlers (``app/handlers.py``) receive it. The soft-token file
is read and hashed once, by ``AppSettings.token_file``: the settings (for the model kind), the
gallery (for its producer) and the editor share that read.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from app.controls import LABELS, UserInputError, side_limits, side_slider_range
from app.examples import Example, load_examples, produced_by
from app.settings import AppSettings
from softrepa.kinds import KINDS

if TYPE_CHECKING:  # the model's libraries (torch, diffusers) load after the page is served (app/main.py)
    from app.loading import LoadedModel
    from app.prompt_help import Describer, Instructor
    from editing.editor import FlowEditor

log = logging.getLogger(__name__)

MODEL_WAIT_S = 600.0  # how long an edit waits for a model that is still loading


def _load_editor(settings: AppSettings) -> LoadedModel:
    from app.loading import load_editor  # torch, diffusers: imported here, once the page is served

    return load_editor(settings)


@dataclass
class ServiceStatus:
    state: str  # "loading", "ready" or "failed"
    message: str  # markdown for the page's status line


class EditorService:
    """Owns the model (loaded once, in the background or before serving), the cancel switches of the
    sessions and the folder results are written to. One per app; handlers receive it."""

    def __init__(self, settings: AppSettings, loader: Callable[[AppSettings], LoadedModel] | None = None,
                 prompt_helpers: tuple[Describer | None, Instructor | None] | None = None):
        """``loader``: how the model is loaded (default ``app.loading.load_editor``, imported when it
        runs); ``prompt_helpers``: (describer, instructor) instead of the settings' (``app.prompt_help``)."""
        self.settings = settings
        self._prompt_helpers = prompt_helpers
        self._loader = loader
        self._loaded: LoadedModel | None = None
        self._error: str | None = None
        self._ready = threading.Event()
        self._load_lock = threading.Lock()
        self._load_started: float | None = None
        self.load_seconds: float | None = None
        self._cancel: dict[str, threading.Event] = {}
        self._cancel_waiting: set[str] = set()  # sessions whose waiting edit is to stop as it starts
        self._cancel_lock = threading.Lock()
        self._examples: list[Example] | None = None
        self._scorer: Any = None  # editing.scoring.EditScorer, loaded by the first Auto edit
        self._scorer_lock = threading.Lock()

    # loading -----------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (idempotent, thread-safe); failures are kept for ``status``/``editor``."""
        with self._load_lock:
            if self._ready.is_set():
                return
            self._load_started = time.perf_counter()
            try:
                self._loaded = (self._loader or _load_editor)(self.settings)
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
        """A fresh cancel switch for ``session``'s next edit (an old Cancel press does not carry over),
        already set when Cancel was pressed while this edit waited for the device (``cancel_waiting``)."""
        event = threading.Event()
        with self._cancel_lock:
            if session in self._cancel_waiting:
                self._cancel_waiting.discard(session)
                event.set()
            self._cancel[session] = event
        return event

    def cancel_waiting(self, session: str) -> None:
        """Stop ``session``'s edit that waits for the device as soon as it starts (call it only when
        one waits: the mark is kept for the session's next edit)."""
        with self._cancel_lock:
            self._cancel_waiting.add(session)

    def cancel(self, session: str) -> bool:
        """Stop ``session``'s running edit at its next step; False when it has none."""
        with self._cancel_lock:
            event = self._cancel.get(session)
        if event is None:
            return False
        event.set()
        return True

    def running(self) -> int:
        """How many edits are running now (each holds its session's cancel switch until it ends)."""
        with self._cancel_lock:
            return len(self._cancel)

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
        from editing.cli import safe_name  # loaded by now: results are written after an edit

        folder = root / safe_name(session or "anonymous", 64)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # prompt help -------------------------------------------------------------

    def prompt_helpers(self) -> tuple[Describer | None, Instructor | None]:
        """The Describe and Instruction helpers for the settings (``app.prompt_help``: the shapes
        model's own, or the models named by --captioner / --rewriter, loaded on first use), picked
        once; None hides its control."""
        if self._prompt_helpers is None:
            from app.prompt_help import pick_describer, pick_instructor  # data_prep and shapes: only when asked

            self._prompt_helpers = (pick_describer(self.settings), pick_instructor(self.settings))
        return self._prompt_helpers

    def scorer(self) -> Any:
        """The ``editing.scoring.EditScorer`` of Auto strength (``--scorer``, else the kind's), loaded on
        first use on the model's device; ``UserInputError`` saying what to give when it cannot load."""
        device = self.editor().pipe.transformer.device
        with self._scorer_lock:
            if self._scorer is None:
                from editing.scoring import EditScorer  # transformers' CLIP: only when Auto is first used

                name = self.settings.scorer or KINDS[self.settings.kind].scorer
                try:
                    self._scorer = EditScorer(name, device=device)
                except OSError as exc:
                    raise UserInputError(f"{LABELS['auto']}: the scorer could not be loaded ({exc}); start the app "
                                         "with --scorer naming a CLIP folder or Hub id.") from None
            return self._scorer

    # examples ----------------------------------------------------------------

    def examples(self) -> list[Example]:
        """The gallery (computed once; results only when the running model made them)."""
        if self._examples is None:
            # the gallery is built before the model loads: the token file's hash, not its tokens
            producer = produced_by(self.settings.model_label, self.settings.token_sha256())
            self._examples = load_examples(self.settings.examples_dir, self.settings.kind, producer,
                                           self.settings.temp_dir / "examples")
        return self._examples
