"""PIE-Bench (Ju et al., "PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code",
ICLR 2024) as editing pairs that carry the mask of the edited region.

The release is a folder::

    mapping_file.json                 {"<id>": {image_path, original_prompt, editing_prompt,
                                                 editing_instruction, editing_type_id, blended_word,
                                                 mask}, ...}   (700 entries)
    annotation_images/<type folder>/<id>.jpg   e.g. 0_random_140/000000000000.jpg (512 x 512)

``image_path`` is relative to ``annotation_images/``. ``mask`` lists run-length pairs
``[start, length, start, length, ...]`` over the row-major image (512 x 512 in the release; the
runs are decoded at the image's own size), 1 = the region the edit should change
(``evaluation.datasets.RunLengthMask``; like PIE-Bench's ``mask_decode`` the one-pixel frame is
set to 1 and a run past the image's end is cut there).

Prompts mark the edited words with brackets ("a [cat] sitting on ..."); PIE-Bench's evaluation
strips them (``str.replace``) before using the prompts, and so does ``strip_brackets`` here
(doubled spaces folded). The source prompt is ``original_prompt``, the target ``editing_prompt``.
Pairs are sorted by id, so ``--n`` takes the same subset everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from evaluation.datasets import EditPair, RunLengthMask

MAPPING_FILE = "mapping_file.json"
IMAGES_FOLDER = "annotation_images"
REQUIRED_FIELDS = ("image_path", "original_prompt", "editing_prompt", "mask")
EDITING_TYPES = {"0": "random", "1": "change object", "2": "add object", "3": "delete object",
                 "4": "change content", "5": "change pose", "6": "change colour", "7": "change material",
                 "8": "change background", "9": "change style"}


def strip_brackets(prompt: str) -> str:
    """The prompt without PIE-Bench's "[" "]" edit markers, whitespace folded."""
    return " ".join(prompt.replace("[", " ").replace("]", " ").split())


def is_pie_bench(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PIE-Bench folder (holding mapping_file.json) or that file itself."""
    path = Path(path)
    return (path.is_dir() and (path / MAPPING_FILE).is_file()) or (path.is_file() and path.name == MAPPING_FILE)


def check_runs(runs: Any, height: int, width: int, where: str) -> tuple[int, ...]:
    """The runs as ints, or ``ValueError`` naming ``where`` (the entry) and what is wrong."""
    if not isinstance(runs, list):
        raise ValueError(f"{where}: 'mask' must be a list of run-length pairs [start, length, ...], got "
                         f"{type(runs).__name__}")
    if len(runs) % 2:
        raise ValueError(f"{where}: 'mask' has {len(runs)} numbers; run-length pairs need an even count")
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in runs):
        bad = next(value for value in runs if not isinstance(value, int) or isinstance(value, bool))
        raise ValueError(f"{where}: 'mask' must hold integers, found {bad!r}")
    length = height * width
    for number, (start, count) in enumerate(zip(runs[0::2], runs[1::2])):
        if not 0 <= start < length:
            raise ValueError(f"{where}: run {number} starts at {start}, outside the {width}x{height} image "
                             f"(0 .. {length - 1}); was the mask made for another image size?")
        if count < 0:
            raise ValueError(f"{where}: run {number} has a negative length {count}")
    return tuple(runs)


def _entry_pair(index: int, key: str, entry: Any, images_dir: Path, border: bool) -> EditPair:
    where = f"PIE-Bench entry {key!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is a {type(entry).__name__}, expected an object with {', '.join(REQUIRED_FIELDS)}")
    missing = [name for name in REQUIRED_FIELDS if name not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing}: each entry needs {', '.join(REQUIRED_FIELDS)}")
    for name in ("original_prompt", "editing_prompt"):
        if not isinstance(entry[name], str) or not strip_brackets(entry[name]):
            raise ValueError(f"{where}: {name!r} must be a non-empty string")
    image = images_dir / str(entry["image_path"])
    if not image.is_file():
        raise FileNotFoundError(f"{where}: image {image} not found (image_path is relative to {images_dir})")
    with Image.open(image) as opened:  # reads the header only
        width, height = opened.size
    runs = check_runs(entry["mask"], height, width, where)
    return EditPair(index, str(image), key, strip_brackets(entry["original_prompt"]),
                    strip_brackets(entry["editing_prompt"]), mask=RunLengthMask(runs, height, width, border),
                    editing_type=str(entry.get("editing_type_id", "")))


def _editing_type(entry: Any) -> str:
    return str(entry.get("editing_type_id", "")) if isinstance(entry, dict) else ""


def load_pie_bench(folder: str | os.PathLike, n: int | None = None, editing_types: Iterable[str] | None = None,
                   border: bool = True) -> list[EditPair]:
    """PIE-Bench's pairs with their masks, sorted by id: the first ``n`` of the ``editing_types``
    (ids "0".."9"; None: all). ``folder`` may also be the mapping file itself."""
    folder = Path(folder)
    mapping = folder if folder.name == MAPPING_FILE and folder.is_file() else folder / MAPPING_FILE
    if not mapping.is_file():
        raise FileNotFoundError(f"{mapping} does not exist: pass the PIE-Bench folder holding {MAPPING_FILE} and "
                                f"{IMAGES_FOLDER}/")
    try:
        data = json.loads(mapping.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{mapping} is not JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{mapping} must be a non-empty object keyed by image id")
    wanted = {str(t) for t in editing_types} if editing_types is not None else None
    if wanted is not None and not wanted <= set(EDITING_TYPES):
        raise ValueError(f"unknown editing types {sorted(wanted - set(EDITING_TYPES))}; PIE-Bench's are "
                         + ", ".join(f"{k} ({v})" for k, v in EDITING_TYPES.items()))
    keys = [key for key in sorted(data) if wanted is None or _editing_type(data[key]) in wanted]
    if n is not None:
        if len(keys) < n:
            which = " of those types" if wanted else ""
            raise ValueError(f"{mapping} has {len(keys)} pairs{which}, fewer than --n {n}")
        keys = keys[:n]
    if not keys:
        raise ValueError(f"{mapping} holds no pairs of editing types {sorted(wanted or [])}")
    return [_entry_pair(index, key, data[key], mapping.parent / IMAGES_FOLDER, border)
            for index, key in enumerate(keys)]
