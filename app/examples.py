"""Example edits for the gallery, and their precomputed results.

Precomputed results live in ``<examples dir>/<kind>/examples.json`` plus PNGs, written by
``python -m app.make_examples`` (run once per model; the lead ships the bundled model's). The
manifest records which model and token file produced them; the app shows them only when it runs
that same model and tokens, so a click fills the inputs *and* the results instantly. Without a
manifest (or for another model) the built-in examples still fill the inputs and the user presses
Edit: missing precomputed results degrade to "click, then run".

Built-in examples: shapes-world edits (``shapes.world.make_edit_pairs``: a rendered scene, its
caption, and the caption with one attribute changed) for the shapes model; photos shipped with
scikit-image (``skimage.data``), when it is installed, for SD3.

A manifest example may also carry a ``caption`` (what it shows, e.g. "tokens needed: the star's fill,
outline to solid succeeds only with tokens (without them the fill does not change)"), ``source`` (where it comes from: the shapes world's split, seed and
pair index, so its results can be judged again), ``checks`` (the shapes classifier's verdict on each
precomputed result, written by ``app/make_examples.py``) and a local-edit mask (``mask_mode``
"drawn" with the ``mask`` image, or "auto"). ``load_examples`` lists masked examples only for a
caller that says it applies their mask (``with_masks=True``): one that does not would show a masked
result next to inputs that edit without the mask.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from softrepa.atomic import atomic_write_text
from softrepa.images import write_png

log = logging.getLogger(__name__)

MANIFEST_NAME = "examples.json"
MANIFEST_VERSION = 2  # 2: caption, source, checks, mask_mode, mask (1 still reads)
OUTPUT_KEYS = ("without_tokens", "with_tokens")  # precomputed results per tokens state
SHAPES_EXAMPLE_COUNT = 6
SHAPES_EXAMPLE_SEED = 0
# (skimage.data function, source prompt, target prompt): photos for SD3, only when scikit-image is installed
PHOTO_EXAMPLES = (
    ("chelsea", "a photo of a tabby cat lying on a rug", "a photo of a tiger cub lying on a rug"),
    ("coffee", "a cup of coffee on a saucer, wooden table", "a cup of green tea on a saucer, wooden table"),
    ("astronaut", "a portrait of an astronaut in a white spacesuit in front of a flag",
     "a portrait of an astronaut in an orange spacesuit in front of a flag"),
    ("rocket", "a rocket on a launch pad under a blue sky", "a rocket on a launch pad under a sunset sky"),
)


@dataclass
class Example:
    """One gallery entry. Paths are absolute at run time and relative to the manifest on disk."""

    name: str
    image: str
    source_prompt: str
    target_prompt: str
    params: dict[str, Any] | None = None  # FlowEditParams.to_dict() of the precomputed results (None: the preset's)
    outputs: dict[str, str] = field(default_factory=dict)  # OUTPUT_KEYS -> PNG path
    caption: str = ""  # what the example shows, in words
    source: dict[str, Any] | None = None  # e.g. {"world": "shapes", "split": "val", "seed": 0, "index": 7}
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # OUTPUT_KEYS -> the classifier's verdict
    mask_mode: str = "none"  # "none", "drawn" (with ``mask``) or "auto": how the results were edited
    mask: str | None = None  # PNG path of a drawn mask (white = may change)

    @property
    def has_outputs(self) -> bool:
        return bool(self.outputs)

    @property
    def is_masked(self) -> bool:
        return self.mask_mode != "none"


def shapes_examples(folder: Path, count: int = SHAPES_EXAMPLE_COUNT, seed: int = SHAPES_EXAMPLE_SEED) -> list[Example]:
    """Shapes-world edit pairs (validation split), their source images written into ``folder``."""
    from shapes.world import make_edit_pairs

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for pair in make_edit_pairs(count, seed=seed):
        name = f"shapes-{pair['index']:02d}-{pair['changed']['attribute']}"
        path = folder / f"{name}.png"
        if not path.is_file():
            write_png(pair["source_image"], path)
        examples.append(Example(name, str(path), pair["source_prompt"], pair["target_prompt"]))
    return examples


def photo_examples(folder: Path) -> list[Example]:
    """Photos from ``skimage.data`` (none when scikit-image is not installed)."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for name, source_prompt, target_prompt in PHOTO_EXAMPLES:
        path = folder / f"{name}.png"
        if not path.is_file():
            try:
                write_png(Image.fromarray(getattr(skimage_data, name)()).convert("RGB"), path)
            except (AttributeError, OSError, ValueError) as exc:  # a photo missing from this skimage version
                log.warning("example photo skimage.data.%s unavailable: %s", name, exc)
                continue
        examples.append(Example(name, str(path), source_prompt, target_prompt))
    return examples


def builtin_examples(kind: str, folder: Path) -> list[Example]:
    """The examples for a model kind: shapes for the shapes model; photos (else shapes) for SD3."""
    if kind == "shapes-sd3":
        return shapes_examples(folder / "shapes")
    if kind == "sd3":
        return photo_examples(folder / "photos") or shapes_examples(folder / "shapes")
    raise ValueError(f"no examples for model kind {kind!r}")


def manifest_path(examples_dir: Path, kind: str) -> Path:
    return Path(examples_dir) / kind / MANIFEST_NAME


def produced_by(model_label: str, tokens_sha256: str | None) -> dict[str, str | None]:
    """What identifies the model that computed a set of results."""
    return {"model": model_label, "tokens_sha256": tokens_sha256}


def write_manifest(examples: list[Example], path: Path, producer: dict[str, str | None]) -> Path:
    """Write the manifest ``path`` (image paths relative to its folder), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def relative(value: str) -> str:
        return os.path.relpath(value, path.parent)

    rows = []
    for example in examples:
        row = asdict(example)
        row["image"] = relative(example.image)
        row["outputs"] = {key: relative(value) for key, value in example.outputs.items()}
        row["mask"] = relative(example.mask) if example.mask else None
        rows.append(row)
    return atomic_write_text(path, json.dumps({"version": MANIFEST_VERSION, "produced_by": producer,
                                               "examples": rows}, indent=1, ensure_ascii=False))


def read_manifest(path: Path) -> tuple[list[Example], dict[str, Any]]:
    """(examples with absolute paths, producer) from a manifest; ``ValueError`` when malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows, producer = data["examples"], data["produced_by"]
        examples = []
        for row in rows:
            example = Example(**row)
            example.image = str((path.parent / example.image).resolve())
            example.outputs = {key: str((path.parent / value).resolve()) for key, value in example.outputs.items()}
            if example.mask:
                example.mask = str((path.parent / example.mask).resolve())
            examples.append(example)
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a valid examples manifest ({exc})") from exc
    return examples, producer


def load_examples(examples_dir: Path, kind: str, producer: dict[str, str | None],
                  fallback_folder: Path, with_masks: bool = False) -> list[Example]:
    """The gallery for this model: the manifest's examples (with results when ``producer`` matches),
    else the built-in ones without results. Never raises for missing or stale files.

    with_masks: also the examples edited with a mask (their ``mask_mode`` and ``mask``); a caller
    that does not apply an example's mask must leave them out."""
    path = manifest_path(examples_dir, kind)
    if path.is_file():
        try:
            examples, made_by = read_manifest(path)
        except ValueError as exc:
            log.warning("%s; using the built-in examples", exc)
        else:
            matches = made_by == producer
            if not matches:
                log.info("precomputed examples in %s were made by %s, not %s: showing inputs only", path, made_by,
                         producer)
            kept = []
            for example in examples:
                if example.is_masked and not with_masks:
                    continue
                missing = [p for p in (example.image, example.mask) if p and not Path(p).is_file()]
                if missing:
                    log.warning("example %s: %s missing; skipped", example.name, ", ".join(missing))
                    continue
                if not matches or not all(Path(p).is_file() for p in example.outputs.values()):
                    example.outputs = {}
                kept.append(example)
            if kept:
                return kept
    try:
        return builtin_examples(kind, fallback_folder)
    except (ImportError, OSError, ValueError, RuntimeError) as exc:  # examples are a convenience: never block the app
        log.warning("no examples: %s", exc)
        return []
