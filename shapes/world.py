"""The "shapes world": a procedural, captioned image world for training and judging a small
SD3-architecture model (docs/shapes.md).

This module holds the world's data: seeded captioned samples, edit pairs, the dataset writers
and a captioned sample sheet, with their command line. The world itself is split by role:
`shapes.scenes` (vocabulary, `ShapesWorldConfig`, `Scene`, scene sampling and the train/val
split), `shapes.rendering` (scene -> antialiased image), `shapes.captions` (captions in several
grammars, each with the statements it makes) and `shapes.statements` (the checker: does a scene
satisfy a caption's statements?).

What this module implements
---------------------------
* `generate_samples(n, seed, config, split)` - deterministic in-memory samples, and the dataset
  writer `python -m shapes.world make --out DIR --n N --seed S --split train|val`
  (PNGs + metadata.jsonl, atomic and resumable).
* `make_edit_pairs(n, seed)` and `python -m shapes.world edits --out FILE.jsonl --n N` -
  source image + caption and a target caption that changes exactly one attribute of one object.
* `python -m shapes.world sheet --out docs/shapes_samples.png` - a captioned sample grid.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from shapes.captions import caption_with_statements
from shapes.rendering import png_bytes, render
from shapes.scenes import (
    ATTRIBUTES,
    FILLS,
    SIZE_SCALE,
    SIZES,
    SPLITS,
    Scene,
    ShapesWorldConfig,
    random_scene_in_split,
    sample_rng,
)
from softrepa.atomic import TEMP_GLOB, atomic_write_bytes

# ---------------------------------------------------------------------------------------------
# Samples and dataset writing
# ---------------------------------------------------------------------------------------------


def make_sample(
    index: int, seed: int, config: ShapesWorldConfig, split: str = "train", render_image: bool = True
) -> dict:
    """Sample `index` of (seed, split): a pure function of its arguments."""
    rng = sample_rng(seed, split, index)
    scene = random_scene_in_split(rng, config, split)
    grammar = rng.choices(config.grammars, weights=config.grammar_weights)[0]
    result = caption_with_statements(scene, grammar, rng, config)
    return {
        "index": index,
        "split": split,
        "image": render(scene, config.resolution) if render_image else None,
        "caption": result.text,
        "grammar": grammar,
        "labels": scene.to_dict(),
        "statements": result.statements,
    }


def iter_samples(
    n: int, seed: int, config: ShapesWorldConfig | None = None, split: str = "train", start: int = 0
) -> Iterator[dict]:
    config = config or ShapesWorldConfig()
    for index in range(start, start + n):
        yield make_sample(index, seed, config, split)


def generate_samples(
    n: int, seed: int, config: ShapesWorldConfig | None = None, split: str = "train", start: int = 0
) -> list[dict]:
    """n samples as dicts: index, split, image (PIL RGB), caption, grammar, labels (Scene dict),
    statements.  Same arguments -> identical images and captions."""
    return list(iter_samples(n, seed, config, split, start))


def write_dataset(
    out: str | Path, n: int, seed: int, split: str = "train", config: ShapesWorldConfig | None = None
) -> Path:
    """Write n samples to out/images/*.png and out/metadata.jsonl.

    Atomic and resumable: each PNG is written to a temp file and renamed; existing PNGs are
    kept (sample i is a pure function of (seed, split, i), so its caption and labels are
    regenerated without re-rendering), and metadata.jsonl is rewritten whole and renamed last.
    A directory written with another config or seed is refused rather than mixed."""
    config = config or ShapesWorldConfig()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    identity = {"seed": seed, "split": split, "config": config.to_dict()}
    identity_path = out / "dataset.json"
    if identity_path.exists():
        existing = json.loads(identity_path.read_text())
        if {k: existing.get(k) for k in identity} != identity:
            raise ValueError(f"{out} holds a dataset with another seed/split/config; use a new --out")
    atomic_write_bytes(identity_path, json.dumps({**identity, "n": n}, indent=1).encode())
    for stale in (out / "images").glob(TEMP_GLOB):  # left by a run killed mid-write
        stale.unlink()
    rows = []
    for index in tqdm(range(n), desc=f"shapes {split}", unit="img", disable=n < 500):
        relative = f"images/{split}_{seed}_{index:07d}.png"
        path = out / relative
        sample = make_sample(index, seed, config, split, render_image=not path.exists())
        if sample["image"] is not None:
            atomic_write_bytes(path, png_bytes(sample["image"]))
        row = {key: sample[key] for key in ("caption", "grammar", "labels", "statements", "index", "split")}
        rows.append(row | {"image": relative})
    atomic_write_bytes(out / "metadata.jsonl", "".join(json.dumps(row) + "\n" for row in rows).encode())
    return out / "metadata.jsonl"


def read_metadata(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# Edit pairs
# ---------------------------------------------------------------------------------------------

EDIT_GRAMMARS = ("relation", "list", "absolute")  # grammars that describe objects one by one


def _changed_value(attribute: str, current: str, config: ShapesWorldConfig, rng: random.Random) -> str:
    if attribute == "shape":
        choices = [s for s in config.shapes if s != current]
    elif attribute == "colour":
        choices = [c for c in config.colours if c != current]
    elif attribute == "size":
        choices = [s for s in SIZES if s != current]
    elif attribute == "fill":
        choices = [f for f in FILLS if f != current]
    else:
        raise ValueError(f"unknown attribute {attribute!r}; known: {ATTRIBUTES}")
    return rng.choice(choices)


def make_edit_pair(index: int, seed: int, config: ShapesWorldConfig | None = None, split: str = "val") -> dict:
    """One edit pair: a source scene/image/caption and a target caption that changes exactly
    one (mentioned) attribute of one object; the rest of the wording is identical because the
    target caption is generated from the same random stream as the source caption."""
    config = config or ShapesWorldConfig()
    rng = sample_rng(seed, split, index, purpose="edit")
    for _ in range(1000):
        scene = random_scene_in_split(rng, config, split)
        grammar = rng.choice([g for g in EDIT_GRAMMARS if g in config.grammars] or list(EDIT_GRAMMARS))
        caption_seed = rng.getrandbits(64)
        source = caption_with_statements(scene, grammar, random.Random(caption_seed), config)
        object_statements = [st for st in source.statements if st["type"] == "object"]
        st = rng.choice(object_statements)
        # Edit an object the source caption singles out, so the instruction is unambiguous: its
        # description is unique, or (absolute grammar) it is pinned to a cell.
        description = {a: st[a] for a in ATTRIBUTES}
        same = sum({a: o[a] for a in ATTRIBUTES} == description for o in object_statements)
        if grammar != "absolute" and same > 1:
            continue
        attribute = rng.choice([a for a in ATTRIBUTES if st[a] is not None])
        cell = source.object_cells[st["id"]]
        obj = scene.cells[cell]
        new_value = _changed_value(attribute, obj.attribute(attribute), config, rng)
        new_obj = replace(obj, **{attribute: new_value})
        if attribute == "size":
            # Keep the jitter inside the (possibly smaller) free space of the new size.
            slack = (1.0 - SIZE_SCALE[new_value]) / 2 * config.jitter
            new_obj = replace(new_obj, dx=max(-slack, min(slack, obj.dx)), dy=max(-slack, min(slack, obj.dy)))
        cells = list(scene.cells)
        cells[cell] = new_obj
        target_scene = replace(scene, cells=tuple(cells))
        target = caption_with_statements(target_scene, grammar, random.Random(caption_seed), config)
        expected = [dict(s) for s in source.statements]
        for s in expected:
            if s["type"] == "object" and s["id"] == st["id"]:
                s[attribute] = new_value
        # The shared random stream keeps the wording in step unless a choice depended on the
        # changed attribute (e.g. an ambiguity check); then draw another pair.
        if target.statements != expected or target.object_cells != source.object_cells:
            continue
        return {
            "index": index,
            "grammar": grammar,
            "source_labels": scene.to_dict(),
            "target_labels": target_scene.to_dict(),
            "source_prompt": source.text,
            "target_prompt": target.text,
            "source_statements": source.statements,
            "target_statements": target.statements,
            "changed": {
                "object_id": st["id"],
                "cell": cell,
                "attribute": attribute,
                "from": obj.attribute(attribute),
                "to": new_value,
            },
        }
    raise RuntimeError(f"could not build edit pair {index} in 1000 tries")


def edited_cell_mask(pair: dict, resolution: int) -> np.ndarray:
    """(H, W) float32: 1 on the grid cell an edit pair changes, 0 elsewhere (its true local-edit region)."""
    grid = pair["source_labels"]["grid"]
    row, col = divmod(pair["changed"]["cell"], grid)
    side = resolution // grid
    mask = np.zeros((resolution, resolution), np.float32)
    mask[row * side:(row + 1) * side, col * side:(col + 1) * side] = 1.0
    return mask


def pooled_psnr(images, pairs, resolution: int) -> float:
    """PSNR of all pixels outside the edited cells of ``pairs`` against their inputs, pooled into one
    set (torchmetrics, from the eval extra): the benchmarks' measure of what an edit left alone."""
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio

    edited, source = [], []
    for image, pair in zip(images, pairs):
        outside = edited_cell_mask(pair, resolution) == 0
        edited.append(torch.from_numpy(np.asarray(image, np.float32)[outside]))
        source.append(torch.from_numpy(np.asarray(pair["source_image"], np.float32)[outside]))
    return float(peak_signal_noise_ratio(torch.cat(edited), torch.cat(source), data_range=255.0))


def make_edit_pairs(
    n: int, seed: int = 0, config: ShapesWorldConfig | None = None, split: str = "val", render_images: bool = True
) -> list[dict]:
    """n edit pairs (see make_edit_pair); with render_images, each also has "source_image" and
    "target_image" (PIL)."""
    config = config or ShapesWorldConfig()
    pairs = []
    for index in range(n):
        pair = make_edit_pair(index, seed, config, split)
        if render_images:
            pair["source_image"] = render(Scene.from_dict(pair["source_labels"]), config.resolution)
            pair["target_image"] = render(Scene.from_dict(pair["target_labels"]), config.resolution)
        pairs.append(pair)
    return pairs


def write_edit_pairs(out: str | Path, n: int, seed: int = 0, config: ShapesWorldConfig | None = None,
                     split: str = "val") -> Path:
    """Write edit pairs as JSONL rows with `image` (source PNG, relative to the JSONL's folder),
    `target_image`, `source_prompt`, `target_prompt`, `changed` and the labels/statements, plus
    `caption` (= source prompt) and `negative_caption` (= target prompt: wrong for the source
    image in exactly one attribute), so that a file written as DIR/metadata.jsonl from the train
    split is a SoftREPA training folder with hard negatives (`softrepa.train --hard-negatives`)."""
    config = config or ShapesWorldConfig()
    out = Path(out)
    image_dir = out.parent / f"{out.stem}_images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for pair in tqdm(make_edit_pairs(n, seed, config, split, render_images=False), desc="edit pairs", disable=n < 500):
        names = {}
        for side in ("source", "target"):
            relative = f"{image_dir.name}/{side}_{seed}_{pair['index']:06d}.png"
            image = render(Scene.from_dict(pair[f"{side}_labels"]), config.resolution)
            atomic_write_bytes(out.parent / relative, png_bytes(image))
            names[side] = relative
        rows.append({"image": names["source"], "target_image": names["target"], "caption": pair["source_prompt"],
                     "negative_caption": pair["target_prompt"], **pair})
    atomic_write_bytes(out, "".join(json.dumps(row) + "\n" for row in rows).encode())
    return out


# ---------------------------------------------------------------------------------------------
# Sample sheet
# ---------------------------------------------------------------------------------------------


def sample_sheet(samples: Sequence[dict], columns: int = 4, scale: int = 3) -> Image.Image:
    """A grid of (upscaled, nearest-neighbour so real pixels show) images with their captions."""
    import textwrap

    side = samples[0]["image"].size[0] * scale
    text_height = 90
    rows = math.ceil(len(samples) / columns)
    pad = 6
    width, height = columns * (side + pad) + pad, rows * (side + text_height + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow < 10.1 has no sized default font
        font = ImageFont.load_default()
    for k, sample in enumerate(samples):
        x = pad + (k % columns) * (side + pad)
        y = pad + (k // columns) * (side + text_height + pad)
        sheet.paste(sample["image"].resize((side, side), Image.NEAREST), (x, y))
        lines = textwrap.wrap(f"[{sample['grammar']}] {sample['caption']}", width=side // 6)
        draw.multiline_text((x, y + side + 2), "\n".join(lines[:7]), fill=(0, 0, 0), font=font, spacing=1)
    return sheet


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _add_world_args(parser: argparse.ArgumentParser) -> None:
    defaults = ShapesWorldConfig()
    parser.add_argument("--resolution", type=int, default=defaults.resolution)
    parser.add_argument("--grid", type=int, default=defaults.grid, choices=(2, 3))
    parser.add_argument("--min-objects", type=int, default=defaults.min_objects)
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)


def _config_from_args(args: argparse.Namespace) -> ShapesWorldConfig:
    return ShapesWorldConfig(
        resolution=args.resolution, grid=args.grid, min_objects=args.min_objects, max_objects=args.max_objects
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shapes.world", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="write a captioned dataset (PNGs + metadata.jsonl)")
    make.add_argument("--out", required=True)
    make.add_argument("--n", type=int, required=True)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--split", choices=SPLITS, default="train")
    _add_world_args(make)
    edits = commands.add_parser("edits", help="write edit pairs as JSONL (+ source/target PNGs)")
    edits.add_argument("--out", required=True)
    edits.add_argument("--n", type=int, required=True)
    edits.add_argument("--seed", type=int, default=0)
    edits.add_argument("--split", choices=SPLITS, default="val", help="train: a hard-negative training folder")
    _add_world_args(edits)
    sheet = commands.add_parser("sheet", help="write a PNG grid of captioned samples")
    sheet.add_argument("--out", required=True)
    sheet.add_argument("--n", type=int, default=16)
    sheet.add_argument("--seed", type=int, default=0)
    sheet.add_argument("--split", choices=SPLITS, default="train")
    _add_world_args(sheet)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = _config_from_args(args)
    if args.command == "make":
        path = write_dataset(args.out, args.n, args.seed, args.split, config)
        print(f"wrote {args.n} samples to {path}")
    elif args.command == "edits":
        path = write_edit_pairs(args.out, args.n, args.seed, config, args.split)
        print(f"wrote {args.n} edit pairs to {path}")
    elif args.command == "sheet":
        sheet = sample_sheet(generate_samples(args.n, args.seed, config, args.split))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.out)
        print(f"wrote {args.out}")
    else:
        raise ValueError(f"unknown command {args.command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
