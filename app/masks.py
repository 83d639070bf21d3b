"""Local edits in the app, without the page: what the Mask control asks of the editor, a brush
drawing as a mask file, and how a masked result is shown (the region tinted, the summary words).

What a mask may be (file types, alpha, aspect, an empty mask), how it is fitted to the picture,
the automatic region and the paste-back are ``editing.masks``'s rules; this module only maps the
page's choice onto them and words their errors for the page. Plain values in and out (paths,
arrays, ``EditResult``), so the tests drive it without a browser.

The API takes the mask as one optional image file (``mask``) plus the mode (``mask_mode``):

* ``none``: no mask. A mask image sent with it is refused rather than silently ignored or used: an
  API client that forgot ``mask_mode="drawn"`` learns it at once, and the page never sends one
  (choosing none or auto there clears the mask image).
* ``drawn``: the mask image is required; white (or opaque, for a transparent image) = may change.
* ``auto``: ``editing.masks.AutoMask()`` with its measured defaults; a mask image is refused.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from app.controls import LABELS, UserInputError, check_mask_mode
from softrepa.images import write_png

if TYPE_CHECKING:  # editing.masks imports torch, which loads after the page is served (app/main.py)
    from editing.editor import EditResult
    from editing.masks import AutoMask, MaskError

DRAWN_MASK_PREFIX = "drawn-mask"  # file names of masks made from brush strokes (an uploaded one keeps its name)


def mask_message(error: MaskError) -> str:
    """The editing library's message about a mask, headed by the mask control's label."""
    text = str(error).rstrip(".")
    return f"{LABELS['mask']}: {text}."


def _mask_source(mask: Any) -> bytes | Image.Image | None:
    """The mask image as the editor reads it: a file's bytes (messages then never name the server's
    temporary path), a PIL image as it is, None when none was given."""
    if mask is None or (isinstance(mask, str) and not mask.strip()):
        return None
    if isinstance(mask, Image.Image):
        return mask
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if not path.is_file():
            raise UserInputError(f"The {LABELS['mask'].lower()} did not arrive; upload it again.")
        return path.read_bytes()
    raise UserInputError(f"The {LABELS['mask'].lower()} must be an image file, got {type(mask).__name__}.")


def mask_request(mode: Any, mask: Any) -> bytes | Image.Image | AutoMask | None:
    """What ``FlowEditor.edit`` gets as ``mask`` for the Mask control's ``mode`` and the mask image
    (module docstring); ``UserInputError`` saying what to change when the two do not go together."""
    label = LABELS["mask_mode"]
    check_mask_mode(mode)
    source = _mask_source(mask)
    if mode == "drawn":
        if source is None:
            raise UserInputError(f"{label} is 'drawn' but there is no mask: paint the region to edit on the image, "
                                 f"or upload a {LABELS['mask'].lower()} (white = edit).")
        return source
    if source is not None:
        finds = " ('auto' finds the region itself)" if mode == "auto" else ""
        raise UserInputError(f"A {LABELS['mask'].lower()} was given but {label} is '{mode}'{finds}: choose 'drawn' "
                             f"to edit only the region it marks, or leave the {LABELS['mask'].lower()} out.")
    if mode == "none":
        return None
    from editing.masks import AutoMask  # torch: an edit is about to run

    return AutoMask()


# ----------------------------------------------------------------------------- the brush


def painted_region(editor_value: dict[str, Any] | None) -> np.ndarray | None:
    """The region painted on the brush editor: (H, W) float32, 1 wherever a layer has any paint
    (alpha > 0, so a half-transparent brush still marks a hard region), else 0; None when nothing is."""
    painted = None
    for layer in (editor_value or {}).get("layers") or []:
        if layer is None:
            continue
        alpha = np.asarray(layer if isinstance(layer, np.ndarray) else layer.convert("RGBA"))
        alpha = alpha[..., -1] > 0 if alpha.ndim == 3 else alpha > 0
        if painted is not None and alpha.shape != painted.shape:
            continue  # every layer has the canvas's size; a stray one is not part of the drawing
        painted = alpha if painted is None else painted | alpha
    if painted is None or not painted.any():
        return None
    return painted.astype(np.float32)


def save_drawn_mask(values: np.ndarray, folder: Path) -> str:
    """The painted region as a black-and-white PNG (white = edit) in ``folder``; its path."""
    from editing.masks import mask_image

    path = Path(folder) / f"{DRAWN_MASK_PREFIX}-{uuid.uuid4().hex[:8]}.png"
    return str(write_png(mask_image(values), path))


def is_drawn_mask(path: Any) -> bool:
    """Whether the mask image came from the brush (an emptied canvas clears only such a mask)."""
    return isinstance(path, (str, Path)) and Path(path).name.startswith(DRAWN_MASK_PREFIX)


# ----------------------------------------------------------------------------- showing a masked result


def save_region(result: EditResult, path: Path) -> str | None:
    """The input with the edited region tinted (``editing.masks.overlay``), for the page; None
    for an edit without a mask."""
    if result.mask is None:
        return None
    from editing.masks import overlay

    return str(write_png(overlay(result.source_image, result.mask.values), path))


def mask_summary(mode: str, results: list[EditResult]) -> str:
    """The summary line's words about the mask: mode, share of the picture, paste-back ("" without)."""
    infos = [result.mask_info for result in results if result.mask_info]
    if not infos:
        return ""
    coverage = " / ".join(f"{100 * info['coverage']:.1f} %" for info in infos)
    pasted = [bool(info["pasted_back"]) for info in infos]
    paste = "pasted back" if all(pasted) else ("not pasted back" if not any(pasted) else "pasted back in part")
    return f"{mode} mask: {coverage} of the image, {paste}"
