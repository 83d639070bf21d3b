"""Generation: the Python API (tokens on/off, seeds, pre-encoded prompts) and the CLI (PNG
metadata, resuming a prompt file). Tiny random-weight SD3 saved in diffusers format."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from softrepa.cache import encode_prompts, free_text_encoders
from softrepa.generate import generate_images, main, resolve_model
from softrepa.tiny import save_tiny_pipeline, tiny_sd3_pipeline
from softrepa.tokens import file_sha256, new_tokens, save_tokens


def visible_tokens(pipe):
    tokens = new_tokens(pipe, "sd3", num_layers=2)
    with torch.no_grad():
        tokens.static.normal_(std=1.0, generator=torch.Generator().manual_seed(0))
    return tokens


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_generate_images_tokens_seeds_and_encoded_prompts():
    pipe = tiny_sd3_pipeline(0)
    prompts = ["a red image", "a cat"]
    off = generate_images(pipe, prompts, [0, 1], steps=2, max_sequence_length=8)
    assert [im.size for im in off] == [(32, 32), (32, 32)]
    tokens = visible_tokens(pipe)
    on = generate_images(pipe, prompts, [0, 1], tokens=tokens, steps=2, max_sequence_length=8)
    assert np.abs(pixels(on[0]) - pixels(off[0])).max() > 0  # tokens change the picture
    # tokens were attached for that call only; the seed fixes each image whatever the batching
    again = generate_images(pipe, prompts[::-1], [1, 0], steps=2, max_sequence_length=8, batch_size=1)
    assert np.array_equal(pixels(again[1]), pixels(off[0]))
    assert np.abs(pixels(off[0]) - pixels(off[1])).max() > 0
    # pre-encoded prompts work after the text encoders are gone (the trainer's validation)
    encoded = encode_prompts(pipe, prompts, "cpu", negative_prompt="", max_sequence_length=8)
    free_text_encoders(pipe)
    assert pipe.text_encoder is None
    from_embeds = generate_images(pipe, prompts, [0, 1], steps=2, encoded=encoded, kind="sd3")
    assert np.array_equal(pixels(from_embeds[0]), pixels(off[0]))
    with pytest.raises(ValueError, match="seeds"):
        generate_images(pipe, prompts, [0, 1, 2], encoded=encoded, kind="sd3")


def test_cli_writes_metadata_and_resumes(tmp_path, capsys):
    model = save_tiny_pipeline("sd3", tmp_path / "tiny-sd3")
    assert resolve_model(str(model)) == (str(model), "sd3")  # the kind is read off model_index.json
    tokens_file = save_tokens(visible_tokens(tiny_sd3_pipeline(0)), tmp_path / "tokens.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red image\na blue image\n")
    common = ["--model", str(model), "--prompts", str(prompts), "--steps", "2", "--cfg", "3.0",
              "--max-sequence-length", "8", "--device", "cpu"]

    out_on, out_off = tmp_path / "on", tmp_path / "off"
    assert main(common + ["--tokens", str(tokens_file), "--seeds", "7", "--output", str(out_on)]) == 0
    files = sorted(p.name for p in out_on.iterdir())
    assert files == ["00000-s7.png", "00001-s7.png"]
    meta = Image.open(out_on / "00001-s7.png").text
    assert meta["prompt"] == "a blue image" and meta["seed"] == "7" and meta["steps"] == "2"
    assert meta["cfg"] == "3.0" and meta["kind"] == "sd3" and meta["tokens_sha256"] == file_sha256(tokens_file)
    assert json.loads(meta["parameters"])["model"] == str(model)

    # resume: existing images are skipped (not rewritten), new prompts are made
    first = (out_on / "00000-s7.png").stat().st_mtime_ns
    prompts.write_text("a red image\na blue image\na green image\n")
    capsys.readouterr()
    assert main(common + ["--tokens", str(tokens_file), "--seeds", "7", "--output", str(out_on)]) == 0
    assert "2 already there, 1 to make" in capsys.readouterr().out
    assert (out_on / "00000-s7.png").stat().st_mtime_ns == first
    assert (out_on / "00002-s7.png").is_file()

    # tokens on != off for the same prompt and seed; the base model is marked as such
    assert main(common + ["--seeds", "7", "--output", str(out_off)]) == 0
    off = Image.open(out_off / "00000-s7.png")
    assert off.text["tokens"] == "none"
    assert np.abs(pixels(off) - pixels(Image.open(out_on / "00000-s7.png"))).max() > 0

    assert main(["--model", str(model), "--output", str(tmp_path / "x")]) == 2  # no prompts: clear error
    assert "no prompts" in capsys.readouterr().err
