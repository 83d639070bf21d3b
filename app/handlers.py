"""What the web app does with a press, without the page: check the inputs, run edits (one, the
candidates of one: Variations, or tokens off vs on: Compare), pick a candidate, record the result a
chained edit started from (Edit again), keep history. The public actions built on these are the API
layer's (``app/api.py``).

Every function here takes and returns plain values (paths, strings, numbers, dataclasses), so the
tests drive them without a browser. The Gradio layer (``app/ui.py`` and the modules it wires) only
maps components to these values and back; the model lives in ``app/service.py``, the controls' values and presets in
``app/controls.py``. Problems a person can fix arrive as ``gr.Error`` with a message saying what
to do (FlowEdit's parameter rules on the control that sets the parameter); unexpected failures are
logged with their traceback on the server and reach the page as a short message, never as a stack
trace, and the server keeps serving. A cancelled edit raises ``EditCancelled``, which is not an error.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import gradio as gr
from PIL import Image

from app.controls import (LABELS, EditControls, RunValues, UserInputError, controls_for_params, default_preset, flag,
                          parameter_message, params_from_controls, preset_controls, prompt_text, side_limits)
from app.examples import OUTPUT_KEYS
from app.masks import mask_message, mask_request, mask_summary, save_region
from app.service import EditorService
from editing.inputs import PreparedImage
from editing.params import FlowEditParams, ParameterError
from softrepa.images import ImageInputError, write_png

if TYPE_CHECKING:  # the page is served before torch and the editing library load (app/main.py)
    from editing.auto import AutoResult
    from editing.editor import EditResult, FlowEditor
    from editing.masks import AutoMask

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]  # (steps done, total steps)
F = TypeVar("F", bound=Callable[..., Any])


# ----------------------------------------------------------------------------- errors


class EditCancelled(Exception):
    """Cancel was pressed (or the client went away): raised from the progress callback to stop the
    edit between steps. Not an error: ``reports_errors`` lets it through, the page says "Cancelled"."""


def reports_errors(fn: F) -> F:
    """Turn what a handler raises into a ``gr.Error`` a person can read (the server keeps serving).

    Known input problems keep their message; out-of-memory gets advice; anything else is logged
    with its traceback and shown as a one-line notice (no stack trace in the page).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (gr.Error, EditCancelled):
            raise
        except (UserInputError, ImageInputError) as exc:
            if raised(exc, "editing.masks", "MaskError"):  # an ImageInputError: headed by the mask control's label
                raise gr.Error(mask_message(exc), title="Check the mask", print_exception=False) from None
            raise gr.Error(input_message(exc), title="Check the inputs", print_exception=False) from None
        except ParameterError as exc:  # FlowEditParams.check, the one home of the parameter rules
            raise gr.Error(parameter_message(exc), title="Check the inputs", print_exception=False) from None
        except ValueError as exc:  # parameter checks of the editing library, worded for people
            raise gr.Error(str(exc), title="Check the inputs", print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the page gets a message, the log gets the traceback
            if raised(exc, "torch", "OutOfMemoryError"):
                raise out_of_memory(fn.__name__) from None
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"The edit failed because of an internal error ({type(exc).__name__}). The details are "
                           "in the server log; other settings or another image may work.", title="Internal error",
                           print_exception=False) from None

    return wrapper  # type: ignore[return-value]


def input_message(error: UserInputError | ImageInputError) -> str:
    """A problem with an input as the page shows it: the app's own messages already name their
    control; the image library's (``softrepa.images``: "the image is not an image PIL can read")
    are headed by the source image's label."""
    if isinstance(error, UserInputError):
        return str(error)
    return _sentence(f"{LABELS['image']}: {error}")


def raised(exc: BaseException, module: str, name: str) -> bool:
    """Whether ``exc`` is ``module.name``, without importing ``module``: the page is served before
    torch and the editing library are imported, and a class that is not loaded cannot have been raised."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def out_of_memory(handler: str) -> gr.Error:
    """The page's message for a device out of memory, once the failed edit's memory is given back."""
    import torch  # loaded: it raised the error

    log.warning("out of memory in %s", handler)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # give the failed edit's memory back before the next one
    return gr.Error("The device ran out of memory. Lower 'Max side (px)' or the noise samples per step, "
                    "or try again when fewer edits are running.", title="Out of memory", print_exception=False)


# ----------------------------------------------------------------------------- checks before an edit


def check_prompt(editor: FlowEditor, name: str, prompt: Any) -> list[str]:
    """Refuse an empty prompt or one longer than the model reads; warnings for partial truncation.

    SD3 reads a prompt with two CLIP encoders (77 tokens) and T5 (``max_sequence_length`` tokens):
    over the CLIP limit but within T5's, T5 still reads it all (a warning); over both, or over
    CLIP without T5 (the shapes model), the end of the prompt would be silently dropped (an error).
    """
    label = LABELS[name]
    prompt = prompt_text(name, prompt)
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
    path: str  # PNG with the edit's parameters (and its mask, if any) in its metadata
    use_tokens: bool
    label: str
    mask_path: str | None = None  # the region the edit was restricted to, beside the PNG (white = edited)
    region_path: str | None = None  # the input with that region tinted, for the page
    seed: int | None = None  # the seed that made it (None: a precomputed example's)
    caption: str = ""  # under it in the candidates' strip (default: its seed)

    def files(self) -> list[str]:
        """Its downloads: the PNG, then the mask saved beside it (masked edits)."""
        return [path for path in (self.path, self.mask_path) if path]


def _new_key() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class EditOutcome:
    """What one Edit or Compare press produced (also a history entry)."""

    mode: str  # "edit" or "compare"
    source_path: str  # the prepared input, PNG (the "before" of the slider)
    images: list[OutputImage]  # edit: one per candidate (Variations), in seed order; compare: without, with tokens
    controls: EditControls  # as to restore them (the seed actually used, randomize off)
    details: dict[str, Any]  # seed, parameters, timings, input preparation, model
    summary: str  # one markdown line
    notices: list[str] = field(default_factory=list)  # for gr.Info (input resized, prompt truncated for CLIP)
    mask: str | None = None  # the mask image to restore with the entry (drawn: fitted to source_path)
    chosen: int = 0  # the candidate shown as the result (edit); see ``choose_candidate``
    key: str = field(default_factory=_new_key)  # names the outcome in the history and in a chain (Edit again)
    parent: dict[str, Any] | None = None  # the result this run's source image was (Edit again), see ``parent_of``

    @property
    def final(self) -> OutputImage:
        """The result: the chosen candidate of an edit, the tokens-on image of a comparison (what the
        before/after slider and the history show)."""
        return self.images[-1] if self.mode == "compare" else self.images[self.chosen]

    @property
    def candidates(self) -> list[OutputImage]:
        """The candidates to pick from (empty unless an edit made several)."""
        return self.images if self.mode == "edit" and len(self.images) > 1 else []

    def files(self) -> list[str]:
        """The result's PNG downloads: each image of a comparison, the chosen candidate of an edit."""
        shown = self.images if self.mode == "compare" else [self.final]
        return [path for image in shown for path in image.files()]

    def all_files(self) -> list[str]:
        """Every image's downloads (what the API returns: each candidate's PNG, in seed order)."""
        return [path for image in self.images for path in image.files()]


def tokens_label(use_tokens: bool) -> str:
    return "with soft tokens" if use_tokens else "without soft tokens"


def _summary(mode: str, values: RunValues, results: list[EditResult], prepared: PreparedImage,
             mask_mode: str) -> str:
    params = values.params
    runs = results if mode == "compare" else results[:1]  # candidates share one batched run
    seconds = " + ".join(f"{r.stats.seconds:.2f} s" for r in runs)
    tokens = "tokens off vs on" if mode == "compare" else ("tokens on" if results[0].use_tokens else "tokens off")
    seeds = (f"{len(values.seeds)} variations, seeds {', '.join(map(str, values.seeds))}" if len(values.seeds) > 1
             else f"seed {params.seed}")
    size = "x".join(map(str, prepared.report.final_size))
    mask = mask_summary(mask_mode, results)  # per candidate: an automatic region differs between seeds
    return (f"**Done in {seconds}** · {seeds} · T {params.steps}, n_max {params.n_max}, n_min "
            f"{params.n_min}, n_avg {params.n_avg}, guidance src {params.src_cfg:g} / tar {params.tar_cfg:g} · "
            f"{tokens} · {size} px" + (f" · {mask}" if mask else ""))


def _details(service: EditorService, editor: FlowEditor, mode: str, controls: EditControls, values: RunValues,
             prepared: PreparedImage, results: list[EditResult], notices: list[str]) -> dict[str, Any]:
    runs = results if mode == "compare" else results[:1]
    return {
        "mode": mode, "model": editor.model_name, "kind": service.settings.kind,
        "source_prompt": controls.source_prompt, "target_prompt": controls.target_prompt,
        "seed": values.params.seed, "params": values.params.to_dict(), "max_side": values.max_side,
        "variations": len(values.seeds),
        "tokens": editor.tokens_info and {k: editor.tokens_info.get(k) for k in ("file", "sha256")},
        "input": prepared.report.to_dict(),
        # the result's mask_info (the editor's; None: no mask): the first candidate's, the tokens-on edit's
        "mask_mode": controls.mask_mode, "mask": (results[0] if mode == "edit" else results[-1]).mask_info,
        "results": [{"use_tokens": r.use_tokens, "seed": r.params.seed, "params": r.params.to_dict(),
                     "seconds": round(r.stats.seconds, 3),
                     "transformer_calls": r.stats.transformer_calls,
                     "source_latents_cached": r.stats.source_latents_cached,
                     "source_velocities_reused": r.stats.source_velocities_reused, "mask": r.mask_info}
                    for r in results],
        "seconds": round(sum(r.stats.seconds for r in runs), 3),
        "notices": list(notices),  # what was changed on the way (also shown as notices)
    }


NO_TOKENS = "this app runs without soft tokens (none were given, or they could not be loaded)"


def _token_states(editor: FlowEditor, token_states: list[bool], notices: list[str]) -> list[bool]:
    """The tokens states to run: an edit asked with tokens on an app that has none runs with them off
    (with a notice: the API's default may say on); Compare cannot run without them."""
    if editor.has_tokens or not any(token_states):
        return token_states
    if len(token_states) > 1:
        raise UserInputError(f"Compare tokens needs soft tokens, but {NO_TOKENS}: use Edit instead.")
    notices.append(f"{LABELS['use_tokens']}: {_sentence(NO_TOKENS)[:-1]}, so the edit ran with tokens off.")
    return [False]


def run_edits(service: EditorService, image: Any, controls: EditControls, token_states: list[bool], session: str,
              progress: ProgressFn | None, mask: Any, parent: dict[str, Any] | None = None) -> EditOutcome:
    """Check the inputs, run one edit per tokens state (or the candidates of one), save the PNGs
    (their metadata records ``parent``, the result the image was) and describe the outcome. The API
    layer's ``edit`` and ``compare`` (``app/api.py``) are this with one or two tokens states."""
    editor = service.editor()
    notices = check_prompt(editor, "source_prompt", controls.source_prompt)
    notices += check_prompt(editor, "target_prompt", controls.target_prompt)
    token_states = _token_states(editor, token_states, notices)
    values = params_from_controls(controls, side_limits(editor))
    notices += values.notes
    region = mask_request(controls.mask_mode, mask)
    prepared = prepare_source(editor, image, values.max_side)
    notices += [f"The image was {note}." for note in prepared.report.notes]
    auto = _edit_auto(service, editor, prepared, controls, values, token_states, session, progress, region) \
        if flag("auto", controls.auto) else None
    results = auto.candidates if auto is not None else \
        _edit_each(service, editor, prepared, controls, values, token_states, session, progress, region)
    notices += [_sentence(note) for note in (results[-1].mask_info or {}).get("notes", [])]  # e.g. mask resized

    mode, key = "compare" if len(token_states) > 1 and auto is None else "edit", _new_key()
    app_record = {"mode": mode, "max_side": values.max_side, "key": key, "parent": parent}
    source_path, images = _save_images(service.session_dir(session), prepared, results, controls.target_prompt,
                                       app_record, auto)
    details = {**_details(service, editor, mode, controls, values, prepared, results, notices), "parent": parent}
    if mode == "edit" and len(results) > 1:
        details["candidates"] = [{"seed": image.seed, "file": Path(image.path).name} for image in images]
    if auto is not None:  # the details describe the result: the pick
        details = {**_chosen(details, auto.picked), "auto": auto.metadata()["auto"]}
    used = dataclasses.replace(controls, seed=values.params.seed, randomize_seed=False, max_side=values.max_side,
                               use_tokens=token_states[-1])
    summary = _summary(mode, values, results, prepared, controls.mask_mode) + (auto_summary(auto) if auto else "")
    # a drawn mask is restored as saved beside the result: fitted to the restored input (source_path)
    restore_mask = images[-1].mask_path if controls.mask_mode == "drawn" else None
    return EditOutcome(mode, source_path, images, used, details, summary, notices, restore_mask, key=key,
                       parent=parent, chosen=auto.picked if auto is not None else 0)


def _edit_each(service: EditorService, editor: FlowEditor, prepared: PreparedImage, controls: EditControls,
               values: RunValues, token_states: list[bool], session: str, progress: ProgressFn | None,
               mask: bytes | Image.Image | AutoMask | None) -> list[EditResult]:
    """One edit per tokens state (Compare), or the candidates of one edit in one batched run
    (Variations), on one progress bar; Cancel stops them between steps.

    ``progress`` may raise ``EditCancelled`` itself (the page's client went away): the edit then
    stops the same way."""
    params = values.params
    cancel = service.begin_edit(session)
    total = params.n_max * len(token_states)
    results: list[EditResult] = []
    try:
        for index, use_tokens in enumerate(token_states):
            step = _stepper(cancel, progress, index * params.n_max, total)
            step(0, params.n_max)
            # the editor checks the parameters (FlowEditParams.check), once per edit, and each candidate's seed;
            # it reads and fits a given mask (editing.masks), or finds the region (AutoMask)
            if len(values.seeds) > 1:
                results += editor.edit_candidates(prepared, controls.source_prompt, controls.target_prompt, params,
                                                  seeds=values.seeds, use_tokens=use_tokens, mask=mask, progress=step)
            else:
                results.append(editor.edit(prepared, controls.source_prompt, controls.target_prompt, params,
                                           use_tokens=use_tokens, mask=mask, progress=step))
    finally:
        service.end_edit(session, cancel)
    return results


def _stepper(cancel: Any, progress: ProgressFn | None, offset: int, total: int | None) -> ProgressFn:
    """An edit's progress callback: raises ``EditCancelled`` once Cancel was pressed, reports the
    steps shifted by ``offset`` out of ``total`` (None: the edit's own total) to ``progress``."""
    def step(done: int, steps: int) -> None:
        if cancel.is_set():
            raise EditCancelled()
        if progress is not None:
            progress(offset + done, total or steps)

    return step


def _edit_auto(service: EditorService, editor: FlowEditor, prepared: PreparedImage, controls: EditControls,
               values: RunValues, token_states: list[bool], session: str, progress: ProgressFn | None,
               mask: bytes | Image.Image | AutoMask | None) -> AutoResult:
    """Auto strength (``editing.auto``): the sweep around the controls' n_max, times the Variations'
    seeds and, for Compare, tokens off and on, in one batched run; scored, one picked."""
    from editing.auto import Sweep, edit_auto, sweep_runs

    sweep = Sweep(seeds=tuple(values.seeds) if len(values.seeds) > 1 else (),
                  tokens=tuple(token_states) if len(token_states) > 1 else ())
    try:
        sweep_runs(values.params, sweep, token_states[-1])
    except ParameterError as exc:
        if exc.field != "strengths":
            raise
        raise UserInputError(f"{LABELS['variations']}: {LABELS['auto']} makes {len(sweep_runs(values.params, Sweep(), True))}"
                             f" candidates per seed{' and tokens state' if sweep.tokens else ''}, so fewer variations "
                             f"fit in one run ({exc}).") from None
    scorer = service.scorer()
    cancel = service.begin_edit(session)
    try:
        step = _stepper(cancel, progress, 0, None)
        step(0, values.params.n_max)
        return edit_auto(editor, prepared, controls.source_prompt, controls.target_prompt, scorer, values.params,
                         sweep=sweep, use_tokens=token_states[-1], mask=mask, progress=step)
    finally:
        service.end_edit(session, cancel)


def auto_caption(row: dict[str, Any], tokens_axis: bool, seeds_axis: bool) -> str:
    """A candidate of an Auto run in the strip, short enough for a thumbnail: ★ for the pick, n = its
    n_max, its tokens state and seed where the sweep varied them, alignment / preservation."""
    tokens = f" {'on' if row['use_tokens'] else 'off'}" if tokens_axis else ""
    seed = f" s{row['seed']}" if seeds_axis else ""
    return f"{'★ ' if row['picked'] else ''}n{row['n_max']}{tokens}{seed} · {row['alignment']:.1f}/{row['preservation']:.0f}"


def auto_summary(auto: AutoResult) -> str:
    """The summary line's Auto part: what was picked, and whether the tokens won."""
    chosen = auto.chosen.params
    won = "" if auto.tokens_won is None else f" · the soft tokens {'won' if auto.tokens_won else 'lost'} for this picture"
    return (f" · **Auto strength:** {len(auto.candidates)} candidates, picked n_max {chosen.n_max} (alignment "
            f"{auto.alignment[auto.picked]:.2f}, preservation {auto.preservation[auto.picked]:.1f}){won}")


def _save_images(folder: Path, prepared: PreparedImage, results: list[EditResult], target_prompt: str,
                 app_record: dict[str, Any], auto: AutoResult | None = None) -> tuple[str, list[OutputImage]]:
    """The prepared input (the "before") and each result as PNGs in the session's folder; a masked
    result also gets its mask beside it (``EditResult.save``) and the input with the region tinted.
    Each PNG's metadata holds ``app_record`` (mode, max side, the run's key, its parent: Edit again)
    and its input file's name under "app", so a replay finds both and a chain can be followed; an
    Auto run's PNGs also hold the sweep, the scores, the pick and which candidate they are ("auto")."""
    from editing.cli import safe_name  # the editing library: loaded by now, an edit ran
    from editing.editor import mask_path

    mode = app_record["mode"]
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}-{safe_name(target_prompt, 40)}"
    source_path = write_png(prepared.image, folder / f"{stem}-input.png")
    app_record = {**app_record, "input_file": source_path.name}
    images = []
    rows = auto.rows() if auto is not None else None
    for index, result in enumerate(results):
        suffix = ("tokens" if result.use_tokens else "no-tokens") + (f"-seed{result.params.seed}"
                                                                     if len(results) > 1 and mode == "edit" else "")
        extra: dict[str, Any] = {"app": app_record}
        caption = f"seed {result.params.seed}"
        if auto is not None:
            suffix += f"-nmax{result.params.n_max}"
            extra["auto"] = {**auto.metadata()["auto"], "candidate": index}
            caption = auto_caption(rows[index], auto.tokens_won is not None, len({r["seed"] for r in rows}) > 1)
        path = result.save(folder / f"{stem}-{suffix}.png", extra=extra)
        masked = result.mask is not None
        label = tokens_label(result.use_tokens).capitalize() + (f" · seed {result.params.seed}" if mode == "edit"
                                                               else "")
        images.append(OutputImage(str(path), result.use_tokens, label,
                                  mask_path=str(mask_path(path)) if masked else None,
                                  region_path=save_region(result, folder / f"{stem}-{suffix}.region.png"),
                                  seed=result.params.seed, caption=caption))
    return str(source_path), images


# ----------------------------------------------------------------------------- picking, chaining


def choose_candidate(outcome: EditOutcome | None, index: Any) -> EditOutcome:
    """``outcome`` with candidate ``index`` as its result: the slider, the PNG, the seed (the
    controls then rerun exactly it) and the details follow. The same key: it is the same run."""
    if outcome is None or not outcome.candidates:
        raise UserInputError("There are no candidates to pick from: set Variations above 1 or tick Auto strength, "
                             "and press Edit.")
    if not isinstance(index, int) or not 0 <= index < len(outcome.images):
        raise UserInputError("That variation is no longer available.")
    image, result = outcome.images[index], outcome.details["results"][index]
    details = _chosen(outcome.details, index)
    controls = dataclasses.replace(outcome.controls, seed=image.seed)
    if "auto" in outcome.details:  # an Auto candidate taken: the controls become its setting, Edit reruns exactly it
        controls = dataclasses.replace(controls_for_params(FlowEditParams.from_dict(result["params"]),
                                                           result["use_tokens"], controls), auto=False)
    return dataclasses.replace(outcome, chosen=index, controls=controls, details=details)


def _chosen(details: dict[str, Any], index: int) -> dict[str, Any]:
    """A run's details with candidate ``index`` as the result: its seed, parameters and mask."""
    result = details["results"][index]
    return {**details, "seed": result["seed"], "params": result["params"], "mask": result["mask"], "chosen": index}


def picks_per_tokens_state(outcome: EditOutcome) -> tuple[int, int]:
    """An Auto run with tokens off and on (Compare): the candidate the rule picks among each state's."""
    from editing.auto import pick  # loaded by now: the run used it

    record = outcome.details["auto"]
    rows, margin = record["candidates"], record["sweep"]["margin"]
    picks = []
    for state in (False, True):
        own = [index for index, row in enumerate(rows) if row["use_tokens"] == state]
        picks.append(own[pick([rows[i]["alignment"] for i in own], [rows[i]["preservation"] for i in own],
                              [rows[i]["n_max"] for i in own], margin)])
    return picks[0], picks[1]


def parent_of(outcome: EditOutcome) -> dict[str, Any]:
    """What a chained run records about the result its source image was (Edit again)."""
    return {"key": outcome.key, "file": Path(outcome.final.path).name, "source_prompt": outcome.controls.source_prompt,
            "target_prompt": outcome.controls.target_prompt, "seed": outcome.final.seed}


# ----------------------------------------------------------------------------- history


def add_to_history(history: list[EditOutcome] | None, outcome: EditOutcome, limit: int) -> list[EditOutcome]:
    """Newest first, at most ``limit`` entries (a new list: Gradio state is per session)."""
    return ([outcome] + list(history or []))[:limit]


def history_gallery(history: list[EditOutcome]) -> list[tuple[str, str]]:
    """(image, caption) per entry for the history gallery."""
    return [(entry.final.path, f"{entry.controls.target_prompt[:60]} · seed {entry.controls.seed}"
             + (" · compare" if entry.mode == "compare" else "")
             + (f" · {len(entry.images)} variations" if entry.candidates else "")
             + (f" · {entry.controls.mask_mode} mask" if entry.controls.mask_mode != "none" else "")
             + (" · edited again" if entry.parent else ""))
            for entry in history]


def replace_in_history(history: list[EditOutcome] | None, outcome: EditOutcome) -> list[EditOutcome]:
    """The history with the entry of ``outcome``'s run (same key) replaced by it (a picked candidate)."""
    return [outcome if entry.key == outcome.key else entry for entry in history or []]


def in_history(history: list[EditOutcome] | None, outcome: EditOutcome) -> bool:
    return any(entry.key == outcome.key for entry in history or [])


def history_entry(history: list[EditOutcome], index: Any) -> EditOutcome:
    if not isinstance(index, int) or not 0 <= index < len(history or []):
        raise UserInputError("That history entry is no longer available.")
    return history[index]


# ----------------------------------------------------------------------------- examples


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
    # a new picture: a mask drawn on the previous one would not fit it
    base = dataclasses.replace(base, source_prompt=example.source_prompt, target_prompt=example.target_prompt,
                               mask_mode="none")
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
            details = {"mode": mode, "precomputed": True, "example": example.name, "caption": example.caption,
                       "params": example.params}
            shows = f": {example.caption}" if example.caption else f" ({example.name})"  # what the classifier found
            outcome = EditOutcome(mode, example.image, images, controls, details,
                                  f"**Precomputed example**{shows} · seed {controls.seed} · press Edit or Compare "
                                  "to run it again")
    return ExampleSelection(example.image, controls, outcome)


def example_rows(service: EditorService) -> list[list[str]]:
    return [[example.image, example.source_prompt, example.target_prompt] for example in service.examples()]
