"""The page's controls as values: their labels, ``EditControls``, how they become FlowEdit parameters, presets.

The rules FlowEdit's parameters obey (0 <= n_min <= n_max <= T, n_max >= 1, CFG >= 0, ...) live in
``FlowEditParams.ranges`` / ``check`` only. This module turns what the controls send into typed
values (a slider sends 6.0 for 6), applies the app's own caps on what one press may cost on a
shared device (``MAX_STEPS``, ``MAX_N_AVG``, the top of ``CFG_RANGE``) and maps a
``ParameterError`` to the label of the control that sets its field (``parameter_message``).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from editing.inputs import MIN_PATCHES
from editing.params import MAX_PROMPT_CHARS, FlowEditParams, ParameterError, lone_surrogate, shown
from editing.presets import DEFAULT_PRESETS, PRESETS, default_preset_name, get_preset
from softrepa.kinds import KINDS

if TYPE_CHECKING:  # the page is built before torch and the editing library load (app/main.py)
    from editing.editor import FlowEditor
    from app.service import EditorService

# Labels shown on the controls; error messages quote them so a person finds the control to fix.
LABELS: dict[str, str] = {
    "image": "Source image",
    "source_prompt": "Source prompt",
    "target_prompt": "Target prompt",
    "use_tokens": "Soft tokens",
    "tar_cfg": "Target guidance",
    "src_cfg": "Source guidance",
    "n_max": "Edit strength (n_max)",
    "steps": "Steps (T)",
    "n_min": "Detail steps (n_min)",
    "n_avg": "Noise samples per step (n_avg)",
    "seed": "Seed",
    "randomize_seed": "Random seed",
    "max_side": "Max side (px)",
    "guidance": "Guidance convention",
    "token_branches": "Tokens on",
    "mask_mode": "Mask",
    "mask": "Mask image",
    "mask_brush": "Paint the region to edit",
    "variations": "Variations",
    "auto": "Auto strength",
    "noise_offset": "Noise offset",
    "replay": "Replay a result",
    "instruction": "Instruction",
    "result": "Result PNG",  # Edit again through the API: a result of this app (or of python -m editing)
}
# What the two guidance sliders (src_cfg, tar_cfg) are on each architecture (softrepa.kinds): their
# info lines on the page. FLUX.1 is guidance-distilled: the scale is an input of the model, not a mix
# of two passes, and FLUX.1-schnell takes none (its sliders are disabled: ``guidance_sliders``).
GUIDANCE_INFO: dict[str, tuple[str, str]] = {
    "mmdit": ("classifier-free guidance (CFG) of the target branch: higher follows the target prompt more closely",
              "classifier-free guidance (CFG) of the source branch"),
    "flux": ("the guidance value FLUX is given for the target branch (a guidance-distilled model: one pass, no "
             "negative prompt): higher follows the target prompt more closely",
             "the guidance value FLUX is given for the source branch"),
}
NO_GUIDANCE_INFO = "this model takes no guidance (FLUX.1-schnell): the slider has no effect"
# the Mask control: none = the whole picture may change; drawn = only the region of the mask image
# (painted with the brush or uploaded); auto = the region the edit itself finds (editing.masks.AutoMask)
MASK_MODES = ("none", "drawn", "auto")
# What each parameter of the /edit and /compare endpoints means (their docstrings are made from it:
# app.components.describe_endpoint). Bounds are not restated: FlowEditParams.check and the app's caps
# below refuse what is out of range, naming the control.
API_HELP: dict[str, str] = {
    "image": "the picture to edit (an image file; larger ones are downscaled to max_side and center-cropped)",
    "source_prompt": "what the picture shows",
    "target_prompt": "the same description with your change",
    "use_tokens": "edit with the SoftREPA soft tokens (only when the app has tokens)",
    "tar_cfg": "target guidance: higher follows the target prompt more closely",
    "src_cfg": "source guidance",
    "n_max": "edit strength: how many of the T steps edit (at most steps)",
    "steps": "scheduler steps T over the whole noise range",
    "n_min": "the last n_min editing steps sample the target plainly (at most n_max)",
    "n_avg": "noise samples averaged per step (n_avg times slower, smoother)",
    "seed": "the seed all noise comes from (a fractional one is rounded, with a note in details['notices'])",
    "randomize_seed": "draw a new seed (the one used is in the result's details)",
    "max_side": "inputs larger than this (pixels, long side) are downscaled",
    "guidance": "standard: u + w(c - u); authors: the SoftREPA code's c + w(c - u) on the target",
    "token_branches": "both: soft tokens on both FlowEdit branches (the paper); target: the target branch only",
    "mask_mode": "none: the whole picture may change; drawn: only the region of the mask image; auto: the "
                 "region the edit itself finds (shown in the result)",
    "mask": "with mask_mode 'drawn' only: an image of the same aspect as the picture, white (or, in a "
            "transparent image, painted) = may change; refused with the other modes",
    "variations": "how many candidates (1 to 8) to make in one batched run: seeds seed, seed + 1, ... (random "
                  "ones with randomize_seed); png_files holds each candidate's PNG, details['candidates'] their "
                  "seeds",
    "auto": "let the app pick the edit strength for this picture: four strengths around n_max (x the variations' "
            "seeds; /compare: x tokens off and on) in one batched run, each scored without the answer (alignment "
            "with the target prompt, preservation of the source), and the least change within a margin of the best "
            "alignment picked; details['auto'] lists every candidate with its two scores and the pick, png_files "
            "each candidate's PNG (the picked one is the result)",
    "noise_offset": "noise draws skipped before the first step: 0, or what an auto pick's PNG records (replaying it "
                    "needs it)",
    "instruction": "what to change, in one line, e.g. 'make the square an outline'",
    "png": "a result PNG this app or python -m editing wrote (its settings are in its metadata)",
    "result": "a result PNG of this app (or of python -m editing): it becomes the source image, and its settings "
              "are the defaults of every parameter left out",
}
# Files the API takes (image, mask, png, result), given to the MCP tools: the URL of an upload to this
# app (the rule and its messages: app/agents.py), a small "data:image/png;base64,..." URL or an http(s) URL.
FILE_PARAMETERS = ("image", "mask", "png", "result")
for _name in FILE_PARAMETERS:
    API_HELP[_name] += ("; over MCP, the URL of an upload to this app (POST /gradio_api/upload, or gradio upload-mcp), "
                        "a data:image/png;base64,... URL within the upload limit, or an http(s) URL")
# the CFG sliders (the FlowEdit demo's go to 30); 0..1 is allowed (standard CFG 1 = conditional only)
CFG_RANGE = (0.0, 30.0)
MAX_STEPS = 100  # the app's caps: what one press may cost on the shared device
MAX_N_AVG = 8
APP_CAPS: dict[str, float] = {"steps": MAX_STEPS, "n_avg": MAX_N_AVG, "src_cfg": CFG_RANGE[1], "tar_cfg": CFG_RANGE[1]}
MAX_SEED = 2**31 - 1  # what the seed box holds and random seeds are drawn from; the API may send up to 2**63 - 1
# Variations: candidates of one edit made in one batched run (FlowEditor.edit_candidates); each costs
# about one edit's memory and a share of its time, so the app caps them like the other costs
VARIATIONS_RANGE = (1, 8)


class UserInputError(ValueError):
    """A problem the person using the app can fix; the message says how."""


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
    mask_mode: str = "none"  # one of MASK_MODES; the mask image itself is an input like the source image
    variations: int = 1  # candidates with seeds seed, seed + 1, ... (Edit only; Compare makes one of each)
    auto: bool = False  # pick the strength: a sweep around n_max, scored, one picked (editing.auto)
    noise_offset: int = 0  # FlowEditParams.noise_offset: an auto pick's, to rerun exactly it


CONTROL_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EditControls))


def parameter_message(error: ParameterError) -> str:
    """FlowEdit's message about a parameter, headed by the label of the control that sets it."""
    return f"{LABELS.get(error.field, error.field)}: {error}."


# ----------------------------------------------------------------------------- controls -> parameters


def _whole_number(name: str, value: Any) -> int:
    """A whole-number control's value as an int (a slider sends 6.0 for 6; an API client may send "6")."""
    label = LABELS[name]
    if isinstance(value, bool) or value is None:
        raise UserInputError(f"{label} must be a whole number, got {shown(value)}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{label} must be a whole number, got {shown(value)}.") from None
    if not math.isfinite(number) or number != math.floor(number):
        raise UserInputError(f"{label} must be a whole number, got {shown(value)}.")
    return int(number)


def _number(name: str, value: Any) -> float:
    """A number control's value as a float (NaN and infinities pass: whether they run is FlowEdit's rule)."""
    if isinstance(value, bool):
        raise UserInputError(f"{LABELS[name]} must be a number, got {shown(value)}.")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{LABELS[name]} must be a number, got {shown(value)}.") from None


def slider_range(name: str, steps: int, n_max: int) -> tuple[float, float]:
    """(minimum, maximum) of a parameter's slider: FlowEdit's range for it given T and n_max
    (``FlowEditParams.ranges``), its top lowered to the app's cap where the app has one."""
    if name in ("src_cfg", "tar_cfg"):
        return CFG_RANGE
    low, high = FlowEditParams(steps=steps, n_max=n_max).ranges()[name]
    tops = [top for top in (high, APP_CAPS.get(name)) if top is not None]
    if not tops:
        raise ValueError(f"{name} has no upper bound, neither FlowEdit's nor the app's: a slider needs one")
    return low, min(tops)


def _check_app_caps(values: dict[str, float], steps: int, n_max: int) -> None:
    """Refuse what is over the app's caps, quoting the control's range; below them FlowEdit decides."""
    for name, cap in APP_CAPS.items():
        value = values[name]
        if value > cap:
            low, high = slider_range(name, steps, n_max)
            raise UserInputError(f"{LABELS[name]} must be between {low:g} and {high:g}, got {value:g}.")


def side_limits(editor: FlowEditor) -> tuple[int, int]:
    """(smallest, largest) long side the model takes: 4 patches up to what its position grid covers."""
    smallest = editor.min_side or MIN_PATCHES * editor.factor
    return smallest, editor.max_side


def prompt_text(name: str, prompt: Any) -> str:
    """A prompt control's value as text: a non-empty string of at most ``MAX_PROMPT_CHARS``
    characters; ``UserInputError`` naming the control otherwise. How many tokens the model reads
    is the editor's rule (``FlowEditor.check_prompt_length``)."""
    label = LABELS[name]
    if not isinstance(prompt, str) or not prompt.strip():
        what = "what the picture shows" if name == "source_prompt" else "what you want the picture to show"
        got = "" if isinstance(prompt, str) or prompt is None else f" (got {type(prompt).__name__})"
        raise UserInputError(f"The {label.lower()} is empty{got}: describe {what}.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserInputError(f"The {label.lower()} is {len(prompt):,} characters long, over the limit of "
                             f"{MAX_PROMPT_CHARS:,}: describe the picture in a sentence or two.")
    half = lone_surrogate(prompt)
    if half is not None:  # a JSON escape no tokenizer reads; it failed inside the edit as an internal error
        raise UserInputError(f"The {label.lower()} holds {half!r}, half of a UTF-16 pair, which is not text: "
                             "send the prompt as UTF-8 text.")
    return prompt


def check_mask_mode(mode: Any) -> str:
    """The Mask control's value, one of ``MASK_MODES``; ``UserInputError`` naming the control otherwise."""
    if not isinstance(mode, str) or mode not in MASK_MODES:
        raise UserInputError(f"{LABELS['mask_mode']} must be one of {', '.join(MASK_MODES)}, got {shown(mode)}.")
    return mode


def flag(name: str, value: Any) -> bool:
    """A checkbox control's value (True / False; an API client may also send 0 / 1)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UserInputError(f"{LABELS[name]} must be true or false, got {shown(value)}.")


def side_slider_range(kind: str) -> tuple[int, int, int]:
    """(minimum, maximum, step) of the max-side slider for a model kind: a quarter to twice its
    training resolution, in steps of its usual patch size (the loaded model clamps further)."""
    resolution = KINDS[kind].resolution
    step = 16 if resolution >= 256 else 8
    return max(step, resolution // 4), resolution * 2, step


def _max_side(controls: EditControls, sides: tuple[int, int]) -> int:
    """The control's max side within ``sides``, the (smallest, largest) long side the model takes
    (the max side is the app's, not FlowEdit's)."""
    smallest, largest = sides
    max_side = _whole_number("max_side", controls.max_side)
    if not smallest <= max_side <= 2**16:
        raise UserInputError(f"{LABELS['max_side']} must be between {smallest} and {2**16}, got {max_side}.")
    # the page's slider range comes from the model kind (known before the model loads); the loaded
    # model's own limit wins: above it, use the limit
    return min(max_side, largest)


@dataclass
class RunValues:
    """What the controls ask one press to run, as typed values."""

    params: FlowEditParams  # with the first candidate's seed
    max_side: int
    seeds: list[int]  # one per candidate (Variations), the first = params.seed
    notes: list[str]  # what was changed on the way, e.g. a fractional seed rounded (a notice on the page)


def _seed(controls: EditControls, notes: list[str]) -> int:
    """The seed box's value as a whole number: a fractional one is rounded (half up), with a note."""
    value = controls.seed
    if isinstance(value, float) and math.isfinite(value) and value != math.floor(value):
        rounded = math.floor(value + 0.5)
        notes.append(f"{LABELS['seed']} {value:g} was rounded to {rounded}: seeds are whole numbers.")
        return rounded
    return _whole_number("seed", value)


def variations_from_controls(controls: EditControls) -> int:
    low, high = VARIATIONS_RANGE
    count = _whole_number("variations", controls.variations)
    if not low <= count <= high:
        raise UserInputError(f"{LABELS['variations']} must be between {low} and {high}, got {count}: each "
                             "candidate costs about one more edit's memory.")
    return count


def params_from_controls(controls: EditControls, sides: tuple[int, int]) -> RunValues:
    """What to run from the controls; ``UserInputError`` naming the control to fix. ``sides``: the
    (smallest, largest) long side the model takes (``side_limits``, or the kind's while it loads).

    The parameters are not checked here: the editor checks them once per edit and each candidate's
    seed (``FlowEditParams.check``), and the app shows a ``ParameterError`` on its control. What no
    edit follows (a replayed PNG) calls ``check_controls``.
    """
    counts = {name: _whole_number(name, getattr(controls, name))
              for name in ("steps", "n_max", "n_min", "n_avg", "noise_offset")}
    cfgs = {name: _number(name, getattr(controls, name)) for name in ("src_cfg", "tar_cfg")}
    _check_app_caps({**counts, **cfgs}, counts["steps"], counts["n_max"])
    variations = variations_from_controls(controls)
    notes: list[str] = []
    if flag("randomize_seed", controls.randomize_seed):
        seeds = [secrets.randbelow(MAX_SEED + 1) for _ in range(variations)]
    else:
        first = _seed(controls, notes)
        seeds = [first + index for index in range(variations)]
    params = FlowEditParams(**counts, **cfgs, seed=seeds[0], guidance=controls.guidance,
                            token_branches=controls.token_branches)
    return RunValues(params, _max_side(controls, sides), seeds, notes)


def check_controls(controls: EditControls, sides: tuple[int, int]) -> RunValues:
    """Every check an edit makes of its controls before the model runs, for values no edit follows
    yet (a replayed PNG's): the prompts (``prompt_text``), the tokens box, the mask mode, then
    ``params_from_controls`` and ``FlowEditParams.check``. ``UserInputError`` or ``ParameterError``
    (``parameter_message`` names its control)."""
    for name in ("source_prompt", "target_prompt"):
        prompt_text(name, getattr(controls, name))
    flag("use_tokens", controls.use_tokens)  # randomize_seed: params_from_controls reads it with flag
    flag("auto", controls.auto)
    check_mask_mode(controls.mask_mode)
    values = params_from_controls(controls, sides)
    values.params.check()
    return values


# ----------------------------------------------------------------------------- presets


def guidance_sliders(kind: str) -> dict[str, dict[str, Any]]:
    """For ``src_cfg`` and ``tar_cfg``: what the slider means on this kind's architecture (``info``)
    and whether it does anything (``interactive``)."""
    spec = KINDS[kind]
    if spec.arch not in GUIDANCE_INFO:
        raise ValueError(f"the app has no guidance sliders for architecture {spec.arch!r} (kind {kind!r}); "
                         f"it edits {', '.join(GUIDANCE_INFO)} models")
    if spec.arch == "flux" and not spec.guidance_embeds:
        return {name: dict(info=NO_GUIDANCE_INFO, interactive=False) for name in ("tar_cfg", "src_cfg")}
    tar_info, src_info = GUIDANCE_INFO[spec.arch]
    return {"tar_cfg": dict(info=tar_info, interactive=True), "src_cfg": dict(info=src_info, interactive=True)}


def presets_for(kind: str) -> list[str]:
    """The presets offered for a model kind: the defaults of the kinds of its architecture (SD3 and
    SD3.5 share theirs, FLUX has its own) and their variants (``sd3-tokens-paper``)."""
    arch = KINDS[kind].arch
    defaults = {name for (other, _), name in DEFAULT_PRESETS.items() if other in KINDS and KINDS[other].arch == arch}
    return [name for name in PRESETS if name in defaults or any(name.startswith(d + "-") for d in defaults)]


def preset_choices(kind: str) -> list[tuple[str, str]]:
    """(label, name) for the preset menu of a kind: the name and the two numbers people compare presets by."""
    return [(f"{name} (n_max {PRESETS[name].params.n_max}, tar {PRESETS[name].params.tar_cfg:g})", name)
            for name in presets_for(kind)]


def default_preset(service: EditorService) -> str:
    return default_preset_name(service.settings.kind, service.has_tokens)


def controls_for_params(params: FlowEditParams, use_tokens: bool, base: EditControls) -> EditControls:
    return dataclasses.replace(base, tar_cfg=params.tar_cfg, src_cfg=params.src_cfg, n_max=params.n_max,
                               steps=params.steps, n_min=params.n_min, n_avg=params.n_avg, seed=params.seed,
                               randomize_seed=False, guidance=params.guidance, token_branches=params.token_branches,
                               noise_offset=params.noise_offset, use_tokens=use_tokens)


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
