"""The "shapes world": a procedural, captioned image world for training and judging a small
SD3-architecture model (docs/shapes.md).

What this module implements
---------------------------
* `ShapesWorldConfig` - the world's vocabulary and difficulty knobs.
* `Scene` / `ShapeObject` - the ground-truth labels of one image: a background colour and a
  grid of cells, each empty or holding one object (shape, colour, size, fill, plus a small
  position jitter inside its cell).
* `render(scene, resolution)` - antialiased rendering (drawn at 4x, LANCZOS downsample).
* `caption(scene, grammar, rng)` / `caption_with_statements(...)` - captions in several
  grammars, each emitted together with a machine-readable list of the statements it makes, so
  evaluation never parses English.
* `check(statements, scene)` - the checker: does a (ground-truth or classifier-predicted) scene
  satisfy each statement?  Caption objects are bound to scene objects by a best-assignment
  search, so captions that speak of relations ("a blue star below it") are checked without any
  absolute slot.
* `generate_samples(n, seed, config, split)` - deterministic in-memory samples, and the dataset
  writer `python -m shapes.world make --out DIR --n N --seed S --split train|val`
  (PNGs + metadata.jsonl, atomic and resumable).
* `make_edit_pairs(n, seed)` and `python -m shapes.world edits --out FILE.jsonl --n N` -
  source image + caption and a target caption that changes exactly one attribute of one object.
* `python -m shapes.world sheet --out docs/shapes_samples.png` - a captioned sample grid.

Why the default world is a 2x2 grid with 2-3 objects
----------------------------------------------------
An earlier 2x2 world whose captions named each cell's absolute position in every caption was
solved at 98-99 % and left SoftREPA nothing to fix.  The defaults therefore make the world hard
in the ways real prompts are: 2-3 objects (so every caption has several objects to bind
attributes to), repeated (shape, colour) pairs (so counts are non-trivial and descriptions can be
ambiguous), fill and size as well as shape and colour, captions that mention only some
attributes in varied word order and paraphrase, and relations between objects ("left of",
"below", "next to") rather than absolute slots in most grammars.  A caption makes about 8
checkable statements, so full-prompt accuracy is roughly the per-statement accuracy to the 8th
power: a model right on 92-97 % of statements lands in the 40-85 % band.

The grid is 2x2 because a 3x3 grid was measured to be too hard for a model of this size: with
9 cells and 2-4 objects (small objects ~11 px at 64 px), the 16x16x4 VAE round trip alone
capped full-prompt accuracy at 0.545 (attribute 0.920) and the H100-trained denoiser reached
0.03 (attribute 0.635).  If the base model's full-prompt accuracy lands outside the band, turn
these knobs (in order of effect): `max_objects` / `min_objects`, `grid` (3 is much harder),
`mention_*` probabilities (fewer mentioned attributes -> easier), `grammar_weights` (more
"absolute" -> easier), `jitter`.

Statements (all JSON-serialisable dicts)
----------------------------------------
* {"type": "object", "id": k, "shape": s, "colour": c|None, "size": z|None, "fill": f|None}
  - caption object k exists with the given (non-None) attributes.
* {"type": "position", "id": k, "row": r, "col": c} - caption object k is in that cell.
* {"type": "relation", "relation": rel, "a": k, "b": j} - object k is `rel` object j, with
  rel in left_of / right_of (strictly smaller / larger column), above / below (strictly smaller /
  larger row) and next_to (edge-adjacent cells).  Relations are "loose" like GenEval's: "left
  of" does not require the same row.
* {"type": "count", "n": n, "shape": s, "colour": c|None, "size": z|None, "fill": f|None} -
  exactly n objects of the scene have these attributes.
* {"type": "background", "colour": b}.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from softrepa.atomic import TEMP_GLOB, atomic_write_bytes

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
# Saturated hues spread around the colour wheel so that every pair stays distinguishable after
# blur, noise and the colour drift of a small generator.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 220, 30),
    "green": (30, 170, 50),
    "cyan": (0, 200, 220),
    "blue": (30, 70, 230),
    "purple": (140, 40, 200),
    "pink": (255, 110, 200),
}
# Achromatic backgrounds, so that no object colour can vanish into its background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "grey": (125, 125, 125),
}
SIZES: tuple[str, ...] = ("small", "large")
FILLS: tuple[str, ...] = ("solid", "outline")
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "size", "fill")
GRAMMARS: tuple[str, ...] = ("relation", "count", "list", "absolute")
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below", "next_to")
SPLITS: tuple[str, ...] = ("train", "val")

# Fraction of the cell taken by an object's bounding box, per size.
SIZE_SCALE: dict[str, float] = {"small": 0.52, "large": 0.86}
# Outline stroke width as a fraction of the image side (~1.8 px at 64 px).
OUTLINE_FRACTION = 0.028
# Rendering supersampling factor (draw big, LANCZOS down) for antialiasing.
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapesWorldConfig:
    """The world's vocabulary and difficulty knobs (see the module docstring for the defaults'
    rationale).  Frozen so that it can be hashed into a dataset directory's identity."""

    resolution: int = 64
    grid: int = 2
    min_objects: int = 2
    max_objects: int = 3
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    # Probability that a new object copies the shape and colour of an earlier one, so that
    # scenes contain groups worth counting ("two green squares").
    repeat_prob: float = 0.3
    # Position jitter inside the cell, as a fraction of the free space around the object.
    jitter: float = 0.6
    # Probability that a caption mentions each attribute of an object (the shape is always
    # mentioned).  Unmentioned attributes are free for the generator.
    mention_colour: float = 0.9
    mention_size: float = 0.6
    mention_fill: float = 0.5
    mention_background: float = 0.4
    # Probability that the first object of a "relation" caption is anchored to its cell.
    anchor_position: float = 0.5
    grammars: tuple[str, ...] = GRAMMARS
    grammar_weights: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
    # Percentage of scene-hash space reserved for the val split (scenes never shared).
    val_percent: int = 10

    def __post_init__(self) -> None:
        if self.grid not in (2, 3):
            raise ValueError(f"grid must be 2 or 3, got {self.grid}")
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= {self.grid ** 2}, "
                f"got {self.min_objects}..{self.max_objects}"
            )
        if self.resolution < 64:
            raise ValueError(f"resolution must be >= 64, got {self.resolution}")
        if len(self.grammars) != len(self.grammar_weights):
            raise ValueError("grammars and grammar_weights must have the same length")
        for name in self.grammars:
            if name not in GRAMMARS:
                raise ValueError(f"unknown grammar {name!r}; known: {GRAMMARS}")
        for name in self.shapes:
            if name not in SHAPES:
                raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
        for name in self.colours:
            if name not in COLOURS:
                raise ValueError(f"unknown colour {name!r}; known: {tuple(COLOURS)}")
        for name in self.backgrounds:
            if name not in BACKGROUNDS:
                raise ValueError(f"unknown background {name!r}; known: {tuple(BACKGROUNDS)}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "ShapesWorldConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One object.  dx, dy: offset of its centre from the cell centre, as a fraction of the cell
    side; part of the labels so that rendering is a pure function of the scene."""

    shape: str
    colour: str
    size: str
    fill: str
    dx: float = 0.0
    dy: float = 0.0

    def attribute(self, name: str) -> str:
        if name == "shape":
            return self.shape
        elif name == "colour":
            return self.colour
        elif name == "size":
            return self.size
        elif name == "fill":
            return self.fill
        else:
            raise ValueError(f"unknown attribute {name!r}; known: {ATTRIBUTES}")


@dataclass(frozen=True)
class Scene:
    """Ground-truth labels of one image: cells are row-major, None for an empty cell."""

    background: str
    grid: int
    cells: tuple[ShapeObject | None, ...]

    def __post_init__(self) -> None:
        if len(self.cells) != self.grid * self.grid:
            raise ValueError(f"{self.grid}x{self.grid} grid needs {self.grid ** 2} cells")

    def objects(self) -> list[tuple[int, ShapeObject]]:
        """(cell index, object) for every occupied cell, in row-major order."""
        return [(i, obj) for i, obj in enumerate(self.cells) if obj is not None]

    def row_col(self, cell: int) -> tuple[int, int]:
        return divmod(cell, self.grid)

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "grid": self.grid,
            "cells": [None if obj is None else asdict(obj) for obj in self.cells],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        cells = tuple(None if obj is None else ShapeObject(**obj) for obj in data["cells"])
        return cls(background=data["background"], grid=int(data["grid"]), cells=cells)

    def canonical_key(self) -> str:
        """Identity of the scene for the train/val split: labels without position jitter."""
        cells = [
            None if obj is None else [obj.shape, obj.colour, obj.size, obj.fill]
            for obj in self.cells
        ]
        return json.dumps([self.background, self.grid, cells], separators=(",", ":"))


def scene_split(scene: Scene, config: ShapesWorldConfig) -> str:
    """Which split a scene belongs to, by a hash of its labels: train and val scenes are
    disjoint whatever seeds are used."""
    digest = hashlib.sha256(scene.canonical_key().encode()).digest()
    return "val" if int.from_bytes(digest[:4], "big") % 100 < config.val_percent else "train"


def sample_rng(seed: int, split: str, index: int, purpose: str = "sample") -> random.Random:
    """Independent, platform-stable random stream per sample, so sample i of a seed never
    depends on how many samples were generated before it (resumable writing, sharding)."""
    digest = hashlib.sha256(f"{purpose}/{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _random_object(rng: random.Random, config: ShapesWorldConfig, like: ShapeObject | None) -> ShapeObject:
    if like is None:
        shape, colour = rng.choice(config.shapes), rng.choice(config.colours)
    else:
        shape, colour = like.shape, like.colour
    size, fill = rng.choice(SIZES), rng.choice(FILLS)
    slack = (1.0 - SIZE_SCALE[size]) / 2 * config.jitter
    dx, dy = round(rng.uniform(-slack, slack), 4), round(rng.uniform(-slack, slack), 4)
    return ShapeObject(shape=shape, colour=colour, size=size, fill=fill, dx=dx, dy=dy)


def random_scene(
    rng: random.Random,
    config: ShapesWorldConfig,
    n_objects: int | None = None,
    occupancy: float | None = None,
) -> Scene:
    """Sample a scene.  By default the object count is uniform in [min_objects, max_objects];
    `occupancy` instead fills each cell independently with that probability (the classifier
    trains on such scenes so that it has no prior on layouts)."""
    n_cells = config.grid * config.grid
    if occupancy is not None:
        occupied = [i for i in range(n_cells) if rng.random() < occupancy]
    else:
        if n_objects is None:
            n_objects = rng.randint(config.min_objects, config.max_objects)
        occupied = sorted(rng.sample(range(n_cells), n_objects))
    background = rng.choice(config.backgrounds)
    cells: list[ShapeObject | None] = [None] * n_cells
    placed: list[ShapeObject] = []
    for cell in occupied:
        like = rng.choice(placed) if placed and rng.random() < config.repeat_prob else None
        obj = _random_object(rng, config, like)
        cells[cell] = obj
        placed.append(obj)
    return Scene(background=background, grid=config.grid, cells=tuple(cells))


def random_scene_in_split(rng: random.Random, config: ShapesWorldConfig, split: str, **kwargs) -> Scene:
    """Rejection-sample a scene whose hash puts it in `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    for _ in range(10_000):
        scene = random_scene(rng, config, **kwargs)
        if scene_split(scene, config) == split:
            return scene
    raise RuntimeError(f"could not sample a {split} scene in 10000 tries (val_percent={config.val_percent})")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _normalise(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Centre a polygon's bounding box on the origin and scale its longer side to 2, so every
    shape fills the same box and "size" means the same for all shapes."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [((x - cx) / half, (y - cy) / half) for x, y in points]


def _star(points: int = 5, inner: float = 0.5) -> list[tuple[float, float]]:
    # inner radius 0.5 (not the classic 0.38) keeps the arms thick enough to read at ~11 px.
    out = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        out.append((radius * math.cos(angle), radius * math.sin(angle)))
    return out


def _heart(steps: int = 64) -> list[tuple[float, float]]:
    out = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        out.append((x, y))
    return out


def _cross(arm: float = 0.34) -> list[tuple[float, float]]:
    a = arm
    return [
        (-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
        (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a),
    ]  # fmt: skip


SHAPE_POLYGONS: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,  # drawn as an ellipse
    "square": _normalise([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "triangle": _normalise([(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]),
    "star": _normalise(_star()),
    "heart": _normalise(_heart()),
    "cross": _normalise(_cross()),
}


def _shape_mask(shape: str, side: int) -> Image.Image:
    """Binary mask ("L") of a shape filling a side x side box."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    half = (side - 1) / 2
    if shape == "circle":
        draw.ellipse([0, 0, side - 1, side - 1], fill=255)
    elif shape in SHAPE_POLYGONS:
        draw.polygon([(half + x * half, half + y * half) for x, y in SHAPE_POLYGONS[shape]], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return mask


def _erode(mask: Image.Image, radius: int) -> Image.Image:
    # Repeated 3x3 min filters: same result as one (2r+1) square filter, at a fraction of the cost.
    for _ in range(radius):
        mask = mask.filter(ImageFilter.MinFilter(3))
    return mask


def render(scene: Scene, resolution: int = 64) -> Image.Image:
    """Render a scene to an RGB image of side `resolution`, antialiased by drawing at
    SUPERSAMPLE x and downsampling with LANCZOS."""
    big = resolution * SUPERSAMPLE
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}")
    canvas = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    cell_side = big / scene.grid
    stroke = max(1, round(OUTLINE_FRACTION * big))
    for cell, obj in scene.objects():
        row, col = scene.row_col(cell)
        side = int(round(SIZE_SCALE[obj.size] * cell_side))
        cx = (col + 0.5 + obj.dx) * cell_side
        cy = (row + 0.5 + obj.dy) * cell_side
        mask = _object_mask(obj.shape, obj.fill, side, stroke)
        canvas.paste(COLOURS[obj.colour], (int(round(cx - side / 2)), int(round(cy - side / 2))), mask)
    return canvas.resize((resolution, resolution), Image.LANCZOS)


@functools.lru_cache(maxsize=256)
def _object_mask(shape: str, fill: str, side: int, stroke: int) -> Image.Image:
    """Mask of one object at supersampled scale.  Cached: there are only shapes x fills x sizes
    of them per resolution, and eroding outlines is the costly part of rendering."""
    mask = _shape_mask(shape, side)
    if fill == "outline":
        # Pad before eroding so that the box edge does not count as background.
        padded = Image.new("L", (side + 2, side + 2), 0)
        padded.paste(mask, (1, 1))
        inner = _erode(padded, stroke).crop((1, 1, side + 1, side + 1))
        return ImageChops.subtract(mask, inner)
    elif fill == "solid":
        return mask
    else:
        raise ValueError(f"unknown fill {fill!r}; known: {FILLS}")


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
FILL_PRENOMINAL = {"solid": ("solid", "filled"), "outline": ("outlined", "hollow")}
FILL_POSTNOMINAL = {"solid": ("filled in", "in solid colour"), "outline": ("in outline", "drawn as an outline")}
PLURALS = {"cross": "crosses"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
RELATION_WORDS = {
    "left_of": ("left of", "to the left of"),
    "right_of": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "next_to": ("next to", "beside"),
}
ROW_WORDS = {
    3: (("top", "upper"), ("middle", "center"), ("bottom", "lower")),
    2: (("top", "upper"), ("bottom", "lower")),
}
COL_WORDS = {3: (("left",), ("middle", "center"), ("right",)), 2: (("left",), ("right",))}
PREFIXES = ("", "", "", "a picture of ", "an image of ", "a drawing of ")
NOUN_PHRASE_START = re.compile(r"(a|an|one|two|three|four|five|six|seven|eight|nine) ")
BACKGROUND_FORMS = (
    "{c} on a {b} background",
    "{c} against a {b} background",
    "{c}, {b} background",
    "a {b} background with {c}",
)


@dataclass
class CaptionResult:
    """A caption, the statements it makes, and (for building edits; never used by the checker)
    the ground-truth cell of each caption object id."""

    text: str
    grammar: str
    statements: list[dict]
    object_cells: list[int] = field(default_factory=list)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _join(parts: Sequence[str], rng: random.Random) -> str:
    if len(parts) == 1:
        return parts[0]
    if rng.random() < 0.2:
        return "; ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _mentioned(obj: ShapeObject, config: ShapesWorldConfig, rng: random.Random) -> dict:
    """Which attributes the caption states for an object (shape always)."""
    return {
        "shape": obj.shape,
        "colour": obj.colour if rng.random() < config.mention_colour else None,
        "size": obj.size if rng.random() < config.mention_size else None,
        "fill": obj.fill if rng.random() < config.mention_fill else None,
    }


def _noun_phrase(attrs: dict, rng: random.Random, plural: bool = False, determiner: str | None = None) -> str:
    """A noun phrase in one of several word orders, e.g. "a small hollow red star",
    "a red small star", "a red star in outline", "a star that is small and red"."""
    noun = PLURALS.get(attrs["shape"], attrs["shape"] + "s") if plural else attrs["shape"]
    size = rng.choice(SIZE_WORDS[attrs["size"]]) if attrs["size"] else None
    colour = attrs["colour"]
    fill = attrs["fill"]
    form = rng.random()
    if form < 0.5:
        adjectives = [w for w in (size, rng.choice(FILL_PRENOMINAL[fill]) if fill else None, colour) if w]
        if rng.random() < 0.3:
            rng.shuffle(adjectives)  # varied (less idiomatic) adjective order, as real prompts have
        body = " ".join(adjectives + [noun])
    elif form < 0.8 or not (size or colour or fill):
        adjectives = [w for w in (size, colour) if w]
        body = " ".join(adjectives + [noun])
        if fill:
            body += " " + rng.choice(FILL_POSTNOMINAL[fill])
    else:
        predicates = [w for w in (size, colour, rng.choice(FILL_PRENOMINAL[fill]) if fill else None) if w]
        rng.shuffle(predicates)
        verb = "that are" if plural else "that is"
        tail = predicates[0] if len(predicates) == 1 else ", ".join(predicates[:-1]) + " and " + predicates[-1]
        body = f"{noun} {verb} {tail}"
    if determiner is None:
        return body if plural else _with_article(body)
    if determiner in ("a", "an"):
        return _with_article(body)
    return f"{determiner} {body}"


def _short_reference(attrs: dict) -> str:
    """Definite reference to an earlier object: "the red star"."""
    words = [w for w in (attrs["colour"], attrs["shape"]) if w]
    return "the " + " ".join(words)


def _cell_phrase(row: int, col: int, grid: int, rng: random.Random) -> str:
    row_word = rng.choice(ROW_WORDS[grid][row])
    col_word = rng.choice(COL_WORDS[grid][col])
    if grid == 3 and row == 1 and col == 1:
        name = rng.choice(("center", "middle"))
    elif row_word == col_word:
        name = row_word
    else:
        name = f"{row_word} {col_word}"
    corner = grid == 3 and row != 1 and col != 1 or grid == 2
    if corner and rng.random() < 0.3:
        name += " corner"
    return rng.choice(("in the ", "at the ")) + name


def _true_relations(a_rc: tuple[int, int], b_rc: tuple[int, int]) -> list[str]:
    return [rel for rel in RELATIONS if relation_holds(rel, a_rc, b_rc)]


def relation_holds(relation: str, a_rc: tuple[int, int], b_rc: tuple[int, int]) -> bool:
    """Does the object at cell a_rc (row, col) stand in `relation` to the one at b_rc?"""
    (ar, ac), (br, bc) = a_rc, b_rc
    if relation == "left_of":
        return ac < bc
    elif relation == "right_of":
        return ac > bc
    elif relation == "above":
        return ar < br
    elif relation == "below":
        return ar > br
    elif relation == "next_to":
        return abs(ar - br) + abs(ac - bc) == 1
    else:
        raise ValueError(f"unknown relation {relation!r}; known: {RELATIONS}")


def _object_statement(k: int, attrs: dict) -> dict:
    return {"type": "object", "id": k, **attrs}


def _caption_relation(scene: Scene, config: ShapesWorldConfig, rng: random.Random) -> CaptionResult:
    objects = scene.objects()
    rng.shuffle(objects)
    statements: list[dict] = []
    attrs = [_mentioned(obj, config, rng) for _, obj in objects]
    cells = [cell for cell, _ in objects]
    refs = [_short_reference(a) for a in attrs]
    clauses = []
    for k, (cell, obj) in enumerate(objects):
        statements.append(_object_statement(k, attrs[k]))
        np_k = _noun_phrase(attrs[k], rng)
        if k == 0:
            clause = np_k
            if len(objects) == 1 or rng.random() < config.anchor_position:
                row, col = scene.row_col(cell)
                statements.append({"type": "position", "id": 0, "row": row, "col": col})
                clause += " " + _cell_phrase(row, col, scene.grid, rng)
            clauses.append(clause)
            continue
        # Refer to the previous object ("it") most of the time, else to an earlier one by a
        # definite description - but only if that description is unambiguous among the objects.
        ref = k - 1
        if k >= 2 and rng.random() < 0.4:
            candidate = rng.randrange(k - 1)
            # "the red star" is unambiguous only if no other caption object could be read as it:
            # require its shape to be unique among the caption's objects.
            if sum(a["shape"] == attrs[candidate]["shape"] for a in attrs) == 1:
                ref = candidate
        true_rels = _true_relations(scene.row_col(cell), scene.row_col(cells[ref]))
        # "next to" is the least informative relation: use it only now and then.
        weights = [0.4 if rel == "next_to" else 1.0 for rel in true_rels]
        rel = rng.choices(true_rels, weights=weights)[0]
        statements.append({"type": "relation", "relation": rel, "a": k, "b": ref})
        rel_words = rng.choice(RELATION_WORDS[rel])
        unique_shape = sum(a["shape"] == attrs[ref]["shape"] for a in attrs) == 1
        ref_words = "it" if ref == k - 1 and (rng.random() < 0.7 or not unique_shape) else refs[ref]
        if rng.random() < 0.25:
            clauses.append(f"{rel_words} {ref_words} is {np_k}")
        else:
            clauses.append(f"{np_k} {rel_words} {ref_words}")
    return CaptionResult(_join(clauses, rng), "relation", statements, cells)


def _caption_absolute(scene: Scene, config: ShapesWorldConfig, rng: random.Random) -> CaptionResult:
    objects = scene.objects()
    rng.shuffle(objects)
    statements: list[dict] = []
    clauses = []
    for k, (cell, obj) in enumerate(objects):
        attrs = _mentioned(obj, config, rng)
        row, col = scene.row_col(cell)
        statements.append(_object_statement(k, attrs))
        statements.append({"type": "position", "id": k, "row": row, "col": col})
        np_k, where = _noun_phrase(attrs, rng), _cell_phrase(row, col, scene.grid, rng)
        clauses.append(f"{where} {np_k}" if rng.random() < 0.3 else f"{np_k} {where}")
    return CaptionResult(_join(clauses, rng), "absolute", statements, [c for c, _ in objects])


def _caption_list(scene: Scene, config: ShapesWorldConfig, rng: random.Random) -> CaptionResult:
    objects = scene.objects()
    rng.shuffle(objects)
    statements: list[dict] = []
    phrases = []
    for k, (_, obj) in enumerate(objects):
        attrs = _mentioned(obj, config, rng)
        statements.append(_object_statement(k, attrs))
        phrases.append(_noun_phrase(attrs, rng))
    text = _join(phrases, rng)
    if rng.random() < 0.3:
        text = f"{NUMBER_WORDS[len(objects)]} shapes: {text}" if len(objects) > 1 else text
    return CaptionResult(text, "list", statements, [c for c, _ in objects])


COUNT_KEYS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("shape", "colour"), 0.6),
    (("shape",), 0.2),
    (("shape", "size"), 0.1),
    (("shape", "fill"), 0.1),
)


def _caption_count(scene: Scene, config: ShapesWorldConfig, rng: random.Random) -> CaptionResult:
    keys, weights = zip(*COUNT_KEYS)
    key = rng.choices(keys, weights=weights)[0]
    # Group every object of the scene by the chosen attributes: the groups partition the scene,
    # so each "exactly n" statement is true of the scene by construction.
    groups: dict[tuple[str, ...], int] = {}
    for _, obj in scene.objects():
        group = tuple(obj.attribute(a) for a in key)
        groups[group] = groups.get(group, 0) + 1
    items = list(groups.items())
    rng.shuffle(items)
    statements = []
    phrases = []
    for group, n in items:
        attrs = {a: None for a in ATTRIBUTES}
        attrs.update(dict(zip(key, group)))
        statements.append({"type": "count", "n": n, **attrs})
        if n == 1:
            determiner = "one" if rng.random() < 0.3 else "a"
        else:
            determiner = NUMBER_WORDS[n]
        phrases.append(_noun_phrase(attrs, rng, plural=n > 1, determiner=determiner))
    text = _join(phrases, rng)
    if rng.random() < 0.25:
        text = ("there is " if items[0][1] == 1 else "there are ") + text
    return CaptionResult(text, "count", statements, [])


CAPTIONERS = {
    "relation": _caption_relation,
    "count": _caption_count,
    "list": _caption_list,
    "absolute": _caption_absolute,
}


def caption_with_statements(
    scene: Scene, grammar: str, rng: random.Random, config: ShapesWorldConfig | None = None
) -> CaptionResult:
    """Caption a scene in `grammar`; returns the text with the statements it makes (every one
    of them true of `scene`)."""
    config = config or ShapesWorldConfig(grid=scene.grid)
    if grammar not in CAPTIONERS:
        raise ValueError(f"unknown grammar {grammar!r}; known: {GRAMMARS}")
    if not scene.objects():
        raise ValueError("cannot caption an empty scene")
    result = CAPTIONERS[grammar](scene, config, rng)
    text = result.text
    if rng.random() < config.mention_background:
        result.statements.append({"type": "background", "colour": scene.background})
        text = rng.choice(BACKGROUND_FORMS).format(c=text, b=scene.background)
    prefix = rng.choice(PREFIXES)  # drawn for every caption, so dropping one leaves the RNG stream as is
    # "a picture of" only before a noun phrase: not before "there are ..." or "at the top left ..."
    result.text = (prefix if NOUN_PHRASE_START.match(text) else "") + text
    return result


def caption(scene: Scene, grammar: str, rng: random.Random, config: ShapesWorldConfig | None = None) -> str:
    """Caption text only (see caption_with_statements)."""
    return caption_with_statements(scene, grammar, rng, config).text


# ---------------------------------------------------------------------------------------------
# Checker
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """Outcome of checking a caption's statements against a scene.

    statement_holds[i] says whether statements[i] holds under the best binding of caption
    objects to scene objects.  The *_hits / *_total counters are the atoms behind the metrics:
    attribute (each mentioned attribute of each caption object, count statements expanded into
    n objects), spatial (positions and relations), count (exact counts), background."""

    statement_holds: list[bool]
    binding: dict[str, int | None]
    attribute_hits: int = 0
    attribute_total: int = 0
    spatial_hits: int = 0
    spatial_total: int = 0
    count_hits: int = 0
    count_total: int = 0
    background_hits: int = 0
    background_total: int = 0

    @property
    def all_hold(self) -> bool:
        return all(self.statement_holds)


def _attribute_hits(obj: ShapeObject, wanted: dict) -> int:
    return sum(obj.attribute(a) == v for a, v in wanted.items())


def _attrs_of(statement: dict) -> dict:
    return {a: statement.get(a) for a in ATTRIBUTES if statement.get(a) is not None}


def check(statements: Sequence[dict], scene: Scene) -> CheckResult:
    """Check every statement against `scene` (ground truth or classifier prediction).

    Caption objects ("slots": object statements, and n slots per count statement) are bound to
    distinct scene objects by the assignment that satisfies the most attribute and spatial
    atoms, found by branch-and-bound search.  If some assignment satisfies everything, the best
    one does, so "all statements hold" is exact; the per-atom counts are the most charitable
    reading, like a human judge matching caption objects to image objects."""
    scene_objects = scene.objects()
    positions = [scene.row_col(cell) for cell, _ in scene_objects]

    slots: list[tuple[str, dict]] = []  # (slot name, attribute constraints)
    slot_of_id: dict[int, int] = {}
    for index, st in enumerate(statements):
        kind = st["type"]
        if kind == "object":
            slot_of_id[st["id"]] = len(slots)
            slots.append((f"object:{st['id']}", _attrs_of(st)))
        elif kind == "count":
            for j in range(st["n"]):
                slots.append((f"count:{index}:{j}", _attrs_of(st)))
        elif kind in ("position", "relation", "background"):
            pass
        else:
            raise ValueError(f"unknown statement type {kind!r}")

    # Per slot: the constraints on its own binding (attributes + absolute position).
    n_slots = len(slots)
    unary_total = [len(attrs) for _, attrs in slots]
    slot_positions: list[list[tuple[int, int]]] = [[] for _ in slots]
    pair_relations: list[tuple[int, int, str]] = []
    for st in statements:
        if st["type"] == "position":
            slot_positions[slot_of_id[st["id"]]].append((st["row"], st["col"]))
        elif st["type"] == "relation":
            pair_relations.append((slot_of_id[st["a"]], slot_of_id[st["b"]], st["relation"]))

    def unary_score(slot: int, obj_index: int | None) -> int:
        if obj_index is None:
            return 0
        obj = scene_objects[obj_index][1]
        hits = _attribute_hits(obj, slots[slot][1])
        return hits + sum(positions[obj_index] == p for p in slot_positions[slot])

    unary = [[unary_score(s, o) for o in range(len(scene_objects))] for s in range(n_slots)]
    unary_max = [unary_total[s] + len(slot_positions[s]) for s in range(n_slots)]
    # Relations are scored when their later slot gets bound.
    relations_at: list[list[tuple[int, int, str]]] = [[] for _ in slots]
    for a, b, rel in pair_relations:
        relations_at[max(a, b)].append((a, b, rel))
    perfect = sum(unary_max) + len(pair_relations)

    best_score = -1
    best_assignment: list[int | None] = [None] * n_slots
    assignment: list[int | None] = [None] * n_slots
    used = [False] * len(scene_objects)
    # Optimistic bound of what slots s.. can still add.
    remaining_bound = [0] * (n_slots + 1)
    for s in range(n_slots - 1, -1, -1):
        remaining_bound[s] = remaining_bound[s + 1] + unary_max[s] + len(relations_at[s])

    def search(s: int, score: int) -> bool:
        nonlocal best_score, best_assignment
        if score + remaining_bound[s] <= best_score:
            return False
        if s == n_slots:
            best_score, best_assignment = score, list(assignment)
            return score == perfect  # stop: nothing can beat a perfect binding
        options: list[int | None] = [o for o in range(len(scene_objects)) if not used[o]]
        # Try the objects that fit this slot best first, so a perfect binding is found early.
        options.sort(key=lambda o: -unary[s][o])
        options.append(None)  # a caption object may be missing from the scene
        for o in options:
            gained = 0 if o is None else unary[s][o]
            assignment[s] = o
            for a, b, rel in relations_at[s]:
                oa, ob = assignment[a], assignment[b]
                if oa is not None and ob is not None and relation_holds(rel, positions[oa], positions[ob]):
                    gained += 1
            if o is not None:
                used[o] = True
            done = search(s + 1, score + gained)
            if o is not None:
                used[o] = False
            assignment[s] = None
            if done:
                return True
        return False

    search(0, 0)
    bound = best_assignment

    result = CheckResult(statement_holds=[], binding={name: bound[s] for s, (name, _) in enumerate(slots)})
    for index, st in enumerate(statements):
        kind = st["type"]
        if kind == "object":
            slot = slot_of_id[st["id"]]
            o = bound[slot]
            hits = 0 if o is None else _attribute_hits(scene_objects[o][1], _attrs_of(st))
            result.attribute_hits += hits
            result.attribute_total += unary_total[slot]
            result.statement_holds.append(hits == unary_total[slot])
        elif kind == "count":
            wanted = _attrs_of(st)
            for s, (name, attrs) in enumerate(slots):
                if name.startswith(f"count:{index}:"):
                    o = bound[s]
                    result.attribute_hits += 0 if o is None else _attribute_hits(scene_objects[o][1], attrs)
                    result.attribute_total += len(attrs)
            actual = sum(all(obj.attribute(a) == v for a, v in wanted.items()) for _, obj in scene_objects)
            holds = actual == st["n"]
            result.count_hits += holds
            result.count_total += 1
            result.statement_holds.append(holds)
        elif kind == "position":
            o = bound[slot_of_id[st["id"]]]
            holds = o is not None and positions[o] == (st["row"], st["col"])
            result.spatial_hits += holds
            result.spatial_total += 1
            result.statement_holds.append(holds)
        elif kind == "relation":
            oa, ob = bound[slot_of_id[st["a"]]], bound[slot_of_id[st["b"]]]
            holds = oa is not None and ob is not None
            holds = holds and relation_holds(st["relation"], positions[oa], positions[ob])
            result.spatial_hits += holds
            result.spatial_total += 1
            result.statement_holds.append(holds)
        elif kind == "background":
            holds = scene.background == st["colour"]
            result.background_hits += holds
            result.background_total += 1
            result.statement_holds.append(holds)
        else:
            raise ValueError(f"unknown statement type {kind!r}")
    return result


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


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
            atomic_write_bytes(path, _png_bytes(sample["image"]))
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
            atomic_write_bytes(out.parent / relative, _png_bytes(image))
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
