"""Checking captions' statements against a scene: does a (ground-truth or classifier-predicted)
scene satisfy each statement a caption makes?  Caption objects are bound to scene objects by a
best-assignment search, so captions that speak of relations ("a blue star below it") are checked
without any absolute slot.

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

from dataclasses import dataclass, field
from typing import Sequence

from shapes.scenes import ATTRIBUTES, Scene, ShapeObject, relation_holds


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
    slots = caption_slots(statements)
    binding = best_binding(slots, scene)
    return tally(statements, scene, slots, binding)


@dataclass
class CaptionSlots:
    """The caption objects of a list of statements, and what the statements ask of them."""

    names: list[str] = field(default_factory=list)  # "object:<id>" or "count:<statement index>:<j>"
    attributes: list[dict] = field(default_factory=list)  # per slot: attribute -> wanted value
    positions: list[list[tuple[int, int]]] = field(default_factory=list)  # per slot: cells it must be in
    relations: list[tuple[int, int, str]] = field(default_factory=list)  # (slot a, slot b, relation)
    slot_of_id: dict[int, int] = field(default_factory=dict)  # caption object id -> its slot


def caption_slots(statements: Sequence[dict]) -> CaptionSlots:
    """One slot per object statement and n per count statement ("two red stars" is two caption
    objects), with the positions and relations that statements put on them."""
    slots = CaptionSlots()
    for index, st in enumerate(statements):
        kind = st["type"]
        if kind == "object":
            slots.slot_of_id[st["id"]] = len(slots.names)
            slots.names.append(f"object:{st['id']}")
            slots.attributes.append(_attrs_of(st))
        elif kind == "count":
            for j in range(st["n"]):
                slots.names.append(f"count:{index}:{j}")
                slots.attributes.append(_attrs_of(st))
        elif kind in ("position", "relation", "background"):
            pass
        else:
            raise ValueError(f"unknown statement type {kind!r}")
    slots.positions = [[] for _ in slots.names]
    for st in statements:
        if st["type"] == "position":
            slots.positions[slots.slot_of_id[st["id"]]].append((st["row"], st["col"]))
        elif st["type"] == "relation":
            slots.relations.append((slots.slot_of_id[st["a"]], slots.slot_of_id[st["b"]], st["relation"]))
    return slots


def best_binding(slots: CaptionSlots, scene: Scene) -> list[int | None]:
    """Per slot, the index into ``scene.objects()`` of the scene object bound to it (None: the
    caption object is missing from the scene): distinct objects, the most attribute, position
    and relation atoms satisfied."""
    scene_objects = scene.objects()
    positions = [scene.row_col(cell) for cell, _ in scene_objects]
    n_slots = len(slots.names)
    # Per slot and object: the atoms of the slot's own constraints (attributes + absolute
    # position) that binding it to the object satisfies.
    unary = [
        [_attribute_hits(obj, slots.attributes[s]) + sum(positions[o] == p for p in slots.positions[s])
         for o, (_, obj) in enumerate(scene_objects)]
        for s in range(n_slots)
    ]
    unary_max = [len(slots.attributes[s]) + len(slots.positions[s]) for s in range(n_slots)]
    # Relations are scored when their later slot gets bound.
    relations_at: list[list[tuple[int, int, str]]] = [[] for _ in range(n_slots)]
    for a, b, rel in slots.relations:
        relations_at[max(a, b)].append((a, b, rel))
    # Optimistic bound of what slots s.. can still add.
    remaining_bound = [0] * (n_slots + 1)
    for s in range(n_slots - 1, -1, -1):
        remaining_bound[s] = remaining_bound[s + 1] + unary_max[s] + len(relations_at[s])
    return _branch_and_bound(unary, relations_at, positions, remaining_bound)


def _branch_and_bound(
    unary: list[list[int]],
    relations_at: list[list[tuple[int, int, str]]],
    positions: list[tuple[int, int]],
    remaining_bound: list[int],
) -> list[int | None]:
    """The best assignment of objects to slots; stops at the first perfect one (``remaining_bound[0]``
    is the score of a binding that satisfies everything)."""
    n_slots, n_objects = len(unary), len(positions)
    perfect = remaining_bound[0]
    best_score = -1
    best_assignment: list[int | None] = [None] * n_slots
    assignment: list[int | None] = [None] * n_slots
    used = [False] * n_objects

    def search(s: int, score: int) -> bool:
        nonlocal best_score, best_assignment
        if score + remaining_bound[s] <= best_score:
            return False
        if s == n_slots:
            best_score, best_assignment = score, list(assignment)
            return score == perfect  # stop: nothing can beat a perfect binding
        options: list[int | None] = [o for o in range(n_objects) if not used[o]]
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
    return best_assignment


def tally(statements: Sequence[dict], scene: Scene, slots: CaptionSlots, bound: list[int | None]) -> CheckResult:
    """Whether each statement holds under the binding ``bound`` (see best_binding), and the
    attribute / spatial / count / background atoms behind the metrics."""
    scene_objects = scene.objects()
    positions = [scene.row_col(cell) for cell, _ in scene_objects]
    result = CheckResult(statement_holds=[], binding={name: bound[s] for s, name in enumerate(slots.names)})
    for index, st in enumerate(statements):
        kind = st["type"]
        if kind == "object":
            slot = slots.slot_of_id[st["id"]]
            o = bound[slot]
            hits = 0 if o is None else _attribute_hits(scene_objects[o][1], _attrs_of(st))
            result.attribute_hits += hits
            result.attribute_total += len(slots.attributes[slot])
            result.statement_holds.append(hits == len(slots.attributes[slot]))
        elif kind == "count":
            wanted = _attrs_of(st)
            for s, (name, attrs) in enumerate(zip(slots.names, slots.attributes)):
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
            o = bound[slots.slot_of_id[st["id"]]]
            holds = o is not None and positions[o] == (st["row"], st["col"])
            result.spatial_hits += holds
            result.spatial_total += 1
            result.statement_holds.append(holds)
        elif kind == "relation":
            oa, ob = bound[slots.slot_of_id[st["a"]]], bound[slots.slot_of_id[st["b"]]]
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
