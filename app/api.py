"""The app's one API layer: every action of the page as a function of plain values.

    edit        image + prompts + controls [+ mask]      -> EditOutcome     /edit
    compare     the same edit, tokens off and on          -> EditOutcome     /compare
    describe    image                                     -> source prompt   /describe
    instruct    instruction + source prompt [+ image]     -> target prompt   /instruct
    replay      a result PNG                              -> its settings    /replay
    edit_again  a result PNG (+ what changes)             -> EditOutcome     /edit_again

The page's events (``app/runs.py``, ``app/prompt_controls.py``, ``app/reuse_controls.py``), the
named endpoints (the two buttons' events and ``app/endpoints.py``) and so the MCP tools, which are
those endpoints, call these functions and nothing under them. Each checks what it is handed at
this edge, with the rules' own checks (``FlowEditParams.check`` and the app's kin in
``app/controls.py``, the image and mask readers), so a value typed into a control, sent by a
script, read from a PNG's metadata or uploaded as a file meets the same rule and the same message:
headed by the control or parameter to change, never a traceback (``reports_errors``).

The first paragraph of each docstring here is its endpoint's description (the API page, the MCP
tool): ``summary``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.controls import LABELS, EditControls, UserInputError, flag, initial_controls, prompt_text
from app.handlers import EditOutcome, ProgressFn, parent_of, reports_errors, run_edits
from app.replay import Replay, replay as replay_png
from app.service import EditorService
from editing.params import shown

if TYPE_CHECKING:  # data_prep and shapes (torch) load when a helper is first asked for (EditorService.prompt_helpers)
    from app.prompt_help import InstructionResult


def summary(action: Any) -> str:
    """The first paragraph of an action's docstring, on one line: its endpoint's description."""
    return " ".join(action.__doc__.split("\n\n", 1)[0].split())


@reports_errors
def edit(service: EditorService, image: Any, controls: EditControls, session: str = "",
         progress: ProgressFn | None = None, mask: Any = None, parent: dict[str, Any] | None = None) -> EditOutcome:
    """Edit the image from the source prompt to the target prompt (tokens on or off), optionally only
    inside a mask, optionally as several candidates (variations).

    ``controls.variations`` candidates (seeds seed, seed + 1, ...; random ones with
    ``randomize_seed``) come from one batched run; ``mask``: the mask image for mask mode "drawn"
    (``app.masks.mask_request``); ``parent``: the result the image was (Edit again), kept in the
    outcome's details and its PNGs' metadata. ``EditCancelled`` when Cancel stopped it."""
    token_states = [flag("use_tokens", controls.use_tokens)]
    return run_edits(service, image, controls, token_states, session, progress, mask, parent)


@reports_errors
def compare(service: EditorService, image: Any, controls: EditControls, session: str = "",
            progress: ProgressFn | None = None, mask: Any = None, parent: dict[str, Any] | None = None) -> EditOutcome:
    """The same edit (same seed, same mask) without and with soft tokens.

    One candidate of each; needs an app with soft tokens."""
    one_each = dataclasses.replace(controls, variations=1)
    return run_edits(service, image, one_each, [False, True], session, progress, mask, parent)


@dataclass
class Described:
    source_prompt: str
    note: str  # who wrote it, and to check it


@reports_errors
def describe(service: EditorService, image: Any) -> Described:
    """Describe the image: the source prompt, written from the picture by the app's describer.

    The shapes model's classifier and caption grammar, or LLaVA with --captioner."""
    describer, _ = service.prompt_helpers()
    if describer is None:
        raise UserInputError("This app has no describer (start it with --captioner MODEL).")
    if image is None or (isinstance(image, str) and not image.strip()):
        raise UserInputError(f"{LABELS['image']}: there is no image to describe; upload one.")
    return Described(describer.describe(image),
                     f"The source prompt was written by the {describer.name}: check it, change what is wrong.")


@reports_errors
def instruct(service: EditorService, instruction: Any, source_prompt: Any, image: Any = None) -> InstructionResult:
    """Turn a one-line instruction and the source prompt into the target prompt, checked by the
    one-concept rule.

    The result's ``ok`` says whether the validator accepted it; ``refuse_unless_valid`` makes a
    refusal an error (the API's), the page shows the proposal with the verdict instead."""
    _, instructor = service.prompt_helpers()
    if instructor is None:
        raise UserInputError("This app has no instruction helper (start it with --rewriter MODEL).")
    if not isinstance(instruction, str) or not instruction.strip():
        raise UserInputError(f"The {LABELS['instruction'].lower()} is empty: type what to change, e.g. 'make the "
                             "square an outline'.")
    if not instructor.needs_image:
        source_prompt = prompt_text("source_prompt", source_prompt)
    elif source_prompt is not None and not isinstance(source_prompt, str):
        raise UserInputError(f"The {LABELS['source_prompt'].lower()} must be text, got {type(source_prompt).__name__}.")
    return instructor.rewrite(instruction, source_prompt or "", image if instructor.needs_image else None)


def refuse_unless_valid(result: InstructionResult) -> InstructionResult:
    """``result`` when the one-concept validator accepted it; else ``UserInputError`` with its reason
    and the proposal (an API client gets a refusal, not a target to check by eye)."""
    if result.ok:
        return result
    reasons = " ".join(note.rstrip(".") + "." for note in result.notes)
    raise UserInputError(f"{LABELS['instruction']}: refused, the proposed target {shown(result.target)} is not one "
                          f"change of the source prompt. {reasons}")


def _sides(service: EditorService) -> tuple[int, int]:
    smallest, largest, _ = service.side_range()
    return smallest, largest


@reports_errors
def replay(service: EditorService, png: Any, base: EditControls | None = None, session: str = "",
           label: str = LABELS["replay"]) -> Replay:
    """Read a result PNG's settings back (prompts, parameters, seed, mask, input image), every value
    checked as if typed.

    ``base``: the controls to start from (the page's; the model's default preset when None);
    ``label``: the control or parameter the PNG came through, heading any message."""
    if not isinstance(png, (str, Path)) or not str(png).strip() or not Path(png).is_file():
        raise UserInputError(f"{label}: no PNG arrived; give a result PNG of this app or of python -m editing.")
    base = base if base is not None else initial_controls(service)
    return replay_png(png, base, service.settings, service.has_tokens, service.settings.model_label,
                      service.session_dir(session), _sides(service), label)


@dataclass
class EditAgain:
    """The inputs that edit a result further: its image as the source, its target prompt as the
    source prompt (the target prompt stays, to edit from), its mask for a drawn one, and the
    record of the result it was (``parent``)."""

    image: str
    source_prompt: str
    target_prompt: str
    mask: str | None
    parent: dict[str, Any]


def next_edit(outcome: EditOutcome | None) -> EditAgain:
    """The page's Edit again: the result shown becomes the source of the next edit."""
    if outcome is None:
        raise UserInputError("There is no result to edit again yet: press Edit first (or pick a history entry).")
    return EditAgain(outcome.final.path, outcome.controls.target_prompt, outcome.controls.target_prompt,
                     outcome.mask, parent_of(outcome))


@reports_errors
def edit_again(service: EditorService, result: Any, changes: dict[str, Any], session: str = "",
               progress: ProgressFn | None = None, mask: Any = None) -> EditOutcome:
    """Edit a previous result further: the result PNG becomes the source image, its target prompt the
    source prompt, and the new edit records it as its parent.

    Every setting left out (None in ``changes``) is the result's own, read from its metadata and
    checked (``replay``); a drawn mask the result carries stays unless ``mask`` or a mask mode is given."""
    replayed = replay(service, result, session=session, label=LABELS["result"])
    given = {name: value for name, value in changes.items() if value is not None}
    controls = dataclasses.replace(replayed.controls, source_prompt=replayed.controls.target_prompt, **given)
    if mask is None and "mask_mode" not in given:
        mask = replayed.mask
    return edit(service, str(result), controls, session, progress, mask, replayed.parent)
