"""The bundled shapes world as a user gets it: the model in assets/ loads offline through the
standard diffusers pipeline and draws, and the bundled soft tokens fit it and change what it draws.

(Its accuracy and speed belong to benchmarks/shapes_alignment.py, not to assertions here.)
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from softrepa.generate import generate_images
from softrepa.models import KINDS
from softrepa.tokens import load_tokens

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MODEL_DIR = ASSETS / "shapes-sd3"
TOKENS_FILE = ASSETS / "shapes-sd3-softrepa.safetensors"
PROMPT = "a large red circle in the top left and a small blue star below it on a white background"

pytestmark = pytest.mark.skipif(not MODEL_DIR.is_dir(), reason="the bundled shapes model is not built yet")


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusion3Pipeline

    # the stock class, offline; a folder saved without T5 loads with it passed as None (diffusers'
    # documented way to run SD3 without T5), as docs/editing.md shows
    pipe = StableDiffusion3Pipeline.from_pretrained(MODEL_DIR, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)


def test_bundled_model_is_small_and_loads_offline(pipe):
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, f"assets/shapes-sd3 is {size / 2**20:.1f} MB"
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None  # built without T5
    image = pipe(PROMPT, num_inference_steps=4, guidance_scale=4.0, height=64, width=64,
                 max_sequence_length=KINDS["shapes-sd3"].max_sequence_length,
                 generator=torch.Generator().manual_seed(0)).images[0]
    pixels = _pixels(image)
    assert image.size == (64, 64) and np.isfinite(pixels).all() and pixels.std() > 1.0  # not a blank image


def test_bundled_tokens_fit_the_model_and_change_the_output(pipe):
    tokens = load_tokens(TOKENS_FILE, model=pipe)  # raises if the file does not fit this model
    assert tokens.config.kind == "shapes-sd3"
    assert sum(p.numel() for p in tokens.parameters()) < 1_000_000  # "< 1 M parameters"
    assert all(torch.isfinite(p).all() for p in tokens.parameters())
    kwargs = dict(seeds=[3], steps=6, height=64, width=64)
    off = generate_images(pipe, [PROMPT], **kwargs)[0]
    on = generate_images(pipe, [PROMPT], tokens=tokens, **kwargs)[0]
    again = generate_images(pipe, [PROMPT], **kwargs)[0]
    assert np.array_equal(_pixels(off), _pixels(again))  # the tokens were detached after the call
    assert np.abs(_pixels(on) - _pixels(off)).mean() > 0.5  # they do change the image
