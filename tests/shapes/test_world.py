"""Tests for the shapes world (shapes/world.py, scenes.py, rendering.py, captions.py, statements.py)
and its ground-truth evaluator (shapes/judge.py, classifier.py, classifier_training.py):
determinism, caption/label agreement, a checker that can fail, edit pairs, the resumable writer,
and the shipped classifier's held-out accuracy."""

import io
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from shapes import judge
from shapes import world
from shapes.classifier import (DEFAULT_CLASSIFIER_PATH, classifier_metadata, load_classifier, predict_logits,
                               predict_scenes, save_classifier)
from shapes.classifier_training import evaluate_classifier
from shapes.rendering import render
from shapes.scenes import (ATTRIBUTES, FILLS, GRAMMARS, SIZES, Scene, ShapeObject, ShapesWorldConfig, random_scene,
                           scene_split)
from shapes.statements import check
from shapes.world import generate_samples, make_edit_pairs
from softrepa.data import open_dataset

# Seeds that neither the shipped classifier's training (purpose "classifier", seed 0) nor its
# recorded evaluation (seed 9001) used.
HELDOUT_SEED = 424242
CONFIG = ShapesWorldConfig()


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def samples():
    train = generate_samples(200, seed=7, config=CONFIG, split="train")
    return train + generate_samples(100, seed=7, config=CONFIG, split="val")


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_generation_is_deterministic_by_seed():
    first = generate_samples(12, seed=3)
    again = generate_samples(12, seed=3)
    other = generate_samples(12, seed=4)
    assert [_png(s["image"]) for s in first] == [_png(s["image"]) for s in again]
    described = [(s["caption"], s["statements"], s["labels"]) for s in first]
    assert described == [(s["caption"], s["statements"], s["labels"]) for s in again]
    assert [s["caption"] for s in first] != [s["caption"] for s in other]
    assert [_png(s["image"]) for s in first] != [_png(s["image"]) for s in other]
    # Sample i does not depend on how many were generated before it (sharding / resuming).
    assert generate_samples(2, seed=3, start=10)[1]["caption"] == first[11]["caption"]


def test_images_match_config(samples):
    for s in samples[:20]:
        assert s["image"].mode == "RGB" and s["image"].size == (64, 64)
        n = len(Scene.from_dict(s["labels"]).objects())
        assert CONFIG.min_objects <= n <= CONFIG.max_objects


def test_every_statement_holds_on_its_own_scene(samples):
    seen_grammars, seen_types = set(), set()
    for s in samples:
        scene = Scene.from_dict(s["labels"])
        result = check(s["statements"], scene)
        assert result.all_hold, (s["caption"], s["statements"], result)
        assert result.attribute_hits == result.attribute_total > 0
        seen_grammars.add(s["grammar"])
        seen_types.update(st["type"] for st in s["statements"])
        # Every object of the scene is described (captions leave no object unmentioned).
        described = sum(st["n"] if st["type"] == "count" else st["type"] == "object" for st in s["statements"])
        assert described == len(scene.objects())
        # Short enough for a 77-token CLIP text encoder (words and punctuation are <= tokens).
        assert len(re.findall(r"\w+|[^\w\s]", s["caption"])) <= 60, s["caption"]
        json.dumps(s["statements"])  # machine-readable and storable
    assert seen_grammars == set(GRAMMARS)
    assert seen_types == {"object", "position", "relation", "count", "background"}


def test_caption_words_name_the_mentioned_attributes(samples):
    for s in samples:
        for st in s["statements"]:
            if st["type"] in ("object", "count"):
                assert st["shape"] in s["caption"] or st["shape"] == "cross" and "crosses" in s["caption"]
                if st["colour"]:
                    assert st["colour"] in s["caption"]
            elif st["type"] == "background":
                assert f"{st['colour']} background" in s["caption"]


def _unused(values, used):
    return next((v for v in values if v not in used), None)


def test_checker_rejects_a_changed_attribute(samples):
    """Change a mentioned attribute on every object that carries it, to a value the caption never
    mentions: no binding can then satisfy the statement, so the check must fail."""
    rng = random.Random(0)
    checked = 0
    for s in samples:
        scene = Scene.from_dict(s["labels"])
        objects = [st for st in s["statements"] if st["type"] in ("object", "count")]
        mentions = [(st, a) for st in objects for a in ATTRIBUTES if st[a] is not None]
        st, attribute = rng.choice(mentions)
        old = st[attribute]
        vocabulary = {"shape": CONFIG.shapes, "colour": CONFIG.colours, "size": SIZES, "fill": FILLS}
        new = _unused(vocabulary[attribute], {x[attribute] for x in objects})
        if new is None:
            continue  # e.g. both sizes mentioned; covered by the count/exact test below
        cells = [o if o is None or o.attribute(attribute) != old else replace(o, **{attribute: new}) for o in scene.cells]
        changed = replace(scene, cells=tuple(cells))
        assert sum(o is not None for o in cells) == len(scene.objects())  # only attributes changed
        assert not check(s["statements"], changed).all_hold, (s["caption"], attribute, old, new)
        checked += 1
    assert checked > 150


def test_checker_relations_counts_background_and_missing_objects():
    red_star = ShapeObject("star", "red", "small", "solid")
    blue_circle = ShapeObject("circle", "blue", "large", "outline")
    empty = [None] * 9
    left = list(empty)
    left[0], left[2] = red_star, blue_circle  # red star top left, blue circle top right
    scene = Scene("black", 3, tuple(left))
    mirrored = Scene("black", 3, tuple(left[2::-1] + left[3:]))
    statements = [
        {"type": "object", "id": 0, "shape": "star", "colour": "red", "size": None, "fill": None},
        {"type": "object", "id": 1, "shape": "circle", "colour": "blue", "size": "large", "fill": None},
        {"type": "relation", "relation": "left_of", "a": 0, "b": 1},
    ]
    assert check(statements, scene).all_hold
    result = check(statements, mirrored)
    assert result.statement_holds == [True, True, False]
    assert (result.attribute_hits, result.attribute_total, result.spatial_hits, result.spatial_total) == (5, 5, 0, 1)
    assert not check(statements + [{"type": "background", "colour": "white"}], scene).all_hold
    missing = Scene("black", 3, tuple(left[:2] + [None] + left[3:]))
    assert check(statements, missing).statement_holds == [True, False, False]
    count_two = [{"type": "count", "n": 2, "shape": "star", "colour": None, "size": None, "fill": None}]
    assert not check(count_two, scene).all_hold
    two_stars = Scene("black", 3, tuple([red_star, None, red_star] + empty[3:]))
    assert check(count_two, two_stars).all_hold
    three_stars = Scene("black", 3, tuple([red_star, red_star, red_star] + empty[3:]))
    assert not check(count_two, three_stars).all_hold  # counts are exact


def test_train_and_val_scenes_are_disjoint():
    train = generate_samples(150, seed=1, split="train")
    val = generate_samples(150, seed=1, split="val")
    train_keys = {Scene.from_dict(s["labels"]).canonical_key() for s in train}
    val_keys = {Scene.from_dict(s["labels"]).canonical_key() for s in val}
    assert not train_keys & val_keys
    assert all(scene_split(Scene.from_dict(s["labels"]), CONFIG) == "val" for s in val)


def test_edit_pairs_change_exactly_one_attribute():
    pairs = make_edit_pairs(60, seed=11)
    changed_attributes = set()
    for pair in pairs:
        source, target = Scene.from_dict(pair["source_labels"]), Scene.from_dict(pair["target_labels"])
        diffs = [
            (cell, a)
            for cell, (so, to) in enumerate(zip(source.cells, target.cells))
            if so is not None
            for a in ATTRIBUTES
            if so.attribute(a) != to.attribute(a)
        ]
        assert diffs == [(pair["changed"]["cell"], pair["changed"]["attribute"])]
        assert [(s is None) for s in source.cells] == [(t is None) for t in target.cells]
        assert source.background == target.background
        assert pair["source_prompt"] != pair["target_prompt"]
        assert check(pair["source_statements"], source).all_hold
        assert check(pair["target_statements"], target).all_hold
        differing = [(a, b) for a, b in zip(pair["source_statements"], pair["target_statements"]) if a != b]
        assert len(differing) == 1
        src, tgt = differing[0]
        attribute = pair["changed"]["attribute"]
        assert src[attribute] == pair["changed"]["from"] and tgt[attribute] == pair["changed"]["to"]
        assert {k for k in src if src[k] != tgt[k]} == {attribute}
        assert pair["source_image"].size == (64, 64)
        changed_attributes.add(attribute)
    assert changed_attributes == set(ATTRIBUTES)


def test_edit_pairs_cli(tmp_path):
    out = tmp_path / "edits.jsonl"
    assert world.main(["edits", "--out", str(out), "--n", "4", "--seed", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert (tmp_path / row["image"]).is_file() and (tmp_path / row["target_image"]).is_file()
        assert {"source_prompt", "target_prompt", "changed"} <= row.keys()
    # from the train split, written as metadata.jsonl: a training folder with hard negatives
    folder = tmp_path / "hard"
    folder.mkdir()
    assert world.main(["edits", "--out", str(folder / "metadata.jsonl"), "--n", "3", "--split", "train"]) == 0
    dataset = open_dataset(folder)
    assert len(dataset) == 3
    for record, row in zip(dataset.records, (json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines())):
        assert record.captions == (row["source_prompt"],) and record.negatives == (row["target_prompt"],)
        assert scene_split(Scene.from_dict(row["source_labels"]), ShapesWorldConfig()) == "train"


def test_dataset_writer_is_resumable(tmp_path):
    out = tmp_path / "data"
    args = ["make", "--out", str(out), "--n", "12", "--seed", "5", "--split", "val"]
    assert world.main(args) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    images = {row["image"]: (out / row["image"]).read_bytes() for row in rows}
    assert len(rows) == 12 and len(images) == 12
    assert {"image", "caption", "grammar", "labels", "statements"} <= rows[0].keys()
    expected = generate_samples(12, seed=5, split="val")
    assert [r["caption"] for r in rows] == [s["caption"] for s in expected]
    assert images[rows[3]["image"]] == _png(expected[3]["image"])
    # Simulate an interrupted run: some images and the metadata are gone.
    for row in rows[::4]:
        (out / row["image"]).unlink()
    (out / "metadata.jsonl").unlink()
    assert world.main(args) == 0
    again = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert again == rows
    assert {p.name for p in (out / "images").iterdir()} == {Path(r["image"]).name for r in rows}
    assert {r["image"]: (out / r["image"]).read_bytes() for r in again} == images
    with pytest.raises(ValueError):
        world.main(["make", "--out", str(out), "--n", "12", "--seed", "6", "--split", "val"])


def test_sample_sheet(tmp_path):
    out = tmp_path / "sheet.png"
    assert world.main(["sheet", "--out", str(out), "--n", "4"]) == 0
    assert out.stat().st_size > 0


def test_shipped_classifier_accuracy_on_heldout_renders(classifier):
    accuracy = evaluate_classifier(classifier, n=200, seed=HELDOUT_SEED, split="val", apply_augment=True)
    for attribute in ("shape", "colour", "size", "fill", "background"):
        assert accuracy[attribute] >= 0.98, accuracy


def test_score_on_ground_truth_renders(classifier):
    samples = generate_samples(200, seed=HELDOUT_SEED + 1, split="val")
    result = judge.score([s["image"] for s in samples], samples, classifier)
    assert result["overall"]["n"] == 200
    assert result["overall"]["full_prompt_acc"] >= 0.95, result
    assert set(result["per_grammar"]) == set(GRAMMARS)
    for metrics in result["per_grammar"].values():
        assert {"full_prompt_acc", "attribute_acc", "count_acc", "spatial_acc", "background_acc"} <= metrics.keys()
    assert result["per_grammar"]["count"]["count_acc"] is not None
    # Captions scored against the wrong images must do much worse: the metric can fail.
    shuffled = judge.score([s["image"] for s in samples[1:] + samples[:1]], samples, classifier)
    assert shuffled["overall"]["full_prompt_acc"] < 0.2


def test_classifier_save_load_round_trip(classifier, tmp_path):
    path = save_classifier(classifier, tmp_path / "c.safetensors", {"note": "test"})
    loaded = load_classifier(path)
    images = [s["image"] for s in generate_samples(4, seed=HELDOUT_SEED + 2)]
    a, b = predict_logits(classifier, images), predict_logits(loaded, images)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert loaded.config == classifier.config
    assert classifier_metadata(path)["note"] == "test"
    assert DEFAULT_CLASSIFIER_PATH.stat().st_size < 2 * 1024 * 1024


def test_predict_scenes_accepts_arrays_and_tensors(classifier):
    import numpy as np

    samples = generate_samples(3, seed=HELDOUT_SEED + 3)
    pil = predict_scenes(classifier, [s["image"] for s in samples])
    array = np.stack([np.asarray(s["image"]) for s in samples])
    assert predict_scenes(classifier, array) == pil
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255
    assert predict_scenes(classifier, tensor) == pil


def test_training_cli_smoke(tmp_path):
    """The training entry point runs end to end (a couple of tiny steps; the real run is ~9 CPU min)."""
    out = tmp_path / "tiny.safetensors"
    args = ["train", "--steps", "2", "--batch-size", "4", "--eval-n", "4", "--out", str(out)]
    assert judge.main(args) == 0
    model = load_classifier(out)
    assert classifier_metadata(out)["training"]["steps"] == 2
    assert len(predict_scenes(model, [render(random_scene(random.Random(1), CONFIG), 64)])) == 1


def test_prefixes_only_before_noun_phrases():
    captions = [s["caption"] for s in generate_samples(600, seed=4)]
    prefixed = [c for c in captions if c.startswith(("a picture of ", "an image of ", "a drawing of "))]
    assert prefixed and all(re.match(r"(a picture of|an image of|a drawing of) "
                                     r"(a|an|one|two|three|four|five|six|seven|eight|nine) ", c) for c in prefixed)
    assert any(c.startswith(("there ", "at ", "in ")) for c in captions)  # those bodies keep no prefix


def test_score_refuses_a_classifier_for_another_grid(classifier):
    samples = generate_samples(2, seed=HELDOUT_SEED + 3, split="val", config=ShapesWorldConfig(grid=3))
    with pytest.raises(ValueError, match="grid"):
        judge.score([s["image"] for s in samples], samples, classifier)
