"""Rendering a shapes-world scene to an image: the shape outlines (polygons normalised to one
box, so "size" means the same for every shape), solid or outlined object masks, antialiasing by
drawing at 4x and downsampling with LANCZOS, and PNG encoding.
"""

from __future__ import annotations

import functools
import io
import math

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from shapes.scenes import BACKGROUNDS, COLOURS, FILLS, SHAPES, SIZE_SCALE, Scene

# Outline stroke width as a fraction of the image side (~1.8 px at 64 px).
OUTLINE_FRACTION = 0.028
# Rendering supersampling factor (draw big, LANCZOS down) for antialiasing.
SUPERSAMPLE = 4


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


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG (what the dataset writers store)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
