"""The API layer (``app/api.py``) without a server: describe, instruct, replay (checked like typed
values), edit again from a result PNG, and the round trip replay -> edit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app import api
from app.endpoints import replayed_settings
from app.prompt_help import InstructionResult
from app.testing import fast_controls, tiny_app_service
from editing.editor import METADATA_KEY, read_png_metadata
from softrepa.images import write_png

EXAMPLE = "assets/examples/shapes-sd3/shapes-01-shape.png"  # a bundled shapes-world picture


def message(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.message


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # the shapes kind: its describer and instruction helper need no model (the tiny SD3 pipeline edits)
    _, service = tiny_app_service(tmp_path_factory.mktemp("api"), kind="shapes-sd3")
    service.load()
    return service


@pytest.fixture(scope="module")
def result(service, tmp_path_factory) -> Path:
    """A result PNG of the app: 32x48 random picture, a drawn mask over its left half."""
    folder = tmp_path_factory.mktemp("api-result")
    picture = folder / "picture.png"
    Image.fromarray((np.random.RandomState(4).rand(32, 48, 3) * 255).astype(np.uint8)).save(picture)
    mask = np.zeros((32, 48), np.uint8)
    mask[:, :24] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    outcome = api.edit(service, str(picture), fast_controls(seed=9, mask_mode="drawn"), session="api",
                       mask=str(folder / "mask.png"))
    return Path(outcome.final.path)


def tampered(result: Path, folder: Path, name: str, **params) -> Path:
    """``result``'s PNG with some of its metadata's parameters replaced."""
    metadata = read_png_metadata(result)
    metadata["params"].update(params)
    return write_png(Image.open(result).convert("RGB"), folder / name, metadata, key=METADATA_KEY, layout="json")


@pytest.mark.parametrize("params, expected", [
    (dict(steps="many"), "Steps (T) must be a whole number, got 'many'."),
    (dict(n_max=999), "Edit strength (n_max): n_max is 999 but there are only 6 steps (T)"),
    (dict(tar_cfg=1e9), "Target guidance must be between 0 and 30, got 1e+09."),
    (dict(seed=-5), "Seed: seed must be between 0 and"),
    (dict(tar_cfg=float("nan")), "Target guidance: tar_cfg must be a finite number >= 0, got nan"),
], ids=["steps-text", "n_max-999", "tar_cfg-1e9", "seed-negative", "tar_cfg-nan"])
def test_a_tampered_png_replays_to_a_message_naming_the_field(service, result, tmp_path, caplog, params, expected):
    png = tampered(result, tmp_path, "tampered.png", **params)
    with caplog.at_level(logging.DEBUG), pytest.raises(gr.Error) as excinfo:
        api.replay(service, str(png))
    text = message(excinfo)
    assert text.startswith("Replay a result: its metadata holds a value this app cannot use.") and expected in text
    assert text.endswith("Nothing was changed.")
    assert not [record for record in caplog.records if record.exc_info], "a person's mistake logged a traceback"


def test_replay_then_edit_reproduces_the_result_bit_for_bit(service, result):
    replayed = api.replay(service, str(result))
    assert replayed.controls.mask_mode == "drawn" and replayed.image is not None and replayed.mask is not None
    settings = replayed_settings(replayed.controls)  # what /replay returns: /edit's keyword arguments
    assert settings["seed"] == 9 and settings["steps"] == 6 and "variations" not in settings
    again = api.edit(service, replayed.image, fast_controls(**settings), session="api", mask=replayed.mask)
    assert np.array_equal(np.asarray(Image.open(again.final.path)), np.asarray(Image.open(result)))


def test_edit_again_from_a_png_keeps_its_settings_mask_and_parent(service, result):
    first = read_png_metadata(result)
    outcome = api.edit_again(service, str(result), {"target_prompt": "a green circle on a white background",
                                                    "n_max": 2})
    used = read_png_metadata(outcome.final.path)
    assert used["source_prompt"] == first["target_prompt"] and used["target_prompt"].startswith("a green circle")
    assert used["params"] == {**first["params"], "n_max": 2}  # left out: the result's own; given: changed
    assert used["mask"]["mode"] == "given" and outcome.details["mask"]["coverage"] == pytest.approx(0.5)
    parent = outcome.details["parent"]
    assert parent == used["app"]["parent"] and parent["file"] == result.name and parent["seed"] == 9
    assert parent["key"] == first["app"]["key"]
    # the result became the source image, pixel for pixel
    assert np.array_equal(np.asarray(Image.open(outcome.source_path)), np.asarray(Image.open(result).convert("RGB")))
    with pytest.raises(gr.Error) as excinfo:
        api.edit_again(service, EXAMPLE, {"target_prompt": "a circle"})
    assert message(excinfo) == ("Result PNG: this PNG was not written by softrepa-edit: no 'softrepa_edit' "
                                "metadata.")


def test_describe_and_instruct_on_the_shapes_model(service):
    described = api.describe(service, EXAMPLE)
    assert described.source_prompt.endswith("on a white background") and "shapes classifier" in described.note
    written = api.instruct(service, "make the star red", described.source_prompt, EXAMPLE)
    assert written.ok and "'blue' -> 'red'" in written.message and api.refuse_unless_valid(written) is written
    with pytest.raises(gr.Error) as excinfo:
        api.instruct(service, "   ", described.source_prompt, EXAMPLE)
    assert message(excinfo).startswith("The instruction is empty: type what to change")
    with pytest.raises(gr.Error) as excinfo:
        api.describe(service, None)
    assert message(excinfo) == "Source image: there is no image to describe; upload one."
    with pytest.raises(gr.Error) as excinfo:
        api.describe(service, __file__)
    assert message(excinfo).startswith("Source image: ")  # the image reader's words, headed by the control


def test_a_refused_target_is_an_error_with_its_reason():
    refused = InstructionResult("a red cat on a blue sofa", "a cat on a sofa", False,
                                ["attempt 1: Not one change: two spans differ."])
    with pytest.raises(Exception) as excinfo:
        api.refuse_unless_valid(refused)
    assert str(excinfo.value) == ("Instruction: refused, the proposed target 'a red cat on a blue sofa' is not one "
                                  "change of the source prompt. attempt 1: Not one change: two spans differ.")


def test_an_app_without_helpers_says_which_flag_gives_one(tmp_path):
    _, plain = tiny_app_service(tmp_path, kind="sd3")
    with pytest.raises(gr.Error, match=r"no describer \(start it with --captioner MODEL\)"):
        api.describe(plain, EXAMPLE)
    with pytest.raises(gr.Error, match=r"no instruction helper \(start it with --rewriter MODEL\)"):
        api.instruct(plain, "make it red", "a cat")


def test_summaries_are_the_first_paragraph_of_each_action():
    assert api.summary(api.compare) == "The same edit (same seed, same mask) without and with soft tokens."
    assert json.dumps([api.summary(action) for action in (api.edit, api.describe, api.instruct, api.replay,
                                                           api.edit_again)]).count("\n") == 0


def test_a_prompt_that_is_not_text_is_refused_naming_its_control(service, tmp_path):
    # a JSON "\ud800" escape (API, PNG metadata) is a string no tokenizer reads: it was an internal error
    picture = tmp_path / "picture.png"
    Image.new("RGB", (32, 32)).save(picture)
    with pytest.raises(gr.Error) as excinfo:
        api.edit(service, str(picture), fast_controls(source_prompt="a red \ud800 circle"))
    assert message(excinfo) == ("The source prompt holds '\\ud800', half of a UTF-16 pair, which is not text: send "
                                "the prompt as UTF-8 text.")

