"""The caption pipeline's input images: listing a folder (sorted; hidden files and softrepa-edit's own
outputs skipped), each image's
stable key (relative name + content hash), and opening one upright in RGB, downscaled for the
captioner but with its original size recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from softrepa.images import is_edit_output, load_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class ImageItem:
    """One input image; ``key`` (name, content hash) is what the output rows are matched on."""

    path: Path  # as found under --images (relative stays relative)
    name: str  # path relative to --images, POSIX style: the stable part of the key
    sha256: str | None = None
    read_error: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.name, self.sha256)


def list_images(folder: Path, limit: int | None = None) -> list[ImageItem]:
    """The images under ``folder`` (recursively, sorted by path), the first ``limit`` of them."""
    if not folder.exists():
        raise SystemExit(f"error: --images {folder}: no such folder")
    if not folder.is_dir():
        raise SystemExit(f"error: --images {folder}: not a folder (give the folder that holds the images)")
    # hidden files and folders are skipped: editor metadata, and the project's own atomic-write
    # temp files (".name.tmp-XXXX.png") that a killed process can leave behind
    # and so are softrepa-edit's own outputs (results, their masks): a folder of edits is not one of pictures
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)
                   and not is_edit_output(p))
    if not paths:
        raise SystemExit(
            f"error: no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}. "
            "Point --images at the unpacked image folder (for DIV2K: DIV2K_train_HR)."
        )
    if limit is not None:
        paths = paths[:limit]
    return [ImageItem(path=p, name=p.relative_to(folder).as_posix()) for p in paths]


def hash_image_file(item: ImageItem) -> None:
    """Fill in ``item.sha256``, or ``item.read_error`` when the file cannot be read."""
    try:
        item.sha256 = hashlib.sha256(item.path.read_bytes()).hexdigest()
    except OSError as error:
        item.read_error = f"cannot read the file: {error.strerror or error}"


def open_image(path: Path, max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Upright RGB image (downscaled to ``max_side`` on its long side) and its ORIGINAL size."""
    rgb = load_rgb(path)  # any mode -> RGB, EXIF orientation, clear errors for bad files
    size = rgb.size
    if max_side and max(size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return rgb, size


# What opening a broken image raises (ImageInputError is a ValueError).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
