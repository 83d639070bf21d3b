"""The shapes model's prompt help without a language model (shapes/describe.py): the described source
prompt is honest (its statements hold on the classifier's reading and on the true scene) and complete,
and instructions become the target scene / prompt of the world's edit pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from shapes.captions import FILL_PRENOMINAL
from shapes.classifier import predict_scenes
from shapes.describe import (DescribeError, DescribeStyle, cell_words, default_classifier, describe_edit,
                             describe_scene, describe_scene_image, edit_scene, read_scene)
from shapes.judge import score
from shapes.scenes import Scene, ShapeObject
from shapes.statements import check
from shapes.world import generate_samples, make_edit_pairs
from softrepa.tiny import clip_tokenizer

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "assets" / "examples" / "shapes-sd3").glob("*.png"))


def obj(shape, colour="red", size="small", fill="solid") -> ShapeObject:
    return ShapeObject(shape=shape, colour=colour, size=size, fill=fill)


def scene(*cells, background="black") -> Scene:
    return Scene(background=background, grid=2, cells=tuple(cells))


def labels(s: Scene) -> list:
    return [None if o is None else (o.shape, o.colour, o.size, o.fill) for o in s.cells]


# ----------------------------------------------------------------------------- describing


def test_description_is_deterministic_complete_and_in_the_grammar():
    s = scene(obj("star", "red", "large", "outline"), None, obj("circle", "orange"), obj("cross", "blue"),
              background="grey")
    result = describe_scene(s)
    assert result.text == ("a large outlined red star in the top left, a small solid orange circle in the bottom left "
                           "and a small solid blue cross in the bottom right on a grey background")
    assert result.grammar == "absolute" and result.object_cells == [0, 2, 3]
    objects = [st for st in result.statements if st["type"] == "object"]
    assert len(objects) == 3 and all(None not in st.values() for st in objects)  # every attribute said
    assert [(st["row"], st["col"]) for st in result.statements if st["type"] == "position"] == [(0, 0), (1, 0), (1, 1)]
    assert result.statements[-1] == {"type": "background", "colour": "grey"}
    assert describe_scene(s) == result
    listed = describe_scene(s, DescribeStyle(positions=False, background=False))
    assert listed.grammar == "list" and "top" not in listed.text and "background" not in listed.text
    assert check(listed.statements, s).all_hold


def test_every_example_image_is_described_honestly():
    images = [Image.open(path).convert("RGB") for path in EXAMPLES]
    assert len(images) >= 6
    scenes = predict_scenes(default_classifier(), images)
    for image, read in zip(images, scenes):
        result = describe_scene(read)
        assert describe_scene_image(image) == result.text
        sample = {"statements": result.statements, "grammar": result.grammar}
        assert score([image], [sample])["overall"]["full_prompt_acc"] == 1.0
        # complete: one object statement per object the classifier sees
        assert sum(st["type"] == "object" for st in result.statements) == len(read.objects())


def test_descriptions_of_rendered_scenes_hold_on_the_true_labels():
    samples = generate_samples(24, seed=2024, split="val")
    scenes = predict_scenes(default_classifier(), [s["image"] for s in samples])
    holds = [check(describe_scene(read).statements, Scene.from_dict(s["labels"])).all_hold
             for read, s in zip(scenes, samples)]
    assert sum(holds) >= 22  # measured: 300 / 300 (seed 2024, val); classifier errors are possible


def test_the_longest_description_fits_the_models_text_length():
    # four large outlined objects with the longest words, and a background: 49 tokens of 64
    s = scene(*[obj("triangle", "purple", "large", "outline")] * 4, background="white")
    ids = clip_tokenizer(model_max_length=64)(describe_scene(s).text).input_ids
    assert len(ids) <= 64


def test_an_image_without_shapes_is_refused_with_a_reason():
    with pytest.raises(DescribeError, match="no shapes"):
        describe_scene(scene(None, None, None, None))


# ----------------------------------------------------------------------------- instructions

PAIR = scene(obj("square", "red", "large", "solid"), obj("star", "blue", "small", "outline"),
             obj("square", "green", "small", "outline"), None, background="white")


@pytest.mark.parametrize("instruction, cell, attribute, new", [
    ("make the red square an outline", 0, "fill", "outline"),
    ("make the square an outline", 0, "fill", "outline"),  # the other square already is one
    ("Turn the star into a heart.", 1, "shape", "heart"),
    ("change the blue star to a yellow star", 1, "colour", "yellow"),
    ("make the star in the top right big", 1, "size", "large"),
    ("make the top left shape pink", 0, "colour", "pink"),
    ("enlarge the green square", 2, "size", "large"),
    ("fill the star", 1, "fill", "solid"),
    ("please make the bottom left one bigger", 2, "size", "large"),
    ("change the colour of the small square from green to cyan", 2, "colour", "cyan"),
    ("make the background grey", None, "background", "grey"),
    ("change the background to black", None, "background", "black"),
])
def test_instructions_change_one_attribute_of_one_object(instruction, cell, attribute, new):
    edit = edit_scene(PAIR, instruction)
    assert (edit.cell, edit.attribute, edit.new) == (cell, attribute, new)
    changed = [i for i, (a, b) in enumerate(zip(labels(PAIR), labels(edit.target))) if a != b]
    assert changed == ([] if cell is None else [cell])
    if cell is None:
        assert edit.target.background == new
    else:
        assert getattr(edit.target.cells[cell], attribute) == new


@pytest.mark.parametrize("instruction, reason", [
    ("make the square blue", "2 objects fit"),
    ("make the circle blue", "No object in the image fits"),
    ("make the star brown", "No new value"),
    ("make the star grey", "never grey"),
    ("make the star red and big", "changes 2 things"),
    ("make the star blue", "already blue"),
    ("add a circle in the bottom right", "cannot use 'add'"),
    ("move the star to the bottom right", "cannot use 'move'"),
    ("make the star left of the square red", "relations"),
    ("make it red", "Which object"),
    ("make the background red", "Backgrounds are"),
    ("", "Type an instruction"),
])
def test_instructions_the_world_cannot_apply_are_refused_with_a_reason(instruction, reason):
    with pytest.raises(DescribeError, match=reason):
        edit_scene(PAIR, instruction)


def test_3x3_positions_name_the_center_and_the_middle_row():
    cells = [None] * 9
    cells[4], cells[3] = obj("circle"), obj("circle", "blue")
    s = Scene(background="black", grid=3, cells=tuple(cells))
    assert edit_scene(s, "make the center circle large").cell == 4
    assert edit_scene(s, "make the circle in the middle left large").cell == 3
    assert cell_words(1, 1, 3) == "center" and cell_words(1, 0, 3) == "middle left"


def _instruction(pair: dict, form: int) -> str:
    """An instruction in words a person would use, made from the pair's ``changed`` field."""
    changed, source = pair["changed"], Scene.from_dict(pair["source_labels"])
    target, where = source.cells[changed["cell"]], cell_words(*source.row_col(changed["cell"]), source.grid)
    value = changed["to"]
    if changed["attribute"] == "fill":
        value = "an outline" if value == "outline" else FILL_PRENOMINAL[value][1]
    elif changed["attribute"] == "shape":
        value = ("an " if value[0] in "aeiou" else "a ") + value
    return (f"make the {target.shape} in the {where} {value}",
            f"change the {where} {target.colour} {target.shape} to {value}",
            f"turn the {target.size} {target.shape} in the {where} into {value}")[form % 3]


def test_instructions_from_edit_pairs_give_the_pairs_target_scene():
    for pair in make_edit_pairs(60, seed=11, render_images=False):
        edit = edit_scene(Scene.from_dict(pair["source_labels"]), _instruction(pair, pair["index"]))
        assert labels(edit.target) == labels(Scene.from_dict(pair["target_labels"]))
        assert (edit.cell, edit.attribute, edit.old, edit.new) == tuple(
            pair["changed"][k] for k in ("cell", "attribute", "from", "to"))


def test_described_edits_of_edit_pair_images_hold_on_the_target_scene():
    pairs = make_edit_pairs(12, seed=11)
    for pair in pairs:
        described = describe_edit(pair["source_image"], _instruction(pair, pair["index"]))
        truth = Scene.from_dict(pair["target_labels"])
        assert check(described.target.statements, truth).all_hold  # measured: 300 / 300 pairs
        assert not check(described.target.statements, Scene.from_dict(pair["source_labels"])).all_hold
        # the target prompt is the source prompt with the changed words replaced, nothing else
        source_words, target_words = described.source.text.split(), described.target.text.split()
        assert len(source_words) == len(target_words)
        assert sum(a != b for a, b in zip(source_words, target_words)) == 1
    assert read_scene(pairs[0]["source_image"]).background == pairs[0]["source_labels"]["background"]
