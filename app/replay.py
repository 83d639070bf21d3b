"""Replay a result: a PNG this app or the editing CLI (``python -m editing``) wrote carries its
edit in its metadata (``editing.editor.read_png_metadata``); this turns it back into the page's
controls, its mask and, when this server still has it, its input image. Plain values in and out.

What is restored: both prompts, every FlowEdit parameter the page has a control for, the seed
(random seed off), the tokens state (off when this app has no tokens), the max side, the mask
mode (``given`` -> drawn with the mask the PNG carries, ``auto`` -> auto) and the input image:

* the app's PNGs name their input (``app.input_file``, the ``<stem>-input.png`` saved beside
  them): it is looked up in this app's results folder;
* the CLI's name the image file they edited (``input_image``): it is used when it lies in a folder
  this app serves anyway (its temporary folder, the examples, the repository's ``assets/``). A path
  elsewhere is not opened: a PNG's metadata must not make the server show any file it can read.

Whatever cannot be restored is said in the notes (shown under the replay box).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from app.controls import (CONTROL_NAMES, LABELS, EditControls, UserInputError, check_controls, controls_for_params,
                          parameter_message)
from app.settings import REPO_ROOT, AppSettings
from editing.params import FlowEditParams, ParameterError, shown
from softrepa.images import write_png

REPLAYED_MASK_PREFIX = "replayed-mask"


@dataclass
class Replay:
    controls: EditControls
    image: str | None  # the edit's input image, when found (else the source image stays as it is)
    mask: str | None  # the drawn mask as an image file (mask mode "drawn"), else None
    notes: list[str]  # what was restored and what could not be
    parent: dict[str, Any] | None = None  # what Edit again records of this result (``parent_record``)


def _fail(message: str, label: str = LABELS["replay"]) -> UserInputError:
    return UserInputError(f"{label}: {message.rstrip('.')}.")


def read_metadata(path: str | Path, label: str = LABELS["replay"]) -> dict[str, Any]:
    """The edit metadata of the PNG at ``path`` as a JSON object; ``UserInputError`` headed by
    ``label`` (the control or parameter the PNG came through) saying why there is none. Its values
    are not trusted yet: ``replay`` checks them."""
    from editing.editor import METADATA_KEY  # the editing library (torch) loads after the page is served

    try:
        with Image.open(path) as image:
            kind = image.format
            text = getattr(image, "text", {}).get(METADATA_KEY)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise _fail("the file is not an image; give a PNG this app or `python -m editing` wrote", label) from None
    if kind != "PNG":
        raise _fail(f"this is a {kind} image, not a PNG written by softrepa-edit; give one of its result PNGs", label)
    if text is None:
        raise _fail(f"this PNG was not written by softrepa-edit: no '{METADATA_KEY}' metadata", label)
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError):
        raise _fail(f"its '{METADATA_KEY}' metadata is not JSON, so nothing can be replayed", label) from None
    if not isinstance(metadata, dict):
        raise _fail(f"its '{METADATA_KEY}' metadata is a JSON {type(metadata).__name__}, not an object", label)
    return metadata


def _record(metadata: dict[str, Any], key: str, label: str) -> dict[str, Any]:
    """A nested record of the metadata (``params``, ``app``, ``mask``, ``input``): a JSON object, or {} when absent."""
    value = metadata.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(f"its metadata's '{key}' is a {type(value).__name__}, not an object; nothing was changed", label)
    return value


def _params(metadata: dict[str, Any], notes: list[str], label: str) -> dict[str, Any]:
    """The metadata's FlowEdit parameters (unchecked values; unknown names dropped with a note)."""
    params = _record(metadata, "params", label)
    if not params:
        raise _fail("its metadata has no 'params': it does not record an edit", label)
    known = {f.name for f in dataclasses.fields(FlowEditParams)}
    unknown = sorted(map(str, set(params) - known))
    if unknown:
        notes.append(f"its parameters {', '.join(unknown)[:200]} are not known here and were left out")
    return {name: value for name, value in params.items() if name in known}


def _within(path: Path, folders: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(folder.resolve()) for folder in folders)


def _input_image(metadata: dict[str, Any], settings: AppSettings, notes: list[str]) -> str | None:
    """The edit's input image on this server, or None (with a note saying why)."""
    name = (metadata.get("app") or {}).get("input_file")
    if isinstance(name, str) and name and "\x00" not in name and Path(name).name == name:  # a bare name
        # any session's folder: a page reload is a new session; the name itself is unguessable (time, random)
        folders = sorted(settings.outputs_dir.iterdir()) if settings.outputs_dir.is_dir() else []
        found = [folder / name for folder in folders if (folder / name).is_file()]
        if found:
            return str(found[0])
        notes.append("its input image is no longer on this server (results are kept a day): upload it")
        return None
    given = metadata.get("input_image")
    if not isinstance(given, str) or not given or "\x00" in given:
        notes.append("it does not name its input image: upload it")
        return None
    path = Path(given) if Path(given).is_absolute() else REPO_ROOT / given
    try:
        inside = _within(path, [settings.temp_dir, settings.examples_dir, REPO_ROOT / "assets"])
        found = inside and path.is_file()
    except (OSError, ValueError, RuntimeError):  # a name too long for the file system, a symlink loop
        inside = found = False
    if not inside:
        notes.append(f"its input image {Path(given).name[:80]} is outside the folders this app serves: upload it")
        return None
    if not found:
        notes.append(f"its input image {Path(given).name[:80]} is not on this server: upload it")
        return None
    return str(path)


def _max_side(metadata: dict[str, Any], current: Any) -> Any:
    """The max side the edit used (checked with the other controls): the app records it; a resized
    CLI input's long side is it; else the current one."""
    recorded = (metadata.get("app") or {}).get("max_side")
    if recorded is not None:
        return recorded
    resized = (metadata.get("input") or {}).get("resized_size")
    if isinstance(resized, list) and resized and all(isinstance(side, int) for side in resized):
        return max(resized)
    return current


def _mask(metadata: dict[str, Any], folder: Path, label: str) -> tuple[str, str | None]:
    """(mask mode, mask image file) of the edit: a given mask, read and checked like an uploaded
    one (``editing.masks.read_mask``), is written to ``folder`` for the mask image."""
    info = _record(metadata, "mask", label)
    mode = info.get("mode")
    if not info or mode is None:
        return "none", None
    if mode == "auto":
        return "auto", None
    if mode != "given":
        raise _fail(f"its mask's mode is {shown(mode)}, not 'given' or 'auto'; nothing was changed", label)
    from editing.editor import mask_from_metadata
    from editing.masks import MaskError

    try:
        image = mask_from_metadata(metadata)  # read like an uploaded mask
    except MaskError as exc:
        raise _fail(f"its mask cannot be used: {str(exc).rstrip('.')}; nothing was changed", label) from None
    if image is None:
        raise _fail("it was a masked edit but its metadata does not carry the mask", label)
    path = folder / f"{REPLAYED_MASK_PREFIX}-{uuid.uuid4().hex[:8]}.png"
    return "drawn", str(write_png(image, path))


def parent_record(metadata: dict[str, Any], file_name: str) -> dict[str, Any]:
    """What a chained edit records about the result it starts from (Edit again): its file, prompts,
    seed and run key (the same record the page keeps, ``handlers.parent_of``)."""
    app_record, params = metadata.get("app") or {}, metadata.get("params") or {}
    key = app_record.get("key") if isinstance(app_record, dict) else None
    return {"key": key if isinstance(key, str) else None, "file": file_name,
            "source_prompt": metadata.get("source_prompt"), "target_prompt": metadata.get("target_prompt"),
            "seed": params.get("seed") if isinstance(params, dict) else None}


def replay(path: str | Path, base: EditControls, settings: AppSettings, has_tokens: bool, model_label: str,
           folder: Path, sides: tuple[int, int], label: str = LABELS["replay"]) -> Replay:
    """The controls, input image and mask of the edit the PNG at ``path`` records (``folder``: where
    to write its mask image), every value checked as if typed into its control (``check_controls``,
    ``sides``: the long sides the model takes). ``UserInputError`` headed by ``label``, naming the
    control, when the file carries no edit or a value that cannot run: nothing is restored then."""
    metadata = read_metadata(path, label)
    for record in ("app", "input", "mask"):
        _record(metadata, record, label)  # objects or absent: read below without further type checks
    notes: list[str] = []
    params = _params(metadata, notes, label)
    use_tokens = metadata.get("use_tokens", False)
    controls = dataclasses.replace(base, source_prompt=metadata.get("source_prompt"),
                                   target_prompt=metadata.get("target_prompt"),
                                   max_side=_max_side(metadata, base.max_side), variations=1, randomize_seed=False,
                                   use_tokens=use_tokens, auto=False,  # the one edit the PNG is, an Auto pick too
                                   **{"noise_offset": 0, **{k: v for k, v in params.items() if k in CONTROL_NAMES}})
    try:
        checked = check_controls(controls, sides)
        negative = {k: v for k, v in params.items() if k.endswith("negative_prompt")}
        checked.params.replace(**negative).check()  # the fields without a control too
    except ParameterError as exc:
        raise _fail(f"its metadata holds a value this app cannot use. {parameter_message(exc)} Nothing was changed",
                    label) from None
    except UserInputError as exc:
        raise _fail(f"its metadata holds a value this app cannot use. {exc} Nothing was changed", label) from None
    if use_tokens and not has_tokens:
        notes.append("it was made with soft tokens, which this app does not have: tokens are off")
    if params.get("src_negative_prompt") or params.get("tar_negative_prompt"):
        notes.append("its negative prompts have no control here and are not used")
    model = metadata.get("model")
    if isinstance(model, str) and model and model != model_label:
        notes.append(f"it was made with the model {model[:200]}; this app runs {model_label}, so a rerun differs")
    mask_mode, mask = _mask(metadata, folder, label)
    controls = dataclasses.replace(controls, mask_mode=mask_mode, max_side=checked.max_side,
                                   use_tokens=use_tokens and has_tokens)
    controls = controls_for_params(checked.params, use_tokens and has_tokens, controls)
    image = _input_image(metadata, settings, notes)
    return Replay(controls, image, mask, notes, parent_record(metadata, Path(path).name))


def replay_note(result: Replay, file_name: str) -> str:
    """The line under the replay box: what came back, what did not, what to do next."""
    restored = ["prompts", "parameters", f"seed {result.controls.seed}", f"mask {result.controls.mask_mode}"]
    if result.image is not None:
        restored.append("input image")
    lines = [f"**Replayed** {file_name}: {', '.join(restored)}. Press **Edit** to run it again."]
    lines += [f"Note: {note}." for note in result.notes]
    return "  \n".join(lines)
