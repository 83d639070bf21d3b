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

from app.controls import LABELS, EditControls, UserInputError, controls_for_params
from app.settings import REPO_ROOT, AppSettings
from editing.params import FlowEditParams
from softrepa.images import write_png

REPLAYED_MASK_PREFIX = "replayed-mask"


@dataclass
class Replay:
    controls: EditControls
    image: str | None  # the edit's input image, when found (else the source image stays as it is)
    mask: str | None  # the drawn mask as an image file (mask mode "drawn"), else None
    notes: list[str]  # what was restored and what could not be


def _fail(message: str) -> UserInputError:
    return UserInputError(f"{LABELS['replay']}: {message}.")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The edit metadata of the PNG at ``path``; ``UserInputError`` saying why there is none."""
    from editing.editor import METADATA_KEY  # the editing library (torch) loads after the page is served

    try:
        with Image.open(path) as image:
            kind = image.format
            text = getattr(image, "text", {}).get(METADATA_KEY)
    except (UnidentifiedImageError, OSError, ValueError):
        raise _fail("the file is not an image; drop a PNG this app or `python -m editing` wrote") from None
    if kind != "PNG":
        raise _fail(f"this is a {kind} image, not a PNG written by softrepa-edit; drop one of its result PNGs")
    if text is None:
        raise _fail(f"this PNG was not written by softrepa-edit: no '{METADATA_KEY}' metadata")
    try:
        metadata = json.loads(text)
        FlowEditParams.from_dict(metadata["params"])
        str(metadata["source_prompt"]), str(metadata["target_prompt"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _fail(f"its '{METADATA_KEY}' metadata cannot be read ({type(exc).__name__}: {exc})") from None
    return metadata


def _within(path: Path, folders: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved.is_relative_to(folder.resolve()) for folder in folders)


def _input_image(metadata: dict[str, Any], settings: AppSettings, notes: list[str]) -> str | None:
    """The edit's input image on this server, or None (with a note saying why)."""
    app_record = metadata.get("app") or {}
    name = app_record.get("input_file")
    if isinstance(name, str) and name and Path(name).name == name:  # a bare file name, nothing above it
        # any session's folder: a page reload is a new session; the name itself is unguessable (time, random)
        folders = sorted(settings.outputs_dir.iterdir()) if settings.outputs_dir.is_dir() else []
        found = [folder / name for folder in folders if (folder / name).is_file()]
        if found:
            return str(found[0])
        notes.append("its input image is no longer on this server (results are kept a day): upload it")
        return None
    given = metadata.get("input_image")
    if not isinstance(given, str) or not given:
        notes.append("it does not name its input image: upload it")
        return None
    path = Path(given) if Path(given).is_absolute() else REPO_ROOT / given
    if not _within(path, [settings.temp_dir, settings.examples_dir, REPO_ROOT / "assets"]):
        notes.append(f"its input image {Path(given).name} is outside the folders this app serves: upload it")
        return None
    if not path.is_file():
        notes.append(f"its input image {Path(given).name} is not on this server: upload it")
        return None
    return str(path)


def _max_side(metadata: dict[str, Any], current: Any) -> Any:
    """The max side the edit used: the app records it; a resized CLI input's long side is it."""
    recorded = (metadata.get("app") or {}).get("max_side")
    if isinstance(recorded, int):
        return recorded
    resized = (metadata.get("input") or {}).get("resized_size")
    return max(resized) if resized else current


def _mask(metadata: dict[str, Any], folder: Path) -> tuple[str, str | None]:
    """(mask mode, mask image file) of the edit: a given mask is written to ``folder`` for the mask image."""
    info = metadata.get("mask") or {}
    if info.get("mode") == "auto":
        return "auto", None
    if info.get("mode") != "given":
        return "none", None
    from editing.editor import mask_from_metadata

    image = mask_from_metadata(metadata)
    if image is None:
        raise _fail("it was a masked edit but its metadata does not carry the mask")
    path = folder / f"{REPLAYED_MASK_PREFIX}-{uuid.uuid4().hex[:8]}.png"
    return "drawn", str(write_png(image, path))


def replay(path: str | Path, base: EditControls, settings: AppSettings, has_tokens: bool, model_label: str,
           folder: Path) -> Replay:
    """The controls, input image and mask of the edit the PNG at ``path`` records (``folder``: where
    to write its mask image); ``UserInputError`` when the file carries no edit."""
    metadata = read_metadata(path)
    params = FlowEditParams.from_dict(metadata["params"])
    notes: list[str] = []
    use_tokens = bool(metadata.get("use_tokens"))
    if use_tokens and not has_tokens:
        notes.append("it was made with soft tokens, which this app does not have: tokens are off")
    if params.src_negative_prompt or params.tar_negative_prompt:
        notes.append("its negative prompts have no control here and are not used")
    if metadata.get("model") and metadata["model"] != model_label:
        notes.append(f"it was made with the model {metadata['model']}; this app runs {model_label}, so a rerun "
                     "differs")
    mask_mode, mask = _mask(metadata, folder)
    controls = dataclasses.replace(base, source_prompt=str(metadata["source_prompt"]),
                                   target_prompt=str(metadata["target_prompt"]), mask_mode=mask_mode,
                                   max_side=_max_side(metadata, base.max_side), variations=1)
    controls = controls_for_params(params, use_tokens and has_tokens, controls)
    image = _input_image(metadata, settings, notes)
    return Replay(controls, image, mask, notes)


def replay_note(result: Replay, file_name: str) -> str:
    """The line under the replay box: what came back, what did not, what to do next."""
    restored = ["prompts", "parameters", f"seed {result.controls.seed}", f"mask {result.controls.mask_mode}"]
    if result.image is not None:
        restored.append("input image")
    lines = [f"**Replayed** {file_name}: {', '.join(restored)}. Press **Edit** to run it again."]
    lines += [f"Note: {note}." for note in result.notes]
    return "  \n".join(lines)
