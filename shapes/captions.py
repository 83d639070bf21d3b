"""Captions of shapes-world scenes in several grammars ("relation", "count", "list",
"absolute"), each emitted with the machine-readable statements it makes (the format is in
``shapes/statements.py``), so that evaluation never parses English. Captions mention only some
attributes, in varied word order and paraphrase; every statement is true of the captioned scene.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from shapes.scenes import ATTRIBUTES, GRAMMARS, RELATIONS, Scene, ShapeObject, ShapesWorldConfig, relation_holds

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
