"""FlowEdit core, editor caching and input handling on the tiny random-weight SD3 pipeline."""

from __future__ import annotations

import copy
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from editing.editor import FlowEditor
from editing.flowedit import (FlowEditParams, ParameterError, encode_image, encode_prompt, flowedit_latents,
                              source_and_target)
from editing.inputs import prepare_image
from editing.presets import PRESETS, Preset, get_preset, register_preset
from softrepa.images import ImageInputError
from tests.editing.conftest import SMALL, picture



class CallLog:
    """Records the batch size and token state of every transformer call."""

    def __init__(self, module, attached=None):
        self.sizes: list[int] = []
        self.tokens: list[bool] = []
        self.attached = attached
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.sizes.append(kwargs["hidden_states"].shape[0])
        self.tokens.append(bool(self.attached and self.attached.enabled))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ----------------------------------------------------------------------------- reference


def reference_flowedit(pipe, image, src, tar, p: FlowEditParams, attached=None, use_tokens=False) -> torch.Tensor:
    """FlowEdit written straight from the paper's equations: one transformer call on
    [u_src, c_src, u_tar, c_tar] per step and sample (batch order matches the library's, so float32
    rounding does too: separate calls differ by ~1e-6 after CFG amplification)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    x = torch.tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
    vae = pipe.vae
    x_src = (vae.encode(x).latent_dist.mode() - vae.config.shift_factor) * vae.config.scaling_factor

    def text(prompt):
        e, _, pooled, _ = pipe.encode_prompt(prompt, None, None, device=torch.device("cpu"),
                                             do_classifier_free_guidance=False)
        return e, pooled

    def v(zs, conds, t):  # one batched call; returns the velocities in order
        if attached is not None:
            attached.enabled = use_tokens
        out = pipe.transformer(hidden_states=torch.cat(zs), timestep=t.expand(len(zs)),
                               encoder_hidden_states=torch.cat([c[0] for c in conds]),
                               pooled_projections=torch.cat([c[1] for c in conds]), return_dict=False)[0]
        if attached is not None:
            attached.enabled = False
        return out.chunk(len(zs))

    c_src, u_src, c_tar, u_tar = text(src), text(p.src_negative_prompt), text(tar), text(p.tar_negative_prompt)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(p.steps)
    sig, ts = scheduler.sigmas, scheduler.timesteps
    g = torch.Generator().manual_seed(p.seed)
    T = p.steps
    z = x_src.clone()
    x_tar = None
    for i in range(T):
        if T - i > p.n_max:
            continue
        if T - i > p.n_min:
            dv = torch.zeros_like(x_src)
            for _ in range(p.n_avg):
                noise = torch.randn(x_src.shape, generator=g)
                zs = (1 - sig[i]) * x_src + sig[i] * noise
                zt = z + zs - x_src
                us, cs, ut, ct = v([zs, zs, zt, zt], [u_src, c_src, u_tar, c_tar], ts[i])
                vs = us + p.src_cfg * (cs - us)
                vt = ut + p.tar_cfg * (ct - ut)
                dv += (vt - vs) / p.n_avg
            z = z + (sig[i + 1] - sig[i]) * dv
        else:
            if x_tar is None:
                noise = torch.randn(x_src.shape, generator=g)
                x_tar = z + (1 - sig[i]) * x_src + sig[i] * noise - x_src
            ut, ct = v([x_tar, x_tar], [u_tar, c_tar], ts[i])
            x_tar = x_tar + (sig[i + 1] - sig[i]) * (ut + p.tar_cfg * (ct - ut))
    return x_tar if x_tar is not None else z


@pytest.mark.parametrize("case", [dict(), dict(n_avg=2, n_min=2, use_tokens=True)], ids=["plain", "avg-nmin-tokens"])
@torch.no_grad()
def test_matches_reference_loop(pipe, editor, case):
    case = dict(case)
    use_tokens = case.pop("use_tokens", False)
    params = FlowEditParams(**{**SMALL, **case})
    image = picture(1)
    result = editor.edit(image, "a red square", "a blue circle", params, use_tokens=use_tokens)
    expected = reference_flowedit(pipe, image, "a red square", "a blue circle", params, editor.attached_tokens, use_tokens)
    assert rel_err(result.latents, expected) <= 1e-6


# ----------------------------------------------------------------------------- the loop


def test_transformer_calls_and_batches(pipe, editor):
    params = FlowEditParams(**{**SMALL, "n_avg": 2})
    with CallLog(pipe.transformer) as log:
        editor.edit(picture(), "a cat", "a dog", params, use_tokens=False)
    assert log.sizes == [4] * (params.n_max * params.n_avg)
    params = params.replace(n_min=2)
    editor.clear_cache()  # else the source half comes from the velocity cache
    with CallLog(pipe.transformer) as log:
        editor.edit(picture(), "a cat", "a dog", params, use_tokens=False)
    # (n_max - n_min) FlowEdit steps x n_avg at batch 4, then n_min target-only steps at batch 2
    assert log.sizes == [4] * ((params.n_max - params.n_min) * params.n_avg) + [2] * params.n_min


def test_n_max_zero_is_refused_before_any_work(pipe, editor):
    # no editing step would return the source unchanged (FlowEditParams' docstring): refused
    with CallLog(pipe.transformer) as log, pytest.raises(ParameterError, match="returns the input unchanged") as info:
        editor.edit(picture(2), "a cat", "a dog", FlowEditParams(**{**SMALL, "n_max": 0}))
    assert info.value.field == "n_max" and log.sizes == []


def test_n_min_runs_and_changes_result(editor):
    base = editor.edit(picture(), "a cat", "a dog", FlowEditParams(**SMALL), use_tokens=False).latents
    with_min = editor.edit(picture(), "a cat", "a dog", FlowEditParams(**{**SMALL, "n_min": 2}), use_tokens=False)
    assert torch.isfinite(with_min.latents).all()
    assert rel_err(with_min.latents, base) > 1e-3
    # n_min == n_max: no FlowEdit step, only plain target sampling from the noised source
    only = editor.edit(picture(), "a cat", "a dog", FlowEditParams(**{**SMALL, "n_min": SMALL["n_max"]}))
    assert only.stats.transformer_calls == SMALL["n_max"]


def test_tokens_seed_and_determinism(editor):
    params = FlowEditParams(**SMALL)
    off = editor.edit(picture(), "a cat", "a dog", params, use_tokens=False).latents
    on = editor.edit(picture(), "a cat", "a dog", params, use_tokens=True).latents
    assert rel_err(on, off) > 1e-4  # float32 rounding differences are ~1e-7
    again = FlowEditor(editor.pipe, cache_size=0, prompt_cache_size=0)  # nothing cached: recomputed from scratch
    assert torch.equal(again.edit(picture(), "a cat", "a dog", params, use_tokens=False).latents, off)
    other_seed = again.edit(picture(), "a cat", "a dog", params.replace(seed=4), use_tokens=False).latents
    assert rel_err(other_seed, off) > 1e-3


def test_cfg_one_skips_unconditional_and_authors_guidance(pipe, editor):
    params = FlowEditParams(**{**SMALL, "src_cfg": 1.0, "tar_cfg": 1.0})
    with CallLog(pipe.transformer) as log:
        editor.edit(picture(), "a cat", "a dog", params)
    assert set(log.sizes) == {2}  # [c_src, c_tar]
    # authors' target guidance c + w (c - u) equals the standard one at w + 1
    standard = editor.edit(picture(), "a cat", "a dog", FlowEditParams(**{**SMALL, "tar_cfg": 8.0}))
    authors = editor.edit(picture(), "a cat", "a dog", FlowEditParams(**{**SMALL, "tar_cfg": 7.0, "guidance": "authors"}))
    assert rel_err(authors.latents, standard.latents) <= 1e-5
    editor.clear_cache()
    with CallLog(pipe.transformer) as log:
        editor.edit(picture(), "a cat", "a dog", FlowEditParams(**{**SMALL, "tar_cfg": 0.0, "guidance": "authors"}))
    assert set(log.sizes) == {3}  # [u_src, c_src, c_tar]


def test_tokens_on_target_only(pipe, editor):
    both = editor.edit(picture(), "a cat", "a dog", FlowEditParams(**SMALL), use_tokens=True)
    params = FlowEditParams(**{**SMALL, "token_branches": "target"})
    editor.clear_cache()
    with CallLog(pipe.transformer, editor.attached_tokens) as log:
        target_only = editor.edit(picture(), "a cat", "a dog", params, use_tokens=True)
    assert log.sizes == [2, 2] * SMALL["n_max"]  # source without tokens, then target with them
    assert log.tokens == [False, True] * SMALL["n_max"]
    assert rel_err(target_only.latents, both.latents) > 1e-4
    assert not editor.attached_tokens.enabled  # switched back off after every call


def test_low_precision_transformer_keeps_float32_latents(pipe):
    half = copy.deepcopy(pipe.transformer).to(torch.bfloat16)
    text = encode_prompt(pipe, "a dog")
    empty = encode_prompt(pipe, "")
    x_src = encode_image(pipe.vae, picture())
    params = FlowEditParams(**SMALL)
    src, tar = source_and_target(text, empty, text, empty, params, use_tokens=False)
    out = flowedit_latents(half, pipe.scheduler, x_src, src, tar, params, torch.Generator().manual_seed(0))
    assert out.latents.dtype == torch.float32 and torch.isfinite(out.latents).all()


def test_pipeline_not_mutated_and_progress(pipe, editor):
    before = pipe.scheduler.timesteps.clone()
    seen = []
    editor.edit(picture(), "a cat", "a dog", FlowEditParams(**SMALL), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(k, SMALL["n_max"]) for k in range(1, SMALL["n_max"] + 1)]
    assert torch.equal(pipe.scheduler.timesteps, before)  # schedule built on a copy
    attached = editor.attached_tokens
    editor.close()
    assert not attached.attached  # hooks removed


# ----------------------------------------------------------------------------- caching


class EncoderCount:
    def __init__(self, vae):
        self.count = 0
        self.handle = vae.encoder.register_forward_hook(self.hook)

    def hook(self, *args):
        self.count += 1


@pytest.mark.parametrize("use_tokens", [False, True], ids=["tokens-off", "tokens-on"])
def test_cached_reedit_equals_uncached(pipe, editor, use_tokens):
    params = FlowEditParams(**SMALL)
    image = picture(7)
    counter = EncoderCount(pipe.vae)
    try:
        first = editor.edit(image, "a cat", "a dog", params, use_tokens=use_tokens)
        assert counter.count == 1 and not first.stats.source_latents_cached
        new_params = params.replace(tar_cfg=9.0)
        with CallLog(pipe.transformer) as log:
            cached = editor.edit(image, "a cat", "a fox", new_params, use_tokens=use_tokens)
        assert counter.count == 1  # VAE encoder skipped
        assert cached.stats.source_latents_cached and cached.stats.prompts_encoded == 1  # only "a fox"
        assert log.sizes == [2] * params.n_max  # target half only
        assert cached.stats.source_velocities_reused == params.n_max
    finally:
        counter.handle.remove()
    fresh = FlowEditor(pipe, editor.attached_tokens, cache_size=0)
    uncached = fresh.edit(image, "a cat", "a fox", new_params, use_tokens=use_tokens)
    assert rel_err(cached.latents, uncached.latents) <= 1e-5
    # n_min differs: the cached velocities are a prefix of the same table
    with_min = editor.edit(image, "a cat", "a fox", new_params.replace(n_min=2), use_tokens=use_tokens)
    assert rel_err(with_min.latents, fresh.edit(image, "a cat", "a fox", new_params.replace(n_min=2),
                                                use_tokens=use_tokens).latents) <= 1e-5


def test_cancel_from_progress_keeps_cache_valid(editor):
    params = FlowEditParams(**SMALL)

    def cancel(done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("cancelled by the user")

    with pytest.raises(RuntimeError, match="cancelled"):
        editor.edit(picture(3), "a cat", "a dog", params, progress=cancel)
    again = editor.edit(picture(3), "a cat", "a dog", params)
    assert again.stats.source_velocities_reused == 2  # the two finished steps
    fresh = FlowEditor(editor.pipe, editor.attached_tokens, cache_size=0).edit(picture(3), "a cat", "a dog", params)
    assert rel_err(again.latents, fresh.latents) <= 1e-5


def test_cache_keys_and_bounds(pipe, tokens):
    editor = FlowEditor(pipe, tokens, cache_size=1)
    try:
        params = FlowEditParams(**SMALL)
        editor.edit(picture(1), "a cat", "a dog", params, use_tokens=False)
        # tokens on changes the source velocities (tokens apply to both branches): no reuse
        on = editor.edit(picture(1), "a cat", "a dog", params, use_tokens=True)
        assert on.stats.source_latents_cached and on.stats.source_velocities_reused == 0
        # a new source prompt or seed: recomputed
        assert editor.edit(picture(1), "a kitten", "a dog", params).stats.source_velocities_reused == 0
        assert editor.edit(picture(1), "a cat", "a dog", params.replace(seed=9)).stats.source_velocities_reused == 0
        editor.edit(picture(2), "a cat", "a dog", params)
        assert editor.cache_info()["sources"] == 1  # LRU of one: picture(1) was dropped
        assert not editor.edit(picture(1), "a cat", "a dog", params).stats.source_latents_cached
    finally:
        editor.close()


# ----------------------------------------------------------------------------- inputs and checks


def png_claiming(width: int, height: int) -> bytes:
    """A few-byte PNG whose header announces a huge image: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_bad_images(tmp_path, editor):
    params = FlowEditParams(**SMALL)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases = {text: "not an image", empty: "empty", tmp_path / "missing.png": "does not exist"}
    for path, message in cases.items():
        with pytest.raises(ImageInputError, match=message):
            editor.edit(path, "a cat", "a dog", params)
    with pytest.raises(ImageInputError, match="at least"):
        editor.edit(picture(size=(5, 40)), "a cat", "a dog", params)
    with pytest.raises(ImageInputError, match="over the limit"):  # our limit (64 M pixels), before decoding
        editor.edit(png_claiming(9_000, 9_000), "a cat", "a dog", params)
    with pytest.raises(ImageInputError, match="too large"):  # PIL's own bomb check
        editor.edit(png_claiming(100_000, 100_000), "a cat", "a dog", params)
    with pytest.raises(ImageInputError, match="over the limit"):
        prepare_image(picture(size=(64, 64)), multiple=2, max_pixels=1000)


def test_prepare_resizes_crops_and_reports():
    prepared = prepare_image(picture(size=(300, 200)), max_side=100, multiple=16)
    assert prepared.image.size == (96, 64)  # 100x67 -> center crop to multiples of 16
    assert prepared.report.resized_size == (100, 67)
    assert "resized 300x200 -> 100x67" in prepared.report.describe() and "center-cropped" in prepared.report.describe()
    untouched = prepare_image(picture(size=(96, 64)), max_side=1024, multiple=16)
    assert untouched.image.size == (96, 64) and untouched.report.notes == []
    with pytest.raises(ImageInputError, match="less elongated"):
        prepare_image(picture(size=(2000, 70)), max_side=1024, multiple=16)
    # any mode and the EXIF orientation: a CMYK photo stored sideways comes out RGB and upright
    sideways = Image.new("CMYK", (80, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", exif=exif)
    upright = prepare_image(buffer.getvalue(), multiple=16)
    assert upright.image.mode == "RGB" and upright.image.size == (64, 80)


def test_editor_clamps_to_the_model(editor):
    # the tiny transformer's position embedding covers 32 latent px x 2 = 64 px
    result = editor.edit(picture(size=(200, 100)), "a cat", "a dog", FlowEditParams(**{**SMALL, "n_max": 1}))
    assert result.image.size == result.source_image.size == (64, 32)
    assert result.input_report.resized_size == (64, 32)


@pytest.mark.parametrize("change, message", [
    (dict(n_min=6), "n_min"), (dict(n_max=9), "n_max"), (dict(n_avg=0), "n_avg"), (dict(steps=0), "steps"),
    (dict(tar_cfg=float("nan")), "tar_cfg"), (dict(guidance="magic"), "guidance"),
    (dict(token_branches="source"), "token_branches"), (dict(seed=-1), "seed"),
])
def test_bad_params(editor, change, message):
    with pytest.raises(ValueError, match=message):
        editor.edit(picture(), "a cat", "a dog", FlowEditParams(**{**SMALL, **change}))


@pytest.mark.parametrize("change, field", [
    (dict(n_min=6), "n_min"), (dict(n_min=-1), "n_min"), (dict(n_max=9), "n_max"), (dict(n_max=0), "n_max"),
    (dict(n_avg=0), "n_avg"), (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(src_cfg=-1.0), "src_cfg"),
    (dict(tar_cfg=float("nan")), "tar_cfg"), (dict(tar_negative_prompt=None), "tar_negative_prompt"),
    (dict(guidance="magic"), "guidance"), (dict(token_branches="source"), "token_branches"), (dict(seed=-1), "seed"),
])
def test_check_names_the_field(change, field):
    with pytest.raises(ParameterError) as info:
        FlowEditParams(**{**SMALL, **change}).check()
    assert info.value.field == field and field in str(info.value)


def test_ranges_follow_steps_and_n_max():
    params = FlowEditParams(steps=6, n_max=3)
    assert params.ranges()["n_max"] == (1, 6) and params.ranges()["n_min"] == (0, 3)
    params.check()  # the ends of the ranges run
    FlowEditParams(steps=6, n_max=6, n_min=6).check()
    FlowEditParams(steps=1, n_max=1).check()


def test_bad_prompts_and_tokens(pipe, editor):
    params = FlowEditParams(**SMALL)
    for source, target in (("", "a dog"), ("a cat", "   ")):
        with pytest.raises(ValueError, match="empty"):
            editor.edit(picture(), source, target, params)
    plain = FlowEditor(pipe)
    with pytest.raises(ValueError, match="no soft tokens"):
        plain.edit(picture(), "a cat", "a dog", params, use_tokens=True)


def test_presets():
    assert PRESETS["sd3"].params == FlowEditParams(steps=50, n_max=33, src_cfg=3.5, tar_cfg=13.5, seed=42)
    tokens = get_preset("sd3-tokens")
    assert tokens.use_tokens and tokens.params.n_max == 30 and tokens.params.tar_cfg == 10.0
    paper = get_preset("sd3-tokens-paper").params
    assert (paper.tar_cfg, paper.guidance) == (9.0, "authors")
    tokens.params.n_max = 1  # a copy: the registry is unchanged
    assert PRESETS["sd3-tokens"].params.n_max == 30
    with pytest.raises(ValueError, match="n_min"):
        register_preset("broken", Preset(FlowEditParams(n_min=40)))
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")


def test_per_call_max_side_is_capped_by_the_editor(editor):
    image = picture(size=(200, 100))
    assert editor.prepare(image, max_side=48).image.size == (48, 24)
    assert editor.prepare(image, max_side=10_000).image.size == editor.prepare(image).image.size == (64, 32)
    result = editor.edit(image, "a cat", "a dog", FlowEditParams(**{**SMALL, "n_max": 1}), max_side=48)
    assert result.image.size == result.source_image.size == (48, 24)


def test_prompt_length_check(pipe, editor):
    # the tiny pipeline has no T5: past the CLIP limit the end of a prompt would be dropped
    assert editor.check_prompt_length("a red cat") is None
    with pytest.raises(ValueError, match=r"the target prompt is 120 tokens long but this model reads at most 75"):
        editor.check_prompt_length("red " * 120, "target prompt")
    with pytest.raises(ValueError, match="shorten it"):
        editor.edit(picture(), "a cat", "red " * 120, FlowEditParams(**SMALL))
