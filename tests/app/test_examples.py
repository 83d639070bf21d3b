"""The shipped gallery (assets/examples/shapes-sd3/): every precomputed result, read again from its PNG,
still gets the shapes classifier's verdict ``app/make_examples.py`` recorded when it chose the example;
every caption is the one those verdicts give; the masked example keeps the input outside its mask;
and the app's loader shows these results for the bundled model and tokens (masked ones only to a
caller that applies the mask)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from app.examples import OUTPUT_KEYS, load_examples, manifest_path, produced_by, read_manifest
from app.make_examples import caption_for, cell_mask, check_outputs, source_pair
from app.settings import BUNDLED_TOKENS, EXAMPLES_DIR

KIND = "shapes-sd3"


@pytest.fixture(scope="module")
def shipped():
    examples, producer = read_manifest(manifest_path(EXAMPLES_DIR, KIND))
    return examples, producer


@pytest.fixture(scope="module")
def pairs(shipped):
    return {example.name: source_pair(example.source) for example in shipped[0]}


@pytest.fixture(scope="module")
def classifier():
    from shapes.classifier import load_classifier

    return load_classifier()


def bundled_producer() -> dict:
    return produced_by("assets/shapes-sd3", hashlib.sha256(BUNDLED_TOKENS.read_bytes()).hexdigest())


def test_the_gallery_was_made_by_the_bundled_model_and_tokens(shipped):
    examples, producer = shipped
    assert producer == bundled_producer()  # otherwise the app shows inputs only
    plain = [e for e in examples if not e.is_masked]
    assert 5 <= len(plain) <= 8
    assert len({e.name for e in examples}) == len(examples)
    for example in examples:
        assert example.source["world"] == "shapes" and example.source["split"] == "val"  # held-out scenes
        assert set(example.outputs) == set(OUTPUT_KEYS) == set(example.checks)
        assert example.params == examples[0].params  # one preset for the whole gallery


def test_each_input_is_the_held_out_scene_its_source_names(shipped, pairs):
    for example in shipped[0]:
        pair = pairs[example.name]
        assert (example.source_prompt, example.target_prompt) == (pair["source_prompt"], pair["target_prompt"])
        with Image.open(example.image) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(pair["source_image"]))


def test_every_result_still_passes_the_check_it_was_shipped_with(shipped, pairs, classifier):
    for example in shipped[0]:
        images = {}
        for key, path in example.outputs.items():
            with Image.open(path) as image:
                images[key] = image.convert("RGB")
        checks = check_outputs(pairs[example.name], images, classifier)
        assert checks == example.checks, example.name
        assert any(verdict["passed"] for verdict in checks.values()), f"{example.name}: no result succeeds"
        for verdict in checks.values():
            assert verdict["passed"] == (verdict["success"] and verdict["preservation"] == 1.0)


def test_captions_say_what_the_results_show(shipped, pairs):
    contrasts = 0
    for example in shipped[0]:
        assert example.caption == caption_for(pairs[example.name], example.checks, example.mask_mode)
        passed = {key: verdict["passed"] for key, verdict in example.checks.items()}
        if all(passed.values()):
            assert "succeeds with and without tokens" in example.caption
        elif passed["with_tokens"]:
            assert example.caption.startswith("tokens needed: ") and "succeeds only with tokens" in example.caption
        else:
            assert example.caption.startswith("tokens hurt: ") and "succeeds only without tokens" in example.caption
        contrasts += not all(passed.values())
        changed = pairs[example.name]["changed"]
        assert f"{changed['from']} to {changed['to']}" in example.caption
    assert contrasts >= 1  # the gallery shows at least one edit the tokens decide


def test_the_masked_example_keeps_the_input_outside_its_mask(shipped, pairs):
    masked = [e for e in shipped[0] if e.is_masked]
    assert len(masked) == 1
    example = masked[0]
    assert example.mask_mode == "drawn" and "local edit, drawn mask" in example.caption
    pair = pairs[example.name]
    with Image.open(example.mask) as mask:
        drawn = np.asarray(mask.convert("L"))
    assert np.array_equal(drawn, np.asarray(cell_mask(pair, example.source["resolution"])))
    source = np.asarray(pair["source_image"].convert("RGB"))
    for path in example.outputs.values():
        with Image.open(path) as image:
            edited = np.asarray(image.convert("RGB"))
        outside = drawn == 0
        assert np.array_equal(edited[outside], source[outside])  # pasted back
        assert not np.array_equal(edited[~outside], source[~outside])  # and the cell did change


def test_the_app_loader_shows_the_results_and_masked_examples_only_when_asked(shipped, tmp_path):
    examples, _ = shipped
    plain = load_examples(EXAMPLES_DIR, KIND, bundled_producer(), tmp_path)
    assert [e.name for e in plain] == [e.name for e in examples if not e.is_masked]
    assert all(e.has_outputs and e.caption for e in plain)
    everything = load_examples(EXAMPLES_DIR, KIND, bundled_producer(), tmp_path, with_masks=True)
    assert [e.name for e in everything] == [e.name for e in examples]
    other = load_examples(EXAMPLES_DIR, KIND, produced_by("another-model", None), tmp_path)
    assert other and not any(e.has_outputs for e in other)  # another model: inputs only


def test_a_clicked_example_says_what_it_shows(tmp_path):
    """Picking a shipped example shows its caption (what the classifier found) in the summary line."""
    from app.controls import EditControls
    from app.handlers import select_example
    from app.service import EditorService
    from app.settings import parse_settings

    service = EditorService(parse_settings(["--temp-dir", str(tmp_path)], env={}))
    for index, example in enumerate(service.examples()):
        selection = select_example(service, index, EditControls(source_prompt="", target_prompt=""))
        assert example.caption and example.caption in selection.outcome.summary
