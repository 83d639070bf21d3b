"""Web-like captions (shapes/web_captions.py): seeded, documented knobs, machine-readable
statements, and degradation rates that match the knobs when measured."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import shapes.web_captions as web_captions
from shapes.model import ShapesModelConfig, _render_chunk
from shapes.scenes import Scene, ShapesWorldConfig
from shapes.statements import check
from shapes.web_captions import WebCaptionConfig, degradation_rates, generate_web_samples, make_web_sample
from shapes.world import make_sample

STATEMENT_TYPES = {"object", "position", "relation", "count", "background"}


def test_seeded_and_same_image_as_the_clean_sample():
    a, b = make_web_sample(5, seed=3), make_web_sample(5, seed=3)
    assert a["caption"] == b["caption"] and a["statements"] == b["statements"]
    clean = make_sample(5, 3, ShapesWorldConfig())
    assert np.array_equal(np.asarray(a["image"]), np.asarray(clean["image"]))
    assert a["clean_caption"] == clean["caption"] and a["labels"] == clean["labels"]
    captions = {s["caption"] for s in generate_web_samples(50, seed=3, render_image=False)}
    assert captions != {s["caption"] for s in generate_web_samples(50, seed=4, render_image=False)}


def test_every_knob_is_documented_and_validated():
    for field in dataclasses.fields(WebCaptionConfig):
        assert f"``{field.name}``" in web_captions.__doc__, field.name
    with pytest.raises(ValueError, match="drop_object"):
        WebCaptionConfig(drop_object=1.5)
    with pytest.raises(ValueError, match="grammar_weights"):
        WebCaptionConfig(grammar_weights=(1.0, 0.0))
    with pytest.raises(ValueError, match="captions"):
        ShapesModelConfig(captions="alt-text")


def test_statements_are_machine_readable_and_true_of_the_described_scene():
    for sample in generate_web_samples(200, seed=0, render_image=False):
        json.dumps(sample["statements"])  # serialisable, as metadata rows are
        assert {s["type"] for s in sample["statements"]} <= STATEMENT_TYPES
        assert sample["statements"], sample["caption"]
    no_noise = WebCaptionConfig(drop_object=0.0, wrong_attribute=0.0)
    for sample in generate_web_samples(200, seed=0, web=no_noise, render_image=False):
        assert not sample["degradations"]
        assert all(check(sample["statements"], Scene.from_dict(sample["labels"])).statement_holds), sample["caption"]


def test_measured_degradation_matches_the_knobs():
    samples = generate_web_samples(1500, seed=1, render_image=False)
    rates = degradation_rates(samples)
    assert rates["wrong_attribute_rate"] == pytest.approx(0.2, abs=0.03)
    # each object dropped with p 0.35, but one object always stays described
    assert 0.25 < rates["left_out_rate"] <= 0.35
    assert rates["wrong_count_rate"] > 0.2 and rates["false_caption_rate"] > 0.3
    assert rates["web_words"] < 0.7 * rates["clean_words"]
    milder = degradation_rates(generate_web_samples(1500, seed=1, web=WebCaptionConfig(drop_object=0.1,
                                                                                        wrong_attribute=0.05),
                                                    render_image=False))
    assert milder["wrong_attribute_rate"] == pytest.approx(0.05, abs=0.02)
    assert milder["false_caption_rate"] < rates["false_caption_rate"]


def test_model_training_set_with_web_captions():
    web = ShapesModelConfig(captions="web", web_drop_object=0.5).web_config()
    assert web == WebCaptionConfig(drop_object=0.5) and ShapesModelConfig().web_config() is None
    pixels, captions, ids = _render_chunk((0, 6, 2, web))
    clean_pixels, clean_captions, _ = _render_chunk((0, 6, 2, None))
    assert np.array_equal(pixels, clean_pixels) and captions != clean_captions
    assert captions == [s["caption"] for s in generate_web_samples(6, 2, web, render_image=False)]
    assert ids.shape == (6, 64)
