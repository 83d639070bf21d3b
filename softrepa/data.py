"""Training data for SoftREPA: (image, captions) records from COCO or an image folder.

Sources
* COCO captions: an images directory + ``captions_*.json`` (``images`` with ``id``/``file_name``,
  ``annotations`` with ``image_id``/``caption``). Every caption of an image is kept; each epoch
  draws one of them per image (the authors' "random one of the 5 captions"), deterministically
  from (seed, epoch, item), so a resumed run sees the same captions.
* An image folder + ``metadata.jsonl`` or ``metadata.csv`` with columns ``image`` (a path relative
  to the folder) and ``caption`` (a string, or in JSONL a list of strings). ``file_name`` / ``text``
  are accepted as aliases (the Hugging Face imagefolder layout). The shapes-world folder is read
  as is.

Images are opened with ``softrepa.images.load_rgb`` (any mode -> upright RGB), resized on the
short side and center-cropped to the training resolution, and scaled to [-1, 1] as the VAEs
expect. Unreadable images raise ``ImageInputError``; the cache builder logs and skips them.
Missing caption files and empty folders raise ``DatasetError`` with what was looked for.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from softrepa.images import ImageInputError, center_crop_resize, load_rgb

log = logging.getLogger(__name__)

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
IMAGE_KEYS = ("image", "file_name")
CAPTION_KEYS = ("caption", "text")
# Optional hard negatives: captions that are wrong for the image in one detail (a string or, in
# JSONL, a list), scored as extra negatives with --hard-negatives (see softrepa.train).
NEGATIVE_KEYS = ("negative_caption",)

__all__ = ["DatasetError", "ImageInputError", "Record", "CaptionDataset", "open_dataset", "load_coco",
           "load_image_folder", "load_image_tensor", "epoch_order"]


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message for a person."""


@dataclass(frozen=True)
class Record:
    """One training image and every caption it has."""

    image: Path
    captions: tuple[str, ...]
    key: str  # stable id inside the source (COCO image id, or the relative path)
    negatives: tuple[str, ...] = ()  # hard-negative captions (image folders only)


class CaptionDataset:
    """A list of records plus the deterministic per-epoch caption choice."""

    def __init__(self, records: list[Record], source: str):
        if not records:
            raise DatasetError(f"{source}: no usable (image, caption) rows")
        self.records = records
        self.source = source

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: list[int], source: str | None = None) -> "CaptionDataset":
        return CaptionDataset([self.records[i] for i in indices], source or self.source)

    def caption(self, index: int, seed: int, epoch: int) -> str:
        """The caption of item ``index`` for ``epoch``: uniform over its captions, fixed by (seed, epoch, key).

        ``random.Random`` with a str seed hashes it with SHA-512: identical across runs and machines
        (unlike ``hash()``, which is salted per process).
        """
        return self._choose(self.records[index].captions, f"{seed}:{epoch}:{self.records[index].key}")

    def negative(self, index: int, seed: int, epoch: int) -> str:
        """A hard-negative caption of item ``index`` for ``epoch`` (uniform over its negatives)."""
        record = self.records[index]
        if not record.negatives:
            raise DatasetError(f"{self.source}: item {record.key} has no negative_caption (needed by --hard-negatives)")
        return self._choose(record.negatives, f"negative:{seed}:{epoch}:{record.key}")

    @staticmethod
    def _choose(options: tuple[str, ...], key: str) -> str:
        return options[0] if len(options) == 1 else random.Random(key).choice(options)

    def all_captions(self) -> list[str]:
        """Every distinct caption and negative, in first-seen order (what the text cache must hold)."""
        return list(dict.fromkeys(c for r in self.records for c in (*r.captions, *r.negatives)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The item order of one epoch: a permutation fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=generator).tolist()


# ----------------------------------------------------------------------------- sources


def load_coco(images_dir: str | os.PathLike, captions_file: str | os.PathLike) -> CaptionDataset:
    """COCO captions: all captions per image; images listed in the JSON but missing on disk are skipped."""
    images_dir, captions_file = Path(images_dir), Path(captions_file)
    if not captions_file.is_file():
        raise DatasetError(f"COCO caption file {captions_file} does not exist (expected e.g. "
                           "annotations/captions_train2017.json)")
    if not images_dir.is_dir():
        raise DatasetError(f"COCO images directory {images_dir} does not exist")
    try:
        data = json.loads(captions_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read COCO caption file {captions_file}: {exc}") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetError(f"{captions_file} is not a COCO captions file (needs 'images' and 'annotations')")
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        text = str(ann.get("caption", "")).strip()
        if text:
            captions.setdefault(ann["image_id"], []).append(text)
    records, missing = [], 0
    for image in sorted(data["images"], key=lambda im: im["id"]):
        path = images_dir / image["file_name"]
        if image["id"] not in captions:
            continue
        if not path.is_file():
            missing += 1
            continue
        records.append(Record(image=path, captions=tuple(captions[image["id"]]), key=str(image["id"])))
    if missing:
        log.warning("COCO: %d images listed in %s are not in %s; skipped", missing, captions_file.name, images_dir)
    return CaptionDataset(records, f"COCO {captions_file}")


def _pick(row: dict, keys: tuple[str, ...]):
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return row[key]
    return None


def _read_rows(metadata: Path) -> list[dict]:
    try:
        if metadata.suffix == ".jsonl":
            rows = []
            for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{metadata}, line {number}: not valid JSON ({exc.msg})") from exc
            return rows
        if metadata.suffix == ".csv":
            with open(metadata, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {metadata}: {exc}") from exc
    raise DatasetError(f"{metadata}: unsupported metadata format (use .jsonl or .csv)")


def load_image_folder(path: str | os.PathLike) -> CaptionDataset:
    """An image folder with ``metadata.jsonl``/``.csv``, or the metadata file itself."""
    path = Path(path)
    if path.is_file():
        metadata, folder = path, path.parent
    elif path.is_dir():
        found = [path / name for name in METADATA_FILES if (path / name).is_file()]
        if not found:
            if not any(path.iterdir()):
                raise DatasetError(f"data folder {path} is empty")
            raise DatasetError(f"data folder {path} has no {' or '.join(METADATA_FILES)} with 'image' and "
                               "'caption' columns (for COCO pass the captions JSON with --captions)")
        metadata, folder = found[0], path
    else:
        raise DatasetError(f"data path {path} does not exist")
    records, bad_rows, missing = [], 0, 0
    for row in _read_rows(metadata):
        image, caption, negative = _pick(row, IMAGE_KEYS), _pick(row, CAPTION_KEYS), _pick(row, NEGATIVE_KEYS)
        caps, negatives = (tuple(str(c).strip() for c in (v if isinstance(v, list) else [v]) if c)
                           for v in (caption, negative))
        if image is None or not caps or not all(caps):
            bad_rows += 1
            continue
        image_path = folder / str(image)
        if not image_path.is_file():
            missing += 1
            continue
        records.append(Record(image=image_path, captions=caps, key=str(image), negatives=negatives))
    if bad_rows:
        log.warning("%s: %d rows without an image path or caption; skipped", metadata, bad_rows)
    if missing:
        log.warning("%s: %d images listed but not found on disk; skipped", metadata, missing)
    if not records:
        raise DatasetError(f"{metadata}: no rows with an existing image and a caption "
                           f"({bad_rows} incomplete, {missing} missing images)")
    return CaptionDataset(records, str(metadata))


def open_dataset(data: str | os.PathLike, captions: str | os.PathLike | None = None) -> CaptionDataset:
    """COCO when ``captions`` (a captions_*.json) is given, else an image folder / metadata file."""
    if captions is not None:
        return load_coco(data, captions)
    return load_image_folder(data)


# ----------------------------------------------------------------------------- images


def load_image_tensor(path: str | os.PathLike, resolution: int) -> torch.Tensor:
    """Read, crop and scale one image: (3, resolution, resolution) float32 in [-1, 1].

    Raises ``ImageInputError`` for files that are not usable images.
    """
    image = center_crop_resize(load_rgb(path), resolution)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
