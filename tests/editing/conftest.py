"""The tiny random-weight SD3 pipeline, random soft tokens and an editor on them, shared by the editing tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editing.editor import FlowEditor
from softrepa.tiny import tiny_sd3_pipeline
from softrepa.tokens import new_tokens

SMALL = dict(steps=8, n_max=5, src_cfg=3.5, tar_cfg=7.0, seed=3)  # a few steps: each edit well under a second


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def tokens(pipe):
    torch.manual_seed(5)
    tokens = new_tokens(pipe, "sd3", num_layers=2)
    with torch.no_grad():  # bigger than the N(0, 0.02) init so on/off clearly differ on a random model
        tokens.static.normal_(std=1.0)
    return tokens


@pytest.fixture
def editor(pipe, tokens):
    editor = FlowEditor(pipe, tokens)
    yield editor
    editor.close()


def picture(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A random RGB picture (the tiny VAE has nothing better to encode)."""
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))
