"""Prompt help for the bundled shapes model, without a language model: the source prompt written from
the image, and a one-line edit instruction turned into the target prompt.

What this module implements
---------------------------
* ``describe_scene_image(image)``: the ground-truth classifier reads the image into a scene
  (``shapes.classifier.predict_scenes``) and ``describe_scene`` writes it in the caption grammar the
  bundled model was trained on (``shapes.captions``; the model's training set is
  ``generate_samples`` with the default ``ShapesWorldConfig``). The description is deterministic and
  complete: the "absolute" grammar (every object with its cell: "in the top left"), every object
  with all four attributes, in reading order (row-major), in the grammar's first wording of each
  word ("small" / "large", "solid" / "outlined"), and the background ("... on a black
  background"; the training captions mention it 40 % of the time). It comes with the statements
  it makes (``shapes/statements.py``), and every one of them holds on the classifier's reading:
  the caption is honest about what the judge sees. A 2x2 scene of four objects is 49 CLIP tokens,
  under the model's 64.
* ``edit_scene(scene, instruction)`` and ``describe_edit(image, instruction)``: an instruction in
  the world's own words ("make the square an outline", "turn the red star into a heart", "make the
  circle in the top left big", "change the background to grey") parsed with the world's vocabulary,
  applied to the classifier's scene, and both scenes described as above, so the target prompt is
  the source prompt with only the changed words replaced.

Why an instruction can be rewritten without a language model here, honestly and generally
-----------------------------------------------------------------------------------------
The world is closed: an image is a background and at most one object per cell, each object has a
shape, colour, size and fill from small fixed vocabularies, and the world's edits
(``shapes.world.make_edit_pairs``) change one attribute of one object. An instruction therefore
names an object (by any of its attributes and / or its cell) and one new value, and both can be
read with the vocabulary alone. The target prompt is the description of the edited scene, so each
of its statements holds on that scene by construction. What cannot be read that way is refused
with a message instead of guessed: adding, removing or moving objects, relations between objects
("the star left of the circle"), a reference that matches no object or several, a value the world
does not have ("brown"), and more than one change at once. The edit is made on the classifier's
reading of the image, so the target is written against the described source prompt (a prompt the
person typed is not parsed: captions are never read as English here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from shapes.captions import (BACKGROUND_FORMS, COL_WORDS, FILL_PRENOMINAL, PLURALS, ROW_WORDS, SIZE_WORDS,
                             CaptionResult)
from shapes.scenes import ATTRIBUTES, BACKGROUNDS, COLOURS, FILLS, SHAPES, SIZE_SCALE, SIZES, Scene, ShapeObject

GRAMMAR = "absolute"  # the caption grammar of the description (with positions)


class DescribeError(ValueError):
    """An image or instruction the shapes world cannot describe or apply; the message says why."""


@dataclass(frozen=True)
class DescribeStyle:
    """How ``describe_scene`` words a scene.

    positions: name each object's cell ("in the top left", the "absolute" grammar); False: the
        "list" grammar (objects only).
    background: end with "on a <colour> background".
    """

    positions: bool = True
    background: bool = True

    @property
    def grammar(self) -> str:
        return GRAMMAR if self.positions else "list"


# ----------------------------------------------------------------------------- describing


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(obj: ShapeObject) -> str:
    """The full noun phrase of an object in the grammar's first wording: "a large outlined red star"."""
    return _article(f"{SIZE_WORDS[obj.size][0]} {FILL_PRENOMINAL[obj.fill][0]} {obj.colour} {obj.shape}")


def cell_words(row: int, col: int, grid: int) -> str:
    """The grammar's name of a cell, first wording: "top left" (and "center" in a 3x3 grid)."""
    if grid == 3 and row == 1 and col == 1:
        return "center"
    return f"{ROW_WORDS[grid][row][0]} {COL_WORDS[grid][col][0]}"


def describe_scene(scene: Scene, style: DescribeStyle | None = None) -> CaptionResult:
    """The deterministic, complete caption of ``scene`` and the statements it makes (see module doc)."""
    style = style or DescribeStyle()
    objects = scene.objects()
    if not objects:
        raise DescribeError("The shapes classifier found no shapes in this image. The shapes model's describer "
                            "reads shapes-world images (drawings of 2-3 shapes on a plain background); write the "
                            "source prompt yourself.")
    statements: list[dict] = []
    phrases = []
    for k, (cell, obj) in enumerate(objects):
        statements.append({"type": "object", "id": k, **{a: obj.attribute(a) for a in ATTRIBUTES}})
        phrase = noun_phrase(obj)
        if style.positions:
            row, col = scene.row_col(cell)
            statements.append({"type": "position", "id": k, "row": row, "col": col})
            phrase += f" in the {cell_words(row, col, scene.grid)}"
        phrases.append(phrase)
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    if style.background:
        statements.append({"type": "background", "colour": scene.background})
        text = BACKGROUND_FORMS[0].format(c=text, b=scene.background)
    return CaptionResult(text, style.grammar, statements, [cell for cell, _ in objects])


@lru_cache(maxsize=1)
def default_classifier():
    """The shipped classifier (assets/shapes-classifier.safetensors), loaded once."""
    from shapes.classifier import load_classifier

    return load_classifier()


def read_scene(image, classifier=None) -> Scene:
    """The classifier's reading of one image (PIL image; any size, resized to the world's)."""
    from shapes.classifier import predict_scenes

    return predict_scenes(classifier if classifier is not None else default_classifier(), [image.convert("RGB")])[0]


def describe_scene_image(image, classifier=None, style: DescribeStyle | None = None) -> str:
    """The source prompt of a shapes-world image: the classifier's reading, described (module doc)."""
    return describe_scene(read_scene(image, classifier), style).text


# ----------------------------------------------------------------------------- instructions

UNSUPPORTED_WORDS = frozenset("add remove delete erase move insert rotate flip duplicate copy swap exchange put place "
                              "another more fewer drop mirror shift".split())
RELATION_PHRASES = re.compile(r"\b(next to|left of|right of|above|over|below|under|beneath|beside|between)\b")
MARKERS = frozenset({"to", "into", "with", "be", "become", "becomes", "as"})
# a first word that is itself the new value ("enlarge the circle", "outline the square")
VERB_VALUES = {"enlarge": ("size", "large"), "grow": ("size", "large"), "shrink": ("size", "small"),
               "fill": ("fill", "solid"), "hollow": ("fill", "outline"), "outline": ("fill", "outline")}
EXTRA_WORDS = {"bigger": ("size", "large"), "larger": ("size", "large"), "huge": ("size", "large"),
               "smaller": ("size", "small"), "outline": ("fill", "outline"), "outlines": ("fill", "outline"),
               "gray": ("colour", "grey")}
SUPPORTED = ("one change to one object (its shape, colour, size or fill) or to the background, e.g. 'make the "
             "square an outline', 'turn the red star into a heart', 'make the circle in the top left big', "
             "'change the background to grey'")


@dataclass(frozen=True)
class Mention:
    """A vocabulary word of an instruction: ``kind`` is an attribute, "row", "col", "cell" (3x3
    center) or "background"."""

    kind: str
    value: object
    index: int


@dataclass(frozen=True)
class SceneEdit:
    """An instruction applied to a scene: the scene after it and what changed (``cell`` None for the
    background)."""

    source: Scene
    target: Scene
    cell: int | None
    attribute: str  # an attribute, or "background"
    old: str
    new: str


def _lexicon() -> dict[str, tuple[str, str]]:
    words: dict[str, tuple[str, str]] = {}
    for shape in SHAPES:
        words[shape] = words[PLURALS.get(shape, shape + "s")] = ("shape", shape)
    for colour in (*COLOURS, *BACKGROUNDS):
        words[colour] = ("colour", colour)
    for size in SIZES:
        for word in SIZE_WORDS[size]:
            words[word] = ("size", size)
    for fill in FILLS:
        for word in FILL_PRENOMINAL[fill]:
            words[word] = ("fill", fill)
    return words | EXTRA_WORDS


LEXICON = _lexicon()


def _position_mentions(words: list[str], grid: int) -> list[Mention]:
    """Row / column words of the grid ("top left": a row and a column). "middle" / "center", which
    name both in a 3x3 grid, take the slot the word beside them leaves ("middle left": a row), and
    alone name the center cell."""
    rows = {w: r for r, names in enumerate(ROW_WORDS[grid]) for w in names}
    cols = {w: c for c, names in enumerate(COL_WORDS[grid]) for w in names}
    found: list[Mention] = []
    for i, word in enumerate(words):
        beside = {words[j] for j in (i - 1, i + 1) if 0 <= j < len(words)}
        if word in rows and word in cols:
            if beside & (set(cols) - set(rows)):
                found.append(Mention("row", rows[word], i))
            elif beside & (set(rows) - set(cols)):
                found.append(Mention("col", cols[word], i))
            else:
                found.append(Mention("cell", (1, 1), i))
        elif word in rows:
            found.append(Mention("row", rows[word], i))
        elif word in cols:
            found.append(Mention("col", cols[word], i))
    return found


def _mentions(words: list[str], grid: int) -> list[Mention]:
    found = [Mention(*LEXICON[w], i) for i, w in enumerate(words) if w in LEXICON]
    found += [Mention("background", True, i) for i, w in enumerate(words) if w == "background"]
    return sorted(found + _position_mentions(words, grid), key=lambda m: m.index)


def _split(words: list[str], mentions: list[Mention]) -> tuple[list[Mention], list[Mention]]:
    """(reference mentions, value mentions); positions always refer (objects are never moved)."""
    positions = [m for m in mentions if m.kind in ("row", "col", "cell")]
    others = [m for m in mentions if m not in positions]
    if words and words[0] in VERB_VALUES:
        kind, value = VERB_VALUES[words[0]]
        return positions + [m for m in others if m.index != 0], [Mention(kind, value, 0)]
    for i, word in enumerate(words):
        if word in MARKERS and any(m.index < i for m in others) and any(m.index > i for m in others):
            return positions + [m for m in others if m.index < i], [m for m in others if m.index > i]
    if any(m.kind == "background" for m in others) and not any(m.kind == "shape" for m in others):
        return [m for m in others if m.kind == "background"], [m for m in others if m.kind == "colour"][-1:]
    nouns = [m for m in others if m.kind == "shape"]
    if nouns:
        noun = nouns[0]
        return positions + [m for m in others if m.index <= noun.index], [m for m in others if m.index > noun.index]
    return positions + others[:-1], others[-1:]


def _matches(obj: ShapeObject, rc: tuple[int, int], reference: list[Mention]) -> bool:
    for m in reference:
        if m.kind in ATTRIBUTES and obj.attribute(m.kind) != m.value:
            return False
        if (m.kind == "row" and rc[0] != m.value) or (m.kind == "col" and rc[1] != m.value):
            return False
        if m.kind == "cell" and rc != m.value:
            return False
    return True


def _phrase_with_cell(scene: Scene, cell: int, obj: ShapeObject) -> str:
    return f"the {noun_phrase(obj).split(' ', 1)[1]} in the {cell_words(*scene.row_col(cell), scene.grid)}"


def _find_object(scene: Scene, reference: list[Mention], values: list[Mention],
                 instruction: str) -> tuple[int, ShapeObject]:
    """The one object ``reference`` names. Of several that fit, the only one the new value would
    change is meant ("make the square an outline" when one of two squares is already outlined)."""
    objects = scene.objects()
    if not reference:
        if len(objects) == 1:
            return objects[0]
        raise DescribeError(f"Which object? {instruction!r} names none; say which, e.g. "
                            f"'{_phrase_with_cell(scene, *objects[0])}'.")
    found = [(cell, obj) for cell, obj in objects if _matches(obj, scene.row_col(cell), reference)]
    if len(found) > 1:
        changed = [(cell, obj) for cell, obj in found
                   if any(m.kind in ATTRIBUTES and obj.attribute(m.kind) != m.value for m in values)]
        found = changed if len(changed) == 1 else found
    if len(found) == 1:
        return found[0]
    seen = "; ".join(_phrase_with_cell(scene, cell, obj) for cell, obj in objects)
    if not found:
        raise DescribeError(f"No object in the image fits {instruction!r}. The image shows: {seen}.")
    which = " or ".join(f"'{_phrase_with_cell(scene, cell, obj)}'" for cell, obj in found)
    raise DescribeError(f"{len(found)} objects fit {instruction!r}; say which: {which}.")


def _value_words(attribute: str, value: str) -> str:
    if attribute == "shape":
        return _article(value)
    return FILL_PRENOMINAL[value][0] if attribute == "fill" else value


def _new_value(values: list[Mention], current: ShapeObject, instruction: str) -> tuple[str, str]:
    wanted = {(m.kind, m.value) for m in values if m.kind in ATTRIBUTES}
    attributes = sorted({kind for kind, _ in wanted})
    if any(sum(kind == a for kind, _ in wanted) > 1 for a in attributes):
        raise DescribeError(f"{instruction!r} asks for two values of one attribute; give one.")
    changes = [(kind, value) for kind, value in wanted if current.attribute(kind) != value]
    if not wanted:
        raise DescribeError(f"No new value found in {instruction!r}. Say what it should become: a shape "
                            f"({', '.join(SHAPES)}), a colour ({', '.join(COLOURS)}), small / large, or solid / "
                            "outline.")
    if not changes:
        kind, value = sorted(wanted)[0]
        raise DescribeError(f"Nothing to change: the {current.shape} is already {_value_words(kind, value)}.")
    if len(changes) > 1:
        listed = " and ".join(f"{kind} {value}" for kind, value in sorted(changes))
        raise DescribeError(f"{instruction!r} changes {len(changes)} things ({listed}); one change at a time.")
    kind, value = changes[0]
    if kind == "colour" and value not in COLOURS:
        raise DescribeError(f"Shapes are never {value} in this world; colours are {', '.join(COLOURS)}.")
    return kind, value


def _edit_background(scene: Scene, values: list[Mention], instruction: str) -> SceneEdit:
    colours = [m.value for m in values if m.kind == "colour"]
    if not colours or colours[-1] not in BACKGROUNDS:
        raise DescribeError(f"Backgrounds are {', '.join(BACKGROUNDS)}; {instruction!r} names none of them.")
    if colours[-1] == scene.background:
        raise DescribeError(f"Nothing to change: the background is already {scene.background}.")
    return SceneEdit(scene, replace(scene, background=colours[-1]), None, "background", scene.background, colours[-1])


def edit_scene(scene: Scene, instruction: str) -> SceneEdit:
    """``scene`` after ``instruction`` (module doc); ``DescribeError`` saying why when it cannot be applied."""
    words = re.findall(r"[a-z]+", instruction.lower())
    words = words[1:] if words[:1] == ["please"] else words
    if not words:
        raise DescribeError(f"Type an instruction: {SUPPORTED}.")
    unsupported = sorted(set(words) & UNSUPPORTED_WORDS)
    relation = RELATION_PHRASES.search(" ".join(words))
    if unsupported or relation:
        what = f"'{unsupported[0]}'" if unsupported else f"relations ('{relation.group(0)}')"
        raise DescribeError(f"The shapes model's instructions cannot use {what}: they make {SUPPORTED}.")
    reference, values = _split(words, _mentions(words, scene.grid))
    if any(m.kind == "background" for m in reference):
        return _edit_background(scene, values, instruction)
    cell, obj = _find_object(scene, reference, values, instruction)
    attribute, value = _new_value(values, obj, instruction)
    new_obj = replace(obj, **{attribute: value})
    if attribute == "size":  # keep the position jitter inside the free space of the new size
        slack = (1.0 - SIZE_SCALE[value]) / 2
        new_obj = replace(new_obj, dx=max(-slack, min(slack, obj.dx)), dy=max(-slack, min(slack, obj.dy)))
    cells = list(scene.cells)
    cells[cell] = new_obj
    return SceneEdit(scene, replace(scene, cells=tuple(cells)), cell, attribute, obj.attribute(attribute), value)


@dataclass(frozen=True)
class DescribedEdit:
    """An instruction applied to an image's scene, with both scenes described."""

    edit: SceneEdit
    source: CaptionResult
    target: CaptionResult


def describe_edit(image, instruction: str, classifier=None, style: DescribeStyle | None = None) -> DescribedEdit:
    """Source and target prompts of ``instruction`` on a shapes-world image (module doc)."""
    edit = edit_scene(read_scene(image, classifier), instruction)
    return DescribedEdit(edit, describe_scene(edit.source, style), describe_scene(edit.target, style))
