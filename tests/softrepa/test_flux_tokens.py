"""FLUX soft tokens (softrepa.flux's design): off = bitwise vanilla, on = the block loop written out
by hand with the tokens prepended and identity rotary rows, time bins on the 0..1000 scale, the
training adapter, and refusals across kinds. Tiny FLUX transformers built from configs."""

from __future__ import annotations

import pytest
import torch

from softrepa.flux import FluxDenoiser, pack_latents, unpack_latents
from softrepa.hooks import attach_tokens
from softrepa.models import KINDS, check_compatible, kind_of_pipeline, load_pipeline, resolve_model
from softrepa.tokens import SoftTokens, new_tokens, save_tokens, timestep_bins, tokens_config_for

SIZE = 8  # latent height and width: 4 x 4 = 16 packed image tokens
TEXT = 6  # text tokens


def flux_transformer(guidance_embeds: bool = True, num_layers: int = 3, seed: int = 0):
    """FluxTransformer2DModel at toy size: 3 double + 2 single blocks, 2 heads x 16 (rotary 4 + 6 + 6)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                  pooled_projection_dim=20, guidance_embeds=guidance_embeds,
                                  axes_dims_rope=(4, 6, 6)).eval()


@pytest.fixture(scope="module")
def dev():
    return flux_transformer(guidance_embeds=True)


def flux_tokens(model, kind="flux-dev", seed=1, **overrides) -> SoftTokens:
    torch.manual_seed(seed)
    tokens = new_tokens(model, kind, **{"num_layers": 2, **overrides})
    with torch.no_grad():  # large, so any mistake shows
        tokens.static.normal_(std=1.0)
        tokens.time.weight.normal_(std=1.0)
    return tokens


def flux_inputs(model, batch=2, sigma=None, seed=0) -> dict:
    """A FluxPipeline-style call: packed latents, sigma in 0..1, txt_ids zeros, img_ids (0, row, col)."""
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, SIZE, SIZE, generator=g)  # (B, C, h, w)
    inputs = dict(hidden_states=pack_latents(latents),  # (B, 16, 16)
                  encoder_hidden_states=torch.randn(batch, TEXT, 24, generator=g),
                  pooled_projections=torch.randn(batch, 20, generator=g),
                  timestep=torch.full((batch,), 0.5) if sigma is None else sigma,
                  txt_ids=torch.zeros(TEXT, 3),
                  img_ids=FluxPipeline._prepare_latent_image_ids(batch, SIZE // 2, SIZE // 2, "cpu", torch.float32),
                  return_dict=False)
    if model.config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def flux_reference(model, tokens: SoftTokens, hidden_states, encoder_hidden_states, pooled_projections, timestep,
                   txt_ids, img_ids, guidance=None, return_dict=False):
    """The FLUX forward written out with the tokens: [s(k, t); text] at the first L double blocks with
    identity rotary rows (cos 1, sin 0) in front, the m outputs dropped; single blocks untouched."""
    m, L, d = tokens.config.num_tokens, tokens.config.num_layers, tokens.config.width
    t = timestep * 1000
    image = model.x_embedder(hidden_states)
    temb = (model.time_text_embed(t, pooled_projections) if guidance is None
            else model.time_text_embed(t, guidance * 1000, pooled_projections))
    text = model.context_embedder(encoder_hidden_states)
    cos, sin = model.pos_embed(torch.cat([txt_ids, img_ids]))  # (n + N, head_dim) each
    widened = (torch.cat([torch.ones(m, cos.shape[1]), cos]), torch.cat([torch.zeros(m, sin.shape[1]), sin]))
    bins = timestep_bins(torch.round(t.double(), decimals=3), tokens.config.time_bins)  # (B,)
    for k, block in enumerate(model.transformer_blocks):
        if k < L:
            s = tokens.static[k] + tokens.time.weight[bins][:, None, k * d:(k + 1) * d]  # (B, m, d)
            text, image = block(hidden_states=image, encoder_hidden_states=torch.cat([s, text], dim=1), temb=temb,
                                image_rotary_emb=widened)
            text = text[:, m:]
        else:
            text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=(cos, sin))
    for block in model.single_transformer_blocks:
        text, image = block(hidden_states=image, encoder_hidden_states=text, temb=temb, image_rotary_emb=(cos, sin))
    return model.proj_out(model.norm_out(image, temb))


# ----------------------------------------------------------------------------- hooks


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_off_and_detached_are_bitwise_vanilla(guidance_embeds):
    model = flux_transformer(guidance_embeds)
    kind = "flux-dev" if guidance_embeds else "flux-schnell"
    inputs = flux_inputs(model)
    with torch.no_grad():
        vanilla = model(**inputs)[0]
        attached = attach_tokens(model, flux_tokens(model, kind))
        on = model(**inputs)[0]
        with attached.switch(False):
            off = model(**inputs)[0]
        attached.detach()
        after = model(**inputs)[0]
    assert (on - vanilla).abs().max() > 1e-3
    assert torch.equal(off, vanilla) and torch.equal(after, vanilla)


@pytest.mark.parametrize("num_layers", [1, 3])  # 3 = every double block
def test_tokens_on_match_the_written_out_forward(dev, num_layers):
    tokens = flux_tokens(dev, num_layers=num_layers)
    inputs = flux_inputs(dev, batch=3, sigma=torch.tensor([0.0, 0.4567, 1.0]))
    with torch.no_grad():
        with attach_tokens(dev, tokens):
            hooked = dev(**inputs)[0]
        reference = flux_reference(dev, tokens, **inputs)
    torch.testing.assert_close(hooked, reference, rtol=1e-6, atol=1e-6)


def test_time_bins_use_the_0_to_1000_scale(dev):
    """FluxPipeline passes sigma = t / 1000; the bins are SD3's floor(t) * bins // 1000, per element."""
    tokens = flux_tokens(dev)
    seen = []
    tokens.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    t = torch.tensor([0.0, 9.0, 10.0, 15.0, 290.0, 999.0, 1000.0])  # 290 / 1000 * 1000 != 290 in float32
    with torch.no_grad(), attach_tokens(dev, tokens):
        dev(**flux_inputs(dev, batch=len(t), sigma=t / 1000))
    assert len(seen) == tokens.config.num_layers
    assert timestep_bins(seen[0], 100).tolist() == [0, 0, 1, 1, 29, 99, 99]


def test_only_tokens_get_gradients():
    model = flux_transformer().requires_grad_(False)  # frozen, as the trainer's
    tokens = flux_tokens(model)
    with attach_tokens(model, tokens):
        model(**flux_inputs(model))[0].pow(2).mean().backward()
    assert tokens.static.grad is not None and tokens.static.grad.abs().sum() > 0
    assert tokens.time.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_an_attention_mask_is_refused(dev):
    inputs = flux_inputs(dev)
    inputs["joint_attention_kwargs"] = {"attention_mask": torch.ones(2, 1, 1, TEXT + 16, dtype=torch.bool)}
    with attach_tokens(dev, flux_tokens(dev)), pytest.raises(NotImplementedError, match="attention_mask"):
        dev(**inputs)


# ----------------------------------------------------------------------------- kinds and refusals


def test_kinds_and_token_config():
    dev, schnell = KINDS["flux-dev"], KINDS["flux-schnell"]
    assert (dev.arch, dev.pipeline_class, dev.steps, dev.cfg, dev.max_sequence_length) == ("flux", "FluxPipeline",
                                                                                           28, 3.5, 512)
    assert (schnell.steps, schnell.cfg, schnell.max_sequence_length, schnell.guidance_embeds) == (4, 0.0, 256, False)
    model = flux_transformer(num_layers=5)
    config = tokens_config_for(model, "flux-dev")
    assert (config.num_tokens, config.num_layers, config.width) == (4, 5, 32)  # width = heads x head_dim


def test_tokens_of_another_kind_are_refused_naming_both():
    dev_model, schnell_model = flux_transformer(True), flux_transformer(False)
    dev_tokens = flux_tokens(dev_model, "flux-dev")
    with pytest.raises(ValueError, match=r"kind 'flux-dev'.*no guidance embedding.*kind flux-schnell"):
        check_compatible(dev_tokens.config, schnell_model)
    from softrepa.tiny import tiny_sd3_transformer

    sd3 = tiny_sd3_transformer()
    with pytest.raises(ValueError, match=r"kind 'flux-dev' \(FluxTransformer2DModel.*SD3Transformer2DModel "
                                         r"\(kind sd3 / .*sd3.5-large"):
        attach_tokens(sd3, dev_tokens)
    sd3_tokens = new_tokens(sd3, "sd3", num_layers=2)
    with pytest.raises(ValueError, match=r"kind 'sd3' \(SD3Transformer2DModel.*FluxTransformer2DModel "
                                         r"\(kind flux-dev\)"):
        check_compatible(sd3_tokens.config, dev_model)
    with pytest.raises(ValueError, match="only 3 blocks"):
        check_compatible(flux_tokens(flux_transformer(num_layers=5), num_layers=4).config, flux_transformer())


def test_flux_without_t5_is_refused():
    with pytest.raises(ValueError, match="cannot be loaded without T5"):
        load_pipeline("unused", "flux-dev", without_t5=True)


def test_a_flux_folder_resolves_to_dev_or_schnell(tmp_path):
    import json

    for guidance, kind in ((True, "flux-dev"), (False, "flux-schnell")):
        folder = tmp_path / kind
        (folder / "transformer").mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        (folder / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": guidance}))
        assert resolve_model(str(folder)) == (str(folder), kind)


def test_info_shows_a_flux_token_file(tmp_path, capsys, dev):
    from softrepa.tokens import main as tokens_main

    path = save_tokens(flux_tokens(dev), tmp_path / "flux.safetensors")
    assert tokens_main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "kind: flux-dev" in out and "num_tokens: 4" in out and "num_layers: 2" in out and "width: 32" in out
    assert "arch: flux (FluxTransformer2DModel): prepended to the text stream of the first L double-stream" in out


# ----------------------------------------------------------------------------- training adapter


def test_pack_unpack_match_flux_pipeline():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, SIZE, SIZE)
    packed = pack_latents(x)
    assert torch.equal(packed, FluxPipeline._pack_latents(x, 2, 4, SIZE, SIZE))
    assert torch.equal(unpack_latents(packed, SIZE, SIZE), FluxPipeline._unpack_latents(packed, SIZE * 8, SIZE * 8, 8))


def test_flux_denoiser_is_the_pipeline_call_on_unpacked_latents(dev):
    """The adapter the trainer scores pairs with = FluxPipeline's transformer call, unpacked."""
    inputs = flux_inputs(dev, batch=2, sigma=torch.tensor([0.25, 0.25]))
    x_t = unpack_latents(inputs["hidden_states"], SIZE, SIZE)
    with torch.no_grad(), attach_tokens(dev, flux_tokens(dev)):
        direct = dev(**inputs)[0]
        adapted = FluxDenoiser(dev, guidance=3.5)(hidden_states=x_t, timestep=torch.tensor([250.0, 250.0]),
                                                  encoder_hidden_states=inputs["encoder_hidden_states"],
                                                  pooled_projections=inputs["pooled_projections"])[0]
    torch.testing.assert_close(adapted, unpack_latents(direct, SIZE, SIZE), rtol=0, atol=0)
    with pytest.raises(ValueError, match="guidance-distilled"):
        FluxDenoiser(dev, guidance=None)


def bare_flux_pipeline(transformer):
    """A FluxPipeline holding only a transformer and a scheduler (enough to name its kind)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def test_kind_of_a_flux_pipeline_follows_its_guidance_embedding():
    assert kind_of_pipeline(bare_flux_pipeline(flux_transformer(True))) == "flux-dev"
    assert kind_of_pipeline(bare_flux_pipeline(flux_transformer(False))) == "flux-schnell"


@pytest.mark.parametrize("kind", ["flux-dev", "flux-schnell"])
def test_one_pair_loss_step_reaches_the_tokens(kind):
    """The trainer's pieces for FLUX (softrepa.train._prepare_model): FluxDenoiser + flow matching,
    scored by softrepa.pairs with its SD3 call convention; one contrastive step moves the tokens."""
    from softrepa.flux import PAIR_CALL, flux_objective, training_guidance
    from softrepa.loss import LossConfig
    from softrepa.pairs import PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward

    model = flux_transformer(guidance_embeds=kind == "flux-dev").requires_grad_(False)
    tokens = flux_tokens(model, kind)
    g = torch.Generator().manual_seed(0)
    batch = PairBatch(latents=torch.randn(2, 4, SIZE, SIZE, generator=g),
                      text={"prompt_embeds": torch.randn(2, TEXT, 24, generator=g),
                            "pooled_prompt_embeds": torch.randn(2, 20, generator=g)})
    objective = flux_objective()
    noise = draw_noise(batch.latents, objective, torch.Generator().manual_seed(1))
    guidance = training_guidance(kind, model)
    assert guidance == (3.5 if kind == "flux-dev" else None)  # the kind's default; schnell has no embedding
    scorer = PairScorer(FluxDenoiser(model, guidance), PAIR_CALL, objective, batch, noise)
    with attach_tokens(model, tokens):
        out = pair_loss_backward(scorer, make_loss_fn(LossConfig(tau=1.0), noise, None), pair_chunk=3)
    assert torch.isfinite(out.loss) and tokens.static.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- the tiny FLUX pipeline


@pytest.fixture(scope="module")
def tiny_dev():
    from softrepa.tiny import tiny_pipeline

    return tiny_pipeline("flux-dev")


def test_generate_with_tokens_on_and_off(tiny_dev):
    from softrepa.generate import generate_images

    tokens = new_tokens(tiny_dev, "flux-dev", num_layers=2)
    with torch.no_grad():
        tokens.static.normal_(std=1.0)

    def run(with_tokens=None):
        return generate_images(tiny_dev, ["a red circle"], seeds=0, tokens=with_tokens, steps=2, height=32, width=32)[0]

    import numpy as np

    vanilla, on = np.asarray(run()), np.asarray(run(tokens))
    assert np.array_equal(np.asarray(run()), vanilla)  # generate_images detached them again
    assert np.abs(on.astype(int) - vanilla.astype(int)).max() > 0


def test_a_few_training_steps_on_tiny_flux(tmp_path, tiny_dev):
    from softrepa.train import train
    from tests.softrepa.test_train import base_config, write_colour_folder

    before = {k: v.clone() for k, v in tiny_dev.transformer.state_dict().items()}
    config = base_config(tmp_path, write_colour_folder(tmp_path / "colours"), model="tiny-flux", kind="flux-dev",
                         max_steps=2, checkpoint_every=100, validate_every=100, free_text_encoders=False)
    result = train(config, pipe=tiny_dev)
    assert result.step == 2 and result.final_path.is_file()
    assert (result.tokens.config.kind, result.tokens.config.width) == ("flux-dev", 32)
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history if "loss" in row)
    for key, value in tiny_dev.transformer.state_dict().items():  # frozen
        assert torch.equal(value, before[key]), key


def test_train_and_generate_command_lines_on_a_flux_folder(tmp_path, capsys):
    """python -m softrepa.train / softrepa.generate / softrepa.tokens info on a saved tiny FLUX.1-dev."""
    from softrepa.generate import main as generate_main
    from softrepa.tiny import save_tiny_pipeline
    from softrepa.tokens import main as tokens_main
    from softrepa.train import main as train_main
    from tests.softrepa.test_train import write_colour_folder

    model = save_tiny_pipeline("flux-dev", tmp_path / "model")
    data = write_colour_folder(tmp_path / "colours")
    run = tmp_path / "run"
    assert train_main(["--model", str(model), "--data", str(data), "--output", str(run), "--cache-dir",
                       str(tmp_path / "cache"), "--resolution", "16", "--max-sequence-length", "8", "--batch-size",
                       "2", "--max-steps", "2", "--num-layers", "2", "--lr", "1e-2", "--tau", "1.0",
                       "--checkpoint-every", "100", "--validate-every", "2", "--val-items", "1",
                       "--validation-prompts", "a red image", "--val-steps", "2", "--val-image-size", "16"]) == 0
    assert (run / "tokens-final.safetensors").is_file() and (run / "samples" / "step-00000002.png").is_file()
    assert tokens_main(["info", str(run / "tokens-final.safetensors")]) == 0
    assert "kind: flux-dev" in capsys.readouterr().out
    assert generate_main(["--model", str(model), "--tokens", str(run / "tokens-final.safetensors"), "--prompt",
                          "a red image", "--steps", "2", "--height", "16", "--width", "16",
                          "--output", str(tmp_path / "images")]) == 0
    assert (tmp_path / "images" / "00000-s0.png").is_file()
