"""FlowEdit on FLUX.1 (``editing.flux``) on tiny FLUX.1-dev / -schnell pipelines: the loop against a
plain reference written here from FlowEdit's FLUX algorithm and diffusers' own FluxPipeline helpers,
packing, the schedule against FluxPipeline's, guidance batching, the editor's caches and masks,
presets and ``python -m editing`` on tiny FLUX and SD3.5 folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps
from PIL import Image

from editing import cli
from editing.editor import FlowEditor, read_png_metadata
from editing.flowedit import FAMILIES, FlowEditParams, ParameterError, family_of
from editing.flux import FluxFamily, flux_schedule
from editing.masks import AutoMask
from editing.presets import DEFAULT_PRESETS, PRESETS, default_preset_name, get_preset
from softrepa.kinds import KINDS
from softrepa.tiny import REPO_ROOT, save_tiny_pipeline, tiny_flux_pipeline
from softrepa.tokens import new_tokens

EXAMPLE = REPO_ROOT / "assets" / "examples" / "shapes-sd3" / "shapes-01-shape.png"  # the README's first example
SMALL = dict(steps=8, n_max=5, src_cfg=1.5, tar_cfg=5.5, seed=3)
SEQ = 32  # T5 tokens: the tiny tests need no more than FLUX's 512


@pytest.fixture(scope="module")
def pipes():
    return {variant: tiny_flux_pipeline(variant=variant) for variant in ("flux-dev", "flux-schnell")}


def flux_tokens(pipe):
    """Random FLUX soft tokens (softrepa's FLUX design), larger than their init so on / off differ."""
    torch.manual_seed(5)
    tokens = new_tokens(pipe, "flux-dev" if pipe.transformer.config.guidance_embeds else "flux-schnell",
                        num_layers=2)
    with torch.no_grad():
        tokens.static.normal_(std=1.0)
    return tokens


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def picture(seed: int = 0, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


# ----------------------------------------------------------------------------- reference


def reference_flux_flowedit(pipe, image, src: str, tar: str, p: FlowEditParams, mask=None) -> torch.Tensor:
    """FlowEdit's FLUX loop written out on packed latents with FluxPipeline's own helpers: one
    transformer call on [z_src, z_tar] per step and sample, each item with its branch's guidance.
    Noise: drawn on the (1, C, h, w) grid from one generator, then packed (the library's convention).
    Returns the result unpacked, (1, C, h, w)."""
    vae, model = pipe.vae, pipe.transformer
    x = torch.tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
    latents = (vae.encode(x).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor  # (1, C, h, w)
    _, c, h, w = latents.shape
    x_src = FluxPipeline._pack_latents(latents, 1, c, h, w)  # (1, hw/4, 4C)
    img_ids = FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)
    m = None if mask is None else FluxPipeline._pack_latents(mask.expand(1, c, h, w), 1, c, h, w)
    (e_src, p_src, txt_ids), (e_tar, p_tar, _) = (pipe.encode_prompt(text, None, max_sequence_length=SEQ)
                                                  for text in (src, tar))
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    config = scheduler.config
    mu = calculate_shift(x_src.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    ts, _ = retrieve_timesteps(scheduler, p.steps, "cpu", sigmas=np.linspace(1.0, 1 / p.steps, p.steps), mu=mu)
    sig = scheduler.sigmas
    dev = model.config.guidance_embeds

    def v(zs, embeds, pooled, scales, t):  # one batched call; the velocities in order
        out = model(hidden_states=torch.cat(zs), timestep=t.expand(len(zs)) / 1000,
                    guidance=torch.tensor(scales, dtype=torch.float32) if dev else None,
                    pooled_projections=torch.cat(pooled), encoder_hidden_states=torch.cat(embeds),
                    txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.chunk(len(zs))

    def noise():
        return FluxPipeline._pack_latents(torch.randn((1, c, h, w), generator=g), 1, c, h, w)

    g = torch.Generator().manual_seed(p.seed)
    T = p.steps
    z = x_src.clone()
    x_tar = n_plain = None
    for i in range(T):
        if T - i > p.n_max:
            continue
        if T - i > p.n_min:
            dv = torch.zeros_like(x_src)
            for _ in range(p.n_avg):
                n = noise()
                zs = (1 - sig[i]) * x_src + sig[i] * n
                zt = z + zs - x_src
                vs, vt = v([zs, zt], [e_src, e_tar], [p_src, p_tar], [p.src_cfg, p.tar_cfg], ts[i])
                dv += (vt - vs) / p.n_avg
            z = z + (sig[i + 1] - sig[i]) * (dv if m is None else m * dv)
        else:
            if x_tar is None:
                n_plain = noise()
                x_tar = z + (1 - sig[i]) * x_src + sig[i] * n_plain - x_src
            (vt,) = v([x_tar], [e_tar], [p_tar], [p.tar_cfg], ts[i])
            x_tar = x_tar + (sig[i + 1] - sig[i]) * vt
            if m is not None:
                x_tar = m * x_tar + (1 - m) * ((1 - sig[i + 1]) * x_src + sig[i + 1] * n_plain)
    out = x_tar if x_tar is not None else z
    return FluxPipeline._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                        pipe.vae_scale_factor)


def half_mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.float32)
    mask[:, : size // 2] = 1.0
    return mask


CASES = {"plain": dict(), "nmin-navg": dict(n_min=2, n_avg=2), "mask": dict(mask=True),
         "mask-nmin": dict(mask=True, n_min=2), "tokens": dict(tokens=True, n_min=1)}


RUNS = [("flux-dev", case) for case in CASES] + [("flux-schnell", "plain"), ("flux-schnell", "nmin-navg")]


@pytest.mark.parametrize("variant, case", RUNS, ids=[f"{variant}-{case}" for variant, case in RUNS])
@torch.no_grad()
def test_flux_flowedit_matches_the_reference_loop(pipes, variant, case):
    pipe = pipes[variant]
    options = dict(CASES[case])
    masked, use_tokens = options.pop("mask", False), options.pop("tokens", False)
    params = FlowEditParams(**{**SMALL, **options})
    image = picture(1)
    editor = FlowEditor(pipe, tokens=flux_tokens(pipe) if use_tokens else None, max_sequence_length=SEQ,
                        cache_source_velocities=False)
    result = editor.edit(image, "a red square", "a blue circle", params,
                         mask=half_mask() if masked else None)
    grid = None
    if masked:  # the latent mask the editor used: the image mask averaged to the 16 x 16 latent grid
        grid = torch.zeros(1, 1, 16, 16)
        grid[..., :8] = 1.0
    if use_tokens:  # the reference's every call with the tokens on (both branches, the default)
        editor.attached_tokens.enabled = True
    try:
        expected = reference_flux_flowedit(pipe, image, "a red square", "a blue circle", params, grid)
    finally:
        editor.close()
    assert rel_err(result.latents, expected) <= 1e-6
    if use_tokens:  # and the tokens do change the edit
        plain = FlowEditor(pipe, max_sequence_length=SEQ).edit(image, "a red square", "a blue circle", params)
        assert rel_err(plain.latents, result.latents) > 1e-3
    if masked:  # outside the mask the latent is the source latent, exactly
        x_src = editor._source(editor.prepare(image))[0].x_src
        assert torch.equal(result.latents[..., 8:], x_src[..., 8:])


# ----------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize("variant", ["flux-dev", "flux-schnell"])
@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096])
def test_schedule_is_fluxpipelines(pipes, variant, seq_len):
    scheduler = pipes[variant].scheduler
    timesteps, sigmas = flux_schedule(scheduler, 28, seq_len)
    fresh = type(scheduler).from_config(scheduler.config)
    config = fresh.config
    mu = calculate_shift(seq_len, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    expected, steps = retrieve_timesteps(fresh, 28, "cpu", sigmas=np.linspace(1.0, 1 / 28, 28), mu=mu)
    assert steps == 28 and torch.equal(timesteps, expected.float()) and torch.equal(sigmas, fresh.sigmas.float())
    assert float(sigmas[-1]) == 0.0
    assert scheduler.timesteps is None or len(scheduler.timesteps) != 28  # the pipeline's scheduler is untouched
    family = FAMILIES["flux"]
    h = w = int(2 * seq_len ** 0.5)
    assert torch.equal(family.schedule(scheduler, 28, (1, 16, h, w))[1], sigmas)


def test_dev_schedule_shifts_with_the_image_size_and_schnell_does_not(pipes):
    small, large = (flux_schedule(pipes["flux-dev"].scheduler, 10, n)[1] for n in (256, 4096))
    assert (large[1:-1] > small[1:-1]).all()  # bigger images: more time at high noise (mu 0.5 -> 1.15)
    plain = torch.tensor(np.append(np.linspace(1.0, 0.1, 10), 0.0), dtype=torch.float32)
    for n in (256, 4096):
        torch.testing.assert_close(flux_schedule(pipes["flux-schnell"].scheduler, 10, n)[1], plain)


@torch.no_grad()
def test_guidance_batching_equals_separate_forwards(pipes):
    pipe = pipes["flux-dev"]
    family = family_of(pipe.transformer)
    assert isinstance(family, FluxFamily)
    torch.manual_seed(0)
    z = torch.randn(2, 16, 8, 8)
    embeds, pooled = torch.randn(2, 7, 32), torch.randn(2, 32)
    t = torch.tensor(700.0)
    both = family.velocity(pipe.transformer, z, t, embeds, pooled, torch.tensor([1.5, 5.5]))
    apart = [family.velocity(pipe.transformer, z[k:k + 1], t, embeds[k:k + 1], pooled[k:k + 1],
                             torch.tensor([scale])) for k, scale in enumerate((1.5, 5.5))]
    torch.testing.assert_close(both, torch.cat(apart), rtol=1e-5, atol=1e-6)
    # the guidance does reach the model: another scale, another velocity
    other = family.velocity(pipe.transformer, z[:1], t, embeds[:1], pooled[:1], torch.tensor([5.5]))
    assert (other - apart[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="guidance"):
        family.velocity(pipe.transformer, z, t, embeds, pooled, None)


@torch.no_grad()
def test_one_batched_call_per_step_and_no_negative_prompts(pipes):
    pipe = pipes["flux-dev"]
    sizes: list[int] = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        editor = FlowEditor(pipe, max_sequence_length=SEQ)
        result = editor.edit(picture(2), "a cat", "a dog", FlowEditParams(**{**SMALL, "n_min": 1}))
    finally:
        handle.remove()
    assert sizes == [2] * 4 + [1]  # [z_src, z_tar] per FlowEdit step, the target alone in the n_min step
    assert result.stats.prompts_encoded == 2  # source and target; FLUX has no negative prompts
    assert editor.default_params(False) == get_preset("flux").params
    sizes.clear()
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    tokens = FlowEditor(pipe, tokens=flux_tokens(pipe), max_sequence_length=SEQ)
    try:  # tokens on the target only: the source and the target in separate calls
        tokens.edit(picture(2), "a cat", "a dog", FlowEditParams(**{**SMALL, "token_branches": "target"}))
    finally:
        handle.remove()
        tokens.close()
    assert sizes == [1] * 10
    assert tokens.default_params(True) == get_preset("flux-tokens").params


@torch.no_grad()
def test_velocity_cache_reuses_source_velocities_on_flux(pipes):
    editor = FlowEditor(pipes["flux-dev"], max_sequence_length=SEQ)
    image, params = picture(3), FlowEditParams(**SMALL)
    editor.edit(image, "a cat", "a dog", params)
    again = editor.edit(image, "a cat", "a fox", params.replace(tar_cfg=4.0))
    assert again.stats.source_velocities_reused == params.n_max
    fresh = FlowEditor(pipes["flux-dev"], max_sequence_length=SEQ, cache_source_velocities=False)
    expected = fresh.edit(image, "a cat", "a fox", params.replace(tar_cfg=4.0))
    assert rel_err(again.latents, expected.latents) <= 1e-5


@torch.no_grad()
def test_candidates_and_the_automatic_mask_on_flux(pipes):
    editor = FlowEditor(pipes["flux-dev"], max_sequence_length=SEQ)
    params = FlowEditParams(**SMALL)
    batched = editor.edit_candidates(picture(4), "a cat", "a dog", params, seeds=[3, 8])
    for result, seed in zip(batched, (3, 8)):  # one batch of [src x 2, tar x 2] = two single edits
        single = editor.edit(picture(4), "a cat", "a dog", params.replace(seed=seed))
        assert rel_err(result.latents, single.latents) <= 1e-5
    auto = editor.edit(picture(4), "a cat", "a dog", params, mask=AutoMask(steps=2))
    assert auto.mask_info["mode"] == "auto" and 0 < auto.mask_info["coverage"] <= 1


def test_the_text_length_follows_the_kind(pipes):
    assert FlowEditor(pipes["flux-dev"]).max_sequence_length == KINDS["flux-dev"].max_sequence_length == 512
    assert FlowEditor(pipes["flux-schnell"]).max_sequence_length == KINDS["flux-schnell"].max_sequence_length == 256
    assert FlowEditor(pipes["flux-dev"], kind="flux-dev", max_sequence_length=64).max_sequence_length == 64


def test_flux_refuses_negative_prompts_and_the_authors_guidance(pipes):
    editor = FlowEditor(pipes["flux-dev"], max_sequence_length=SEQ)
    params = FlowEditParams(**SMALL)
    with pytest.raises(ParameterError, match="negative prompt") as caught:
        editor.edit(picture(), "a cat", "a dog", params.replace(tar_negative_prompt="blurry"))
    assert caught.value.field == "tar_negative_prompt"
    with pytest.raises(ParameterError, match="guidance-distilled") as caught:
        editor.edit(picture(), "a cat", "a dog", params.replace(guidance="authors"))
    assert caught.value.field == "guidance"
    with pytest.raises(ValueError, match="cannot drive"):
        family_of(torch.nn.Linear(2, 2))


def test_flux_input_multiple_is_vae_factor_times_two(pipes):
    editor = FlowEditor(pipes["flux-dev"], max_sequence_length=SEQ)
    assert editor.factor == 2 * pipes["flux-dev"].vae_scale_factor  # tiny VAE 2x; FLUX's 8x gives 16 px
    prepared = editor.prepare(picture(size=(38, 34)))
    assert prepared.image.size == (36, 32)


# ----------------------------------------------------------------------------- presets


def test_flux_preset_is_flowedits_published_setting():
    params = get_preset("flux").params
    assert (params.steps, params.n_max, params.n_min, params.n_avg, params.src_cfg, params.tar_cfg) == \
        (28, 24, 0, 1, 1.5, 5.5)
    for kind, spec in KINDS.items():
        if spec.arch in FAMILIES:  # every kind FlowEdit can drive has its own defaults, no silent fallback
            for use_tokens in (False, True):
                name = DEFAULT_PRESETS[(kind, use_tokens)]
                assert PRESETS[name].use_tokens == use_tokens
    assert default_preset_name("flux-dev", False) == "flux"
    assert default_preset_name("flux-schnell", False) == "flux-schnell"
    assert "not tuned" in PRESETS["flux-schnell"].description and "not tuned" in PRESETS["flux-tokens"].description


def test_an_unlisted_flux_kind_takes_its_familys_presets(monkeypatch):
    from dataclasses import replace

    monkeypatch.setitem(KINDS, "my-flux", replace(KINDS["flux-dev"], hub_id="me/my-flux"))
    monkeypatch.setitem(KINDS, "my-schnell", replace(KINDS["flux-schnell"], hub_id="me/my-schnell"))
    assert default_preset_name("my-flux", True) == "flux-tokens"
    assert default_preset_name("my-schnell", False) == "flux-schnell"
    assert default_preset_name("no-such-kind", False) == "sd3"


# ----------------------------------------------------------------------------- the command line


def test_help_lists_the_flux_and_sd35_kinds(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in ("flux-dev", "flux-schnell", "sd3.5-medium", "sd3.5-large"):
        assert kind in text


def test_the_model_and_its_kind_follow_each_other(tmp_path):
    assert cli.model_and_kind(None, "flux-dev", None) == (KINDS["flux-dev"].hub_id, "flux-dev")
    assert cli.model_and_kind(None, None, None) == (KINDS["sd3"].hub_id, "sd3")
    assert cli.model_and_kind("flux-schnell", None, None) == (KINDS["flux-schnell"].hub_id, "flux-schnell")
    assert cli.model_and_kind("me/model", None, "sd3.5-large") == ("me/model", "sd3.5-large")
    assert cli.model_and_kind("me/model", "flux-dev", "sd3") == ("me/model", "flux-dev")  # --kind wins


@pytest.mark.parametrize("kind", ["flux-dev", "flux-schnell", "sd3.5-medium"])
def test_cli_edits_the_bundled_example_on_tiny_folders(tmp_path, kind):
    model = save_tiny_pipeline(kind, tmp_path / "model")
    out = tmp_path / "edit.png"
    argv = ["--model", str(model), "--image", str(EXAMPLE), "--source", "a star and a triangle",
            "--target", "a star and a star", "--out", str(out), "--steps", "6", "--n-max", "3",
            "--device", "cpu", "--dtype", "float32"]
    if kind != "flux-schnell":  # schnell: the kind comes from the folder (no guidance embedding)
        argv += ["--kind", kind]
    assert cli.main(argv) == 0
    meta = read_png_metadata(out)
    preset = get_preset(default_preset_name(kind, False)).params
    assert FlowEditParams.from_dict(meta["params"]) == preset.replace(steps=6, n_max=3)
    with Image.open(out) as edited, Image.open(EXAMPLE) as source:
        assert edited.size == source.size


def test_cli_masked_edit_on_tiny_flux(tmp_path):
    model = save_tiny_pipeline("flux-dev", tmp_path / "model")
    mask = tmp_path / "mask.png"
    with Image.open(EXAMPLE) as source:
        width, height = source.size
    Image.fromarray((half_mask(width) * 255).astype(np.uint8)[:height]).save(mask)
    out = tmp_path / "edit.png"
    assert cli.main(["--model", str(model), "--kind", "flux-dev", "--image", str(EXAMPLE), "--mask", str(mask),
                     "--source", "a star", "--target", "a circle", "--out", str(out), "--steps", "6",
                     "--n-max", "3", "--device", "cpu", "--dtype", "float32"]) == 0
    meta = read_png_metadata(out)
    assert meta["mask"]["mode"] == "given" and meta["mask"]["pasted_back"]
    with Image.open(out) as edited, Image.open(EXAMPLE) as source:
        right = np.asarray(edited.convert("RGB"))[:, width // 2 + 4:]
        assert np.array_equal(right, np.asarray(source.convert("RGB"))[:, width // 2 + 4:])


def test_cli_refuses_a_negative_prompt_on_flux_before_loading(tmp_path, capsys):
    code = cli.main(["--model", str(tmp_path / "missing"), "--kind", "flux-dev", "--image", str(EXAMPLE),
                     "--source", "a", "--target", "b", "--tar-negative", "blurry", "--out", str(tmp_path / "o.png"),
                     "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2 and "--tar-negative" in captured.err and "negative prompt" in captured.err
    assert "loading" not in captured.out  # refused before the model loads
