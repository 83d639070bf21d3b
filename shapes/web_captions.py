"""Web-like captions of shapes-world scenes: captions degraded the way web alt-text is degraded,
for pretraining a "web" base model whose captions were noisy (docs/shapes.md#web-like-captions).

A web caption describes a *degraded copy* of the scene, built per sample from its own seeded
random stream (``sample_rng(seed, split, index, "web")``), so the image is the clean sample's image
(same scene, same render) and only the caption differs. Each knob of `WebCaptionConfig`:

* ``drop_object``: each object is left out of the caption with this probability (at least one
  object stays described). Count captions then count only the described objects, so a left-out
  object also makes a count wrong ("two stars" under three), as alt-text does;
* ``wrong_attribute``: each attribute (shape, colour, size, fill) of a described object is
  replaced by another value with this probability; only the mentioned ones reach the caption, so
  this is also the share of mentioned attributes that are wrong;
* ``mention_colour`` / ``mention_size`` / ``mention_fill`` / ``mention_background``: attributes
  omitted more often than in clean captions (0.9 / 0.6 / 0.5 / 0.4 there);
* ``grammar_weights`` (relation, count, list, absolute) and ``short_prefix``: shorter phrasings --
  more plain lists, fewer relations and positions, and no "a picture of" prefix unless
  ``short_prefix`` is False.

Statements stay machine-readable: `make_web_sample` returns the statements the web caption makes
(true of the degraded copy, so some are false of the image), plus the clean sample's caption and
statements and a record of what was degraded. `degradation_rates` measures how often web
statements are false of the real scene. Evaluation always scores clean captions.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from shapes.captions import caption_with_statements
from shapes.rendering import render
from shapes.scenes import ATTRIBUTES, Scene, ShapesWorldConfig, random_scene_in_split, sample_rng
from shapes.statements import check

CAPTION_MODES = ("clean", "web")


@dataclass(frozen=True)
class WebCaptionConfig:
    """How web captions are degraded (module docstring); the defaults are the "web" base model's."""

    drop_object: float = 0.35
    wrong_attribute: float = 0.2
    mention_colour: float = 0.7
    mention_size: float = 0.3
    mention_fill: float = 0.25
    mention_background: float = 0.15
    grammar_weights: tuple[float, ...] = (0.2, 0.2, 0.5, 0.1)
    short_prefix: bool = True

    def __post_init__(self) -> None:
        for name in ("drop_object", "wrong_attribute", "mention_colour", "mention_size", "mention_fill",
                     "mention_background"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if len(self.grammar_weights) != 4 or min(self.grammar_weights) < 0 or sum(self.grammar_weights) <= 0:
            raise ValueError(f"grammar_weights needs 4 non-negative weights, got {self.grammar_weights}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _wrong_value(attribute: str, current: str, world: ShapesWorldConfig, rng: random.Random) -> str:
    from shapes.world import _changed_value

    return _changed_value(attribute, current, world, rng)


def degrade_scene(scene: Scene, web: WebCaptionConfig, world: ShapesWorldConfig,
                  rng: random.Random) -> tuple[Scene, list[dict]]:
    """The scene as a web caption will describe it: some objects left out, some attributes wrong.
    Returns the degraded scene and the list of degradations ({"cell", "dropped"} or {"cell",
    "attribute", "true", "said"})."""
    objects = scene.objects()
    dropped = {cell for cell, _ in objects if rng.random() < web.drop_object}
    if len(dropped) == len(objects):  # keep one object described
        dropped.discard(rng.choice(objects)[0])
    cells = list(scene.cells)
    record: list[dict] = []
    for cell, obj in objects:
        if cell in dropped:
            cells[cell] = None
            record.append({"cell": cell, "dropped": True})
            continue
        changes = {}
        for attribute in ATTRIBUTES:
            if rng.random() < web.wrong_attribute:
                changes[attribute] = _wrong_value(attribute, obj.attribute(attribute), world, rng)
                record.append({"cell": cell, "attribute": attribute, "true": obj.attribute(attribute),
                               "said": changes[attribute]})
        cells[cell] = replace(obj, **changes)
    return Scene(background=scene.background, grid=scene.grid, cells=tuple(cells)), record


def web_world(world: ShapesWorldConfig, web: WebCaptionConfig) -> ShapesWorldConfig:
    """The world config the web captioner uses: the web mention rates and grammar weights."""
    return replace(world, mention_colour=web.mention_colour, mention_size=web.mention_size,
                   mention_fill=web.mention_fill, mention_background=web.mention_background,
                   grammar_weights=tuple(web.grammar_weights))


def make_web_sample(index: int, seed: int, web: WebCaptionConfig | None = None,
                    world: ShapesWorldConfig | None = None, split: str = "train",
                    render_image: bool = True) -> dict:
    """Sample `index` of (seed, split) with a web caption. The scene, image and clean caption are
    those of ``shapes.world.make_sample`` with the same arguments; "caption" / "statements" are the
    web caption's, "clean_caption" / "clean_statements" the clean one's."""
    from shapes.world import make_sample

    web = web or WebCaptionConfig()
    world = world or ShapesWorldConfig()
    clean = make_sample(index, seed, world, split, render_image=False)
    scene = random_scene_in_split(sample_rng(seed, split, index), world, split)  # the clean sample's scene
    rng = sample_rng(seed, split, index, purpose="web")
    degraded, record = degrade_scene(scene, web, world, rng)
    config = web_world(world, web)
    grammar = rng.choices(config.grammars, weights=config.grammar_weights)[0]
    result = caption_with_statements(degraded, grammar, rng, config)
    text = result.text
    if web.short_prefix:
        for prefix in ("a picture of ", "an image of ", "a drawing of "):
            text = text.removeprefix(prefix)
    return {"index": index, "split": split, "image": render(scene, world.resolution) if render_image else None,
            "caption": text, "grammar": grammar, "labels": scene.to_dict(), "statements": result.statements,
            "object_cells": result.object_cells, "clean_caption": clean["caption"],
            "clean_statements": clean["statements"], "degradations": record}


def generate_web_samples(n: int, seed: int, web: WebCaptionConfig | None = None,
                         world: ShapesWorldConfig | None = None, split: str = "train", start: int = 0,
                         render_image: bool = True) -> list[dict]:
    """Samples ``start .. start + n`` with web captions (see make_web_sample)."""
    return [make_web_sample(i, seed, web, world, split, render_image) for i in range(start, start + n)]


def degradation_rates(samples: list[dict]) -> dict:
    """Measured degradation of web samples against their real scenes: the share of web captions
    with at least one false statement, of mentioned object attributes that are wrong, of count
    statements that are wrong, of scene objects left out, and mean caption length in words (web
    and clean)."""
    false_captions = wrong_attrs = mentioned = wrong_counts = counts = left_out = scene_objects = 0
    for sample in samples:
        scene = Scene.from_dict(sample["labels"])
        result = check(sample["statements"], scene)
        false_captions += not all(result.statement_holds)
        for statement, holds in zip(sample["statements"], result.statement_holds):
            if statement["type"] == "count":
                counts += 1
                wrong_counts += not holds
        for change in sample["degradations"]:
            left_out += bool(change.get("dropped"))
        scene_objects += len(scene.objects())
        for statement in sample["statements"]:
            if statement["type"] != "object":
                continue
            cell = _described_cell(sample, statement)
            truth = scene.cells[cell]
            for attribute in ATTRIBUTES:
                if statement[attribute] is not None:
                    mentioned += 1
                    wrong_attrs += statement[attribute] != truth.attribute(attribute)
    n = max(1, len(samples))
    return {"false_caption_rate": false_captions / n, "wrong_attribute_rate": wrong_attrs / max(1, mentioned),
            "wrong_count_rate": wrong_counts / max(1, counts), "left_out_rate": left_out / max(1, scene_objects),
            "web_words": sum(len(s["caption"].split()) for s in samples) / n,
            "clean_words": sum(len(s["clean_caption"].split()) for s in samples) / n}


def _described_cell(sample: dict, statement: dict) -> int:
    """The real cell of a web caption's object statement (from the degradation record's cells)."""
    return sample["object_cells"][statement["id"]]
