"""The tiny random-weight SD3 pipeline, random soft tokens and an editor on them, shared by the editing tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editing.editor import FlowEditor
from softrepa.tiny import tiny_sd3_pipeline
from softrepa.tokens import new_tokens

REPO_ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel (64 px images, patch 16, 2 layers), the shapes model's CLIPTokenizer and
    a PIL CLIPImageProcessor (size 64, crop 64), saved together: the layout of a real CLIP folder."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("tiny-clip-scorer")
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPTokenizer.from_pretrained(REPO_ROOT / "assets/shapes-sd3/tokenizer").save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(directory)
    return directory
