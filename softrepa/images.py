"""Opening user images safely (any mode to RGB, EXIF orientation, clear errors for bad files),
and writing PNGs atomically with their metadata in text chunks.

``load_rgb`` is used at every edge that reads pictures (editor, app, trainer data, evaluation), so
a CMYK JPEG, a 16-bit PNG, a palette GIF with transparency or a phone photo shot sideways all come
out as an upright RGB image, and a zero-byte file, a text file or a decompression bomb gets a
message that says what is wrong instead of a stack trace.

``write_png`` is the one PNG writer (generated images, edits, evaluation and example inputs).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from softrepa.atomic import atomic_path

# Refuse images over this many pixels before decoding them (a 1 KB PNG can claim 100k x 100k).
MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
PngLayout = Literal["json", "per-key"]
PNG_LAYOUTS: tuple[str, ...] = ("json", "per-key")


# The PNG text chunk in which an edit's result carries its parameters (JSON, ``editing.editor``). Here,
# in the lowest layer, so that readers of image folders (the caption pipeline) can tell an edit's
# output from a picture to work on without importing the editor.
EDIT_METADATA_KEY = "softrepa_edit"
# The files an edit writes beside its result: its mask and, in the app, the input with the region tinted.
EDIT_SIDE_FILES = (".mask.png", ".region.png")


def is_edit_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file softrepa-edit wrote as an edit's output (a result PNG carrying
    ``EDIT_METADATA_KEY``, or a mask or region view beside one) rather than a picture to edit."""
    name = os.fspath(path).lower()
    if name.endswith(EDIT_SIDE_FILES):
        return True
    if not name.endswith(".png"):
        return False
    try:
        with Image.open(path) as image:
            return EDIT_METADATA_KEY in getattr(image, "text", {})
    except (OSError, ValueError, SyntaxError):  # unreadable: not ours; the reader reports it later
        return False


class ImageInputError(ValueError):
    """An image that cannot be used, with a message for a person."""


def _open(source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageInputError("the image is empty (0 bytes)")
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise ImageInputError(f"image file {path} does not exist")
    if os.path.getsize(path) == 0:
        raise ImageInputError(f"image file {path} is empty (0 bytes)")
    return Image.open(path)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, 16/32-bit and float scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "F" and array.max() <= 1.0:
            high = 1.0
        gray = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def load_rgb(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as an upright RGB image; ``ImageInputError`` if unusable."""
    name = source if isinstance(source, (str, os.PathLike)) else "the image"
    try:
        image = _open(source)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageInputError(f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of "
                                  f"{max_pixels:,}; downscale it first")
        image = ImageOps.exif_transpose(image)  # phone photos: apply the EXIF orientation
        image.load()
        return to_rgb(image)
    except ImageInputError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{name} is not an image PIL can read (PNG, JPEG, WebP, ...)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{name} is too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageInputError(f"{name} could not be decoded ({exc}); is the file complete?") from exc


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to ``resolution`` then center-crop a square (training data)."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def write_png(image: Image.Image, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None, *,
              key: str = "parameters", layout: PngLayout = "json") -> Path:
    """Write ``image`` as a PNG atomically (``softrepa.atomic``), so a crash never leaves a half file
    that a resumed run would take for finished; returns ``path`` as a ``Path``.

    ``metadata`` (none: a plain PNG) goes into PNG text chunks, laid out as ``layout`` says:

    * ``"json"``: all of it as one JSON text under ``key`` (the editor's ``softrepa_edit`` chunk);
    * ``"per-key"``: each entry as its own chunk (strings as they are, other values as JSON), then
      all of it as JSON under ``key`` (``softrepa.generate``: one field per chunk for image viewers,
      ``parameters`` for programs).

    JSON is written with sorted keys and without ASCII escapes; PIL stores text that is not latin-1
    in an iTXt chunk, and ``Image.open(path).text`` reads both kinds back.
    """
    if layout not in PNG_LAYOUTS:
        raise ValueError(f"unknown PNG metadata layout {layout!r}; expected one of {PNG_LAYOUTS}")
    info = None
    if metadata is not None:
        info = PngInfo()
        if layout == "per-key":
            for name, value in metadata.items():
                info.add_text(name, value if isinstance(value, str) else _json(value))
        info.add_text(key, _json(dict(metadata)))
    with atomic_path(path) as temp:
        image.save(temp, format="PNG", pnginfo=info)
    return Path(path)
