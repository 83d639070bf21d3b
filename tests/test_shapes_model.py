"""The bundled shapes-world model and its soft tokens: offline loading, generation, token effect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from softrepa.backbones import KINDS, SHAPES_MODEL_DIR, attach_tokens
from softrepa.tokens import load_tokens

TOKENS = SHAPES_MODEL_DIR.parent / "shapes-sd3-softrepa.safetensors"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusion3Pipeline

    assert (SHAPES_MODEL_DIR / "model_index.json").is_file(), "the bundled model is missing: make shapes"
    # the standard pipeline, offline: SD3 without T5 is loaded by passing it as None (diffusers' recipe)
    pipe = StableDiffusion3Pipeline.from_pretrained(SHAPES_MODEL_DIR, text_encoder_3=None, tokenizer_3=None,
                                                    dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe("a large red circle and a small blue star below it", num_inference_steps=4, guidance_scale=4.0,
                height=64, width=64, generator=generator, output_type="np",
                max_sequence_length=KINDS["shapes-sd3"].max_sequence_length).images


def test_bundled_model_is_small_and_generates(pipe):
    size = sum(f.stat().st_size for f in Path(SHAPES_MODEL_DIR).rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"bundled model is {size / 2**20:.1f} MB"
    images = generate(pipe)
    assert images.shape == (1, 64, 64, 3)
    assert np.isfinite(images).all() and images.std() > 0.01  # a picture, not a constant


def test_bundled_tokens_load_and_change_the_output(pipe):
    tokens = load_tokens(TOKENS, model=pipe)
    assert tokens.config.kind == "shapes-sd3"
    vanilla = generate(pipe)
    with attach_tokens(pipe, tokens):
        with_tokens = generate(pipe)
    assert np.abs(with_tokens - vanilla).max() > 1e-3
    np.testing.assert_array_equal(generate(pipe), vanilla)  # detached: the model is as before
