"""The shapes-model build (shapes/model.py) on a few steps: its text encoding equals the
pipeline's own, rendering is worker-count independent, and a build loads back and resumes."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors import safe_open

from shapes.model import (MAX_SEQUENCE_LENGTH, ShapesModelConfig, build, build_components, encode_text, main,
                          render_training_set, tokenize)

TINY = dict(train_samples=24, vae_steps=2, vae_batch=4, decoder_steps=2, steps=3, batch=4, warmup=1,
            num_layers=1, heads=2, head_dim=8, text_width=16, checkpoint_every=1, threads=1, device="cpu")


def test_encode_text_equals_pipeline_encode_prompt():
    components = build_components(ShapesModelConfig(**TINY))
    pipe = StableDiffusion3Pipeline(text_encoder_3=None, tokenizer_3=None, **components)
    captions = ["a small red circle in the top left and a blue star below it", "", "two green squares"]
    ids = torch.from_numpy(tokenize(components["tokenizer"], captions))
    with torch.no_grad():
        embeds, pooled = encode_text(pipe, ids)
        ref_embeds, _, ref_pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None,
                                                          device=torch.device("cpu"),
                                                          do_classifier_free_guidance=False,
                                                          max_sequence_length=MAX_SEQUENCE_LENGTH)
    assert embeds.shape == ref_embeds.shape and pooled.shape == ref_pooled.shape
    torch.testing.assert_close(embeds, ref_embeds, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=1e-6)


def test_render_training_set_is_the_same_for_any_worker_count():
    config = ShapesModelConfig(**{**TINY, "train_samples": 10})
    pixels, captions, ids = render_training_set(config, chunk=3)
    pixels2, captions2, ids2 = render_training_set(ShapesModelConfig(**{**TINY, "train_samples": 10, "workers": 2}),
                                                   chunk=4)
    assert pixels.shape == (10, 3, 64, 64) and pixels.dtype == torch.uint8 and ids.shape == (10, 64)
    assert torch.equal(pixels, pixels2) and captions == captions2 and torch.equal(ids, ids2)
    assert len(set(captions)) > 1


def test_build_loads_in_the_standard_pipeline_and_resumes(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    args = ["build", "--out", str(out), "--work", str(work)] + [
        f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(args) == 0
    report = json.loads((out / "build_report.json").read_text())
    assert report["steps"] == 3 and report["device"] == "cpu"
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None)
    with safe_open(out / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # shipped in fp16
    image = pipe("a red circle", height=64, width=64, num_inference_steps=2, max_sequence_length=MAX_SEQUENCE_LENGTH,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert main(["samples", "--model", str(out), "--out", str(tmp_path / "sheet.png"), "--n", "2"]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 0
    # a rerun with more steps resumes from the checkpoint: 3 done, 2 more, same VAE
    first = torch.load(work / "denoiser.pt", weights_only=True)
    assert first["step"] == 3
    build(out, ShapesModelConfig(**{**TINY, "steps": 5}), work)
    assert json.loads((out / "build_report.json").read_text())["steps"] == 5
    assert len(json.loads(torch.load(work / "denoiser.pt", weights_only=True)["log"])) == 0  # logs every 10 steps


def _tensors(path) -> dict[str, torch.Tensor]:
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_init_from_continues_the_denoiser_and_keeps_the_vae(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    build(first, ShapesModelConfig(**TINY), tmp_path / "work1")
    config = ShapesModelConfig(**{**TINY, "seed": 1, "steps": 2, "lr_schedule": "cosine", "init_from": str(first)})
    build(second, config, tmp_path / "work2")
    vae = "vae/diffusion_pytorch_model.safetensors"
    old_vae, new_vae = _tensors(first / vae), _tensors(second / vae)
    assert all(torch.equal(old_vae[k], new_vae[k]) for k in old_vae)  # the VAE is kept as it was
    for key in ("shift_factor", "scaling_factor"):  # and so is the latent normalisation
        assert (json.loads((second / "vae/config.json").read_text())[key]
                == json.loads((first / "vae/config.json").read_text())[key])
    transformer = "transformer/diffusion_pytorch_model.safetensors"
    old, new = _tensors(first / transformer), _tensors(second / transformer)
    assert any(not torch.equal(old[k], new[k]) for k in old)  # the denoiser trained on
    report = json.loads((second / "build_report.json").read_text())
    assert report["steps"] == 2 and report["continued_from"]["steps"] == 3
    assert not (tmp_path / "work2" / "vae.pt").exists() and not (tmp_path / "work2" / "decoder.pt").exists()
    assert not any("_name_or_path" in path.read_text() for path in second.glob("**/*.json"))  # no build-machine paths


def test_bad_build_settings_are_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        ShapesModelConfig(lr_schedule="linear")
    with pytest.raises(ValueError, match="train_samples must be >= 1"):
        ShapesModelConfig(train_samples=0)
