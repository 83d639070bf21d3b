"""The evaluation sets: COCO val2017 captions (text-to-image) and editing pairs (DIV2K, Cat2Dog).

COCO (paper §4, Tab. 4): ``captions_val2017.json`` holds 5 captions for each of the 5,000 val
images. The paper uses the *first caption per image*, 5,000 prompts. Here "first" is the first
annotation of that image in file order, and images keep the order of the file's ``images`` list,
so ``--n 100`` is the first 100 of the 5,000 prompts on every machine.

PIE-Bench (editing pairs with masks of the edited region): ``evaluation.pie_bench``; its masks
are ``RunLengthMask`` here.

Editing pairs: the JSONL rows ``data_prep/caption.py`` writes (``image``, ``source_prompt``,
``target_prompt``, ...) for DIV2K, and the same format from its ``--preset cat2dog`` for Cat2Dog.
A rerun of data_prep can append a second row for an image; the last row wins. Pairs are sorted by
image name so ``--n`` takes the same subset everywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CaptionItem:
    index: int
    image_id: int
    file_name: str
    caption: str


@dataclass(frozen=True)
class RunLengthMask:
    """A mask stored as run-length pairs ``[start, length, start, length, ...]`` over the row-major
    ``height x width`` image (PIE-Bench's format): pixels start .. start + length - 1 are 1.

    border: also set the one-pixel frame to 1, as PIE-Bench's ``mask_decode`` does "to avoid
    annotation errors in boundary" (so the frame never counts as unedited). Runs are checked when
    the mask is made (``evaluation.pie_bench.check_runs``); decoding is lazy (700 decoded 512 x 512
    masks would hold 180 MB).
    """

    runs: tuple[int, ...]
    height: int
    width: int
    border: bool = True

    def array(self) -> np.ndarray:
        """(height, width) float32, 1 = edited. A run past the image's end is cut there."""
        length = self.height * self.width
        starts = np.asarray(self.runs[0::2], dtype=np.int64)
        stops = np.minimum(starts + np.asarray(self.runs[1::2], dtype=np.int64), length)
        edges = np.zeros(length + 1, dtype=np.int64)
        np.add.at(edges, starts, 1)  # overlapping runs: a pixel is 1 while any run covers it
        np.add.at(edges, stops, -1)
        mask = (np.cumsum(edges[:-1]) > 0).astype(np.float32).reshape(self.height, self.width)
        if self.border:
            mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1.0
        return mask

    def image(self) -> Image.Image:
        """The mask as a PIL "L" image, 255 = edited."""
        return Image.fromarray((self.array() * 255).astype(np.uint8), mode="L")


@dataclass(frozen=True)
class EditPair:
    index: int
    image: str  # path of the source image
    name: str
    source_prompt: str
    target_prompt: str
    mask: RunLengthMask | None = None  # the edited region (1 = edited), where the dataset has one
    editing_type: str = ""  # PIE-Bench's editing_type_id ("0".."9")


def load_coco_captions(captions_json: str | os.PathLike, n: int | None = None) -> list[CaptionItem]:
    """The first caption of each image of a COCO captions file, in the order of its image list."""
    path = Path(captions_json)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file {path} does not exist (expected annotations/captions_val2017.json "
                                "from the COCO 2017 annotations archive)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path} is not a COCO captions file (needs 'images' and 'annotations')")
    first_caption: dict[int, str] = {}
    for annotation in data["annotations"]:
        first_caption.setdefault(int(annotation["image_id"]), " ".join(str(annotation["caption"]).split()))
    items = []
    for image in data["images"]:
        image_id = int(image["id"])
        if image_id in first_caption:
            items.append(CaptionItem(len(items), image_id, str(image["file_name"]), first_caption[image_id]))
        if n is not None and len(items) >= n:
            break
    if n is not None and len(items) < n:
        raise ValueError(f"{path} has captions for {len(items)} images, fewer than --n {n}")
    return items


def _resolve_image(path: str, jsonl_dir: Path) -> str:
    """A pair's image path as written (relative to where data_prep ran), else next to the JSONL."""
    if Path(path).is_file():
        return path
    beside = jsonl_dir / path
    if beside.is_file():
        return str(beside)
    raise FileNotFoundError(f"editing pair image {path} not found (also tried {beside}); run the evaluation from the "
                            "folder data_prep ran in, or fix the 'image' paths")


def load_edit_pairs(pairs_jsonl: str | os.PathLike, n: int | None = None) -> list[EditPair]:
    """Editing pairs from data_prep JSONL (last row per image), sorted by image name, the first n."""
    path = Path(pairs_jsonl)
    if not path.is_file():
        raise FileNotFoundError(f"editing pairs file {path} does not exist (make it with data_prep/caption.py)")
    latest: dict[str, dict] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number} is not JSON ({exc})") from exc
            missing = [k for k in ("image", "source_prompt", "target_prompt") if not row.get(k)]
            if missing:
                raise ValueError(f"{path}:{number} lacks {missing}: expected data_prep rows with image, "
                                 "source_prompt and target_prompt")
            latest[str(row.get("image_name") or row["image"])] = row
    if not latest:
        raise ValueError(f"{path} holds no editing pairs")
    names = sorted(latest)[:n] if n is not None else sorted(latest)
    if n is not None and len(names) < n:
        raise ValueError(f"{path} has {len(names)} pairs, fewer than --n {n}")
    return [EditPair(index, _resolve_image(latest[name]["image"], path.parent), name,
                     latest[name]["source_prompt"], latest[name]["target_prompt"])
            for index, name in enumerate(names)]
