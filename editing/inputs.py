"""Turning a user's picture into an image the editor can encode, and saying what was done.

``softrepa.images.load_rgb`` does the opening (any mode to RGB, EXIF orientation, clear errors for
empty, non-image and oversized files). Here: downscale so the long side is at most ``max_side``
(aspect kept, never upscaled), then center-crop each side down to a multiple of the model's factor
(VAE downsampling x transformer patch size: 16 for SD3), since the latent grid must tile exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from softrepa.images import BACKGROUND, MAX_PIXELS, ImageInputError, load_rgb

DEFAULT_MAX_SIDE = 1024  # SD3's training resolution
MIN_PATCHES = 4  # per side; smaller images are refused (too little for the model to work with)


@dataclass
class InputReport:
    """What preparing an image did, for the UI and the output metadata."""

    original_size: tuple[int, int]  # (width, height) after EXIF orientation
    resized_size: tuple[int, int] | None  # None when no resize was needed
    final_size: tuple[int, int]
    multiple: int
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "; ".join(self.notes) if self.notes else f"used as is ({_size(self.final_size)})"

    def to_dict(self) -> dict[str, Any]:
        return {"original_size": list(self.original_size),
                "resized_size": list(self.resized_size) if self.resized_size else None,
                "final_size": list(self.final_size), "multiple": self.multiple, "notes": list(self.notes)}


@dataclass
class PreparedImage:
    image: Image.Image  # RGB, sides multiples of ``report.multiple``
    report: InputReport

    @property
    def content_hash(self) -> str:
        """sha256 of the prepared pixels and size: the key the editor caches source latents under."""
        digest = hashlib.sha256(f"{self.image.size}".encode())
        digest.update(self.image.tobytes())
        return digest.hexdigest()


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def model_factor(pipe: Any) -> int:
    """Pixels per transformer token side: VAE downsampling x patch size (16 for SD3)."""
    return int(pipe.vae_scale_factor) * int(pipe.transformer.config.patch_size)


def model_max_side(pipe: Any) -> int | None:
    """The largest side the transformer's position embedding covers (SD3 medium: 192 x 16 = 3072 px)."""
    max_size = getattr(pipe.transformer.config, "pos_embed_max_size", None)
    return int(max_size) * model_factor(pipe) if max_size else None


def _conversion_notes(source: str | os.PathLike | bytes | Image.Image) -> list[str]:
    """What ``load_rgb`` changed that a person would not expect: transparent pixels flattened on
    white, an animated image cut to its first frame. Read from the file's header (and, for an image
    with an alpha channel, the alpha itself: a fully opaque one loses nothing). ``load_rgb`` has
    already opened ``source``, so a file it refused never reaches here; any other surprise gives no note."""
    try:
        with contextlib.ExitStack() as stack:
            if isinstance(source, Image.Image):
                image = source
            else:
                opened = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
                image = stack.enter_context(opened)
            notes = []
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                notes.append(f"reduced to its first frame (an animated image of {frames} frames)")
            if _has_transparency(image):
                colour = "white" if BACKGROUND == (255, 255, 255) else f"the colour {BACKGROUND}"
                notes.append(f"flattened on {colour} (its transparent pixels are now {colour})")
            return notes
    except Exception:  # noqa: BLE001 - a note is a courtesy; load_rgb has said whether the image is usable
        return []


def _has_transparency(image: Image.Image) -> bool:
    """Whether any pixel of ``image`` (its first frame) is not fully opaque."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La"):
        return False
    low, _ = image.getchannel("A").getextrema()
    return low < 255


def prepare_image(source: str | os.PathLike | bytes | Image.Image, *, max_side: int = DEFAULT_MAX_SIDE,
                  multiple: int = 16, min_side: int | None = None,
                  max_pixels: int = MAX_PIXELS) -> PreparedImage:
    """Open ``source`` and fit it to the model: long side <= max_side, sides multiples of ``multiple``.

    min_side: the smallest acceptable side after resizing (default ``MIN_PATCHES * multiple``).
    Raises ``ImageInputError`` for unusable files and images too small to edit.
    """
    if multiple < 1 or max_side < multiple:
        raise ValueError(f"max_side ({max_side}) must be at least the model factor ({multiple})")
    min_side = MIN_PATCHES * multiple if min_side is None else max(int(min_side), multiple)
    image = load_rgb(source, max_pixels=max_pixels)
    original = image.size
    width, height = original
    notes: list[str] = _conversion_notes(source)
    if min(width, height) < min_side:
        raise ImageInputError(f"the image is {_size(original)}; both sides must be at least {min_side} px "
                              f"for this model")
    resized = None
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        if min(width, height) < min_side:
            raise ImageInputError(f"the image is {_size(original)}; scaled so its long side is {max_side} px it "
                                  f"becomes {width}x{height}, under the minimum side of {min_side} px: "
                                  "crop it to a less elongated shape first")
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        resized = (width, height)
        notes.append(f"resized {_size(original)} -> {_size(resized)} (long side <= {max_side})")
    crop_w, crop_h = width - width % multiple, height - height % multiple
    if (crop_w, crop_h) != (width, height):
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        notes.append(f"center-cropped {_size((width, height))} -> {_size((crop_w, crop_h))} "
                     f"(multiples of {multiple})")
    report = InputReport(original_size=original, resized_size=resized, final_size=image.size, multiple=multiple,
                         notes=notes)
    return PreparedImage(image=image, report=report)
