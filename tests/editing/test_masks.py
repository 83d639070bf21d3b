"""Local edits: masked FlowEdit against a plain reference, the exactness promises (all-ones = unmasked,
outside a hard mask = the source), the automatic mask, paste-back, and bad masks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from editing.editor import FlowEditor, mask_from_metadata, mask_path, read_png_metadata
from editing.flowedit import (FlowEditParams, encode_image, encode_prompt, flowedit_latents, flowedit_schedule,
                              source_and_target)
from editing.inputs import prepare_image
from editing.masks import (AutoMask, MaskError, MaskOptions, PixelMask, fit_mask, latent_mask, paste_alpha,
                           paste_back, prepare_mask, read_mask)
from tests.editing.conftest import SMALL, picture

SRC, TAR = "a red circle", "a blue square"


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White rectangle (left, top, right, bottom) on black, ``size`` = (width, height)."""
    values = np.zeros((size[1], size[0]), np.uint8)
    left, top, right, bottom = box
    values[top:bottom, left:right] = 255
    return Image.fromarray(values, mode="L")


def branches(pipe, params, use_tokens=False):
    embeds = {text: encode_prompt(pipe, text) for text in (SRC, TAR, "")}
    return source_and_target(embeds[SRC], embeds[""], embeds[TAR], embeds[""], params, use_tokens)


def reference_masked(pipe, x_src, src, tar, p: FlowEditParams, m: torch.Tensor) -> torch.Tensor:
    """The masked algorithm written plainly: one call per prediction, no batching, no cache."""
    _, sigmas = flowedit_schedule(pipe.scheduler, p.steps)
    timesteps = sigmas[:-1] * 1000
    generator = torch.Generator().manual_seed(p.seed)

    def velocity(z, branch, t):
        def call(text):
            return pipe.transformer(hidden_states=z, timestep=t.expand(1), encoder_hidden_states=text.embeds,
                                    pooled_projections=text.pooled, return_dict=False)[0]
        c = call(branch.cond)
        return c if not branch.needs_uncond else call(branch.uncond) + branch.cfg * (c - call(branch.uncond))

    z = x_src.clone()
    x_tar = noise_plain = None
    for i in range(p.steps):
        if p.steps - i > p.n_max:
            continue
        s, s_next = sigmas[i], sigmas[i + 1]
        if p.steps - i > p.n_min:
            noise = torch.randn(x_src.shape, generator=generator)
            z_src = (1 - s) * x_src + s * noise
            z_tar = z + z_src - x_src
            z = z + (s_next - s) * (m * (velocity(z_tar, tar, timesteps[i]) - velocity(z_src, src, timesteps[i])))
        else:
            if x_tar is None:
                noise_plain = torch.randn(x_src.shape, generator=generator)
                x_tar = z + (1 - s) * x_src + s * noise_plain - x_src
            x_tar = x_tar + (s_next - s) * velocity(x_tar, tar, timesteps[i])
            x_tar = m * x_tar + (1 - m) * ((1 - s_next) * x_src + s_next * noise_plain)
    return x_tar if x_tar is not None else z


@torch.no_grad()
def test_all_ones_latent_mask_changes_nothing(pipe):
    params = FlowEditParams(**SMALL, n_min=2)
    x_src = encode_image(pipe.vae, picture())
    src, tar = branches(pipe, params)
    runs = [flowedit_latents(pipe.transformer, pipe.scheduler, x_src, src, tar, params,
                             torch.Generator().manual_seed(params.seed), mask=mask).latents
            for mask in (None, torch.ones(1, 1, *x_src.shape[2:]))]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("n_min", [0, 2])
@torch.no_grad()
def test_soft_mask_matches_plain_reference(pipe, n_min):
    params = FlowEditParams(**SMALL, n_min=n_min)
    x_src = encode_image(pipe.vae, picture())
    src, tar = branches(pipe, params)
    m = torch.linspace(0, 1, x_src.shape[2] * x_src.shape[3]).view(1, 1, *x_src.shape[2:])  # soft ramp
    got = flowedit_latents(pipe.transformer, pipe.scheduler, x_src, src, tar, params,
                           torch.Generator().manual_seed(params.seed), mask=m).latents
    expected = reference_masked(pipe, x_src, src, tar, params, m)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


@pytest.mark.parametrize("setting", [dict(), dict(n_min=2, n_avg=2), dict(use_tokens=True, token_branches="target")])
def test_all_ones_mask_is_the_unmasked_edit_bit_for_bit(editor, setting):
    setting = dict(setting)
    use_tokens = setting.pop("use_tokens", False)
    params = FlowEditParams(**SMALL).replace(**setting)
    editor.edit(picture(), SRC, TAR, params, use_tokens=use_tokens)  # fills the source-velocity cache
    plain = editor.edit(picture(), SRC, TAR, params, use_tokens=use_tokens)
    white = Image.new("L", (32, 32), 255)
    masked = editor.edit(picture(), SRC, TAR, params, use_tokens=use_tokens, mask=white)
    # the velocity cache serves masked edits too (both runs here: the same batch sizes, the same rounding)
    assert masked.stats.source_velocities_reused == plain.stats.source_velocities_reused > 0
    assert torch.equal(masked.latents, plain.latents)
    assert masked.mask_info["pasted_back"] and masked.mask_info["coverage"] == 1.0
    assert np.array_equal(np.asarray(masked.image), np.asarray(plain.image))


@pytest.mark.parametrize("n_min", [0, 2])
def test_outside_a_hard_mask_nothing_changes(editor, n_min):
    params = FlowEditParams(**SMALL, n_min=n_min)
    image = picture(1)
    box = (8, 0, 24, 16)  # a 16 x 16 px region: 8 x 8 latent cells on the 2x VAE
    kept = editor.edit(image, SRC, TAR, params, mask=box_mask(image.size, box),
                       mask_options=MaskOptions(paste_back=False))
    x_src = encode_image(editor.pipe.vae, image)
    inside = torch.zeros_like(x_src, dtype=torch.bool)
    inside[..., 0:8, 4:12] = True
    assert torch.equal(kept.latents[~inside], x_src[~inside])  # the latent outside is the source's, exactly
    assert not torch.equal(kept.latents[inside], x_src[inside])  # and the edit did act inside
    pasted = editor.edit(image, SRC, TAR, params, mask=box_mask(image.size, box))
    out, src = np.asarray(pasted.image), np.asarray(image)
    outside = np.ones((32, 32), bool)
    outside[0:16, 8:24] = False
    assert np.array_equal(out[outside], src[outside])  # pixels too, with paste-back (the default for hard masks)
    assert not np.array_equal(out[~outside], src[~outside])


def test_auto_mask_keeps_the_rest_and_is_reported(editor):
    params = FlowEditParams(**SMALL)
    result = editor.edit(picture(2), SRC, TAR, params, mask=AutoMask(steps=2, threshold=0.6, dilate=0))
    info, region = result.mask_info, result.mask
    assert info["mode"] == "auto" and info["auto"] == {"steps": 2, "threshold": 0.6, "dilate": 0}
    assert region.hard and 0.0 < region.coverage < 1.0 and info["pasted_back"]
    outside = region.values == 0
    assert np.array_equal(np.asarray(result.image)[outside], np.asarray(picture(2))[outside])
    with pytest.raises(ValueError, match="n_min = n_max"):
        editor.edit(picture(2), SRC, TAR, params.replace(n_min=params.n_max), mask=AutoMask())


def test_auto_mask_rule(pipe):
    evidence = [torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)]
    evidence[0][0, 0, 2, 3] = 4.0
    evidence[1][0, 0, 2, 3], evidence[1][0, 0, 5, 5] = 2.0, 1.0  # mean: 3 at (2, 3), 0.5 at (5, 5)
    found = AutoMask(steps=2, threshold=0.5, dilate=1).find(evidence)[0, 0]
    expected = torch.zeros(6, 6)
    expected[1:4, 2:5] = 1.0  # (2, 3) and its 8 neighbours; (5, 5) is under half the top score
    assert torch.equal(found, expected)
    for bad in (AutoMask(steps=0), AutoMask(threshold=0.0), AutoMask(dilate=-1)):
        with pytest.raises(ValueError, match="auto mask"):
            bad.check()


def test_saved_edit_carries_its_mask(tmp_path, editor):
    image = picture(3)
    result = editor.edit(image, SRC, TAR, FlowEditParams(**SMALL), mask=box_mask(image.size, (0, 0, 16, 32)))
    path = result.save(tmp_path / "edit.png")
    assert mask_path(path).is_file() and mask_path(path).name == "edit.mask.png"
    metadata = read_png_metadata(path)
    assert metadata["mask"]["mode"] == "given" and metadata["mask"]["file"] == "edit.mask.png"
    restored = np.asarray(mask_from_metadata(metadata))
    assert np.array_equal(restored, np.asarray(Image.open(mask_path(path))))
    assert np.array_equal(restored > 127, np.asarray(box_mask(image.size, (0, 0, 16, 32))) > 127)
    plain = editor.edit(image, SRC, TAR, FlowEditParams(**SMALL))
    assert plain.metadata()["mask"] is None and mask_from_metadata(plain.metadata()) is None


# ----------------------------------------------------------------------------- masks themselves


def test_mask_follows_the_image_through_resize_and_crop():
    image = picture(4, (100, 60))  # downscaled to 64 x 38, then center-cropped to 64 x 32 (multiples of 16)
    prepared = prepare_image(image, max_side=64, multiple=16, min_side=16)
    assert prepared.report.final_size == (64, 32)
    mask = prepare_mask(box_mask((100, 60), (50, 0, 100, 60)), prepared.report)  # the right half
    assert mask.hard and mask.values.shape == (32, 64) and not mask.notes
    assert mask.values[:, :32].max() == 0 and mask.values[:, 32:].min() == 1
    half_size = prepare_mask(box_mask((50, 30), (25, 0, 50, 30)), prepared.report)
    assert np.array_equal(half_size.values, mask.values) and "resized to the image's 100x60" in half_size.notes[0]


@pytest.mark.parametrize("make, message", [
    (lambda: box_mask((32, 64), (0, 0, 8, 8)), "a different shape"),
    (lambda: Image.new("L", (32, 32), 0), "empty"),
    (lambda: b"this is not a picture", "not an image"),
    (lambda: Image.new("RGB", (32, 32), (255, 0, 0)), "colour"),
    (lambda: np.full((32, 32), 2.0), r"\[0, 1\]"),
])
def test_bad_masks_say_what_is_wrong(make, message):
    report = prepare_image(picture(), max_side=64, multiple=16, min_side=16).report
    with pytest.raises(MaskError, match=message):
        prepare_mask(make(), report)


def test_mask_formats(tmp_path):
    alpha = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    alpha.putpixel((2, 3), (10, 200, 30, 255))  # painted stroke: the alpha decides, not the colour
    assert read_mask(alpha)[3, 2] == 1.0 and read_mask(alpha).sum() == 1.0
    grey_rgb = Image.merge("RGB", [box_mask((8, 8), (0, 0, 4, 8))] * 3)
    assert np.array_equal(read_mask(grey_rgb), read_mask(box_mask((8, 8), (0, 0, 4, 8))))
    frames = [box_mask((8, 8), (0, 0, 4, 4)), box_mask((8, 8), (4, 4, 8, 8))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert np.array_equal(read_mask(buffer.getvalue()) > 0.5, read_mask(frames[0]) > 0.5)  # the first frame
    with pytest.raises(MaskError, match="does not exist"):
        read_mask(tmp_path / "missing.png")


def test_latent_mask_is_the_area_mean():
    values = np.zeros((4, 8), np.float32)
    values[0, 0] = values[1, 1] = 1.0  # half of the first 2 x 2 cell
    values[2:4, 6:8] = 1.0
    latent = latent_mask(PixelMask(values, hard=True), factor=2)
    assert latent.shape == (1, 1, 2, 4)
    assert torch.equal(latent[0, 0], torch.tensor([[0.5, 0, 0, 0], [0, 0, 0, 1.0]]))


def test_paste_back_is_exact_outside_and_ramps_inward():
    values = np.zeros((12, 12), np.float32)
    values[2:10, 2:10] = 1.0
    alpha = paste_alpha(values, feather_px=3)
    assert alpha[values == 0].max() == 0.0 and alpha[5:7, 5:7].min() == 1.0
    assert np.allclose([alpha[2, 5], alpha[3, 5], alpha[4, 5]], [1 / 3, 2 / 3, 1.0])
    source, edited = picture(5, (12, 12)), picture(6, (12, 12))
    pasted = np.asarray(paste_back(edited, source, PixelMask(values, hard=True), 3))
    assert np.array_equal(pasted[values == 0], np.asarray(source)[values == 0])
    assert np.array_equal(pasted[5:7, 5:7], np.asarray(edited)[5:7, 5:7])


def test_mask_options_are_checked(editor):
    with pytest.raises(ValueError, match="feather_px"):
        editor.edit(picture(), SRC, TAR, FlowEditParams(**SMALL), mask=Image.new("L", (32, 32), 255),
                    mask_options=MaskOptions(feather_px=-1))
    soft = fit_mask(np.full((32, 32), 0.5, np.float32), prepare_image(picture(), max_side=64, min_side=16).report)
    assert not soft.hard and not MaskOptions().pastes_back(soft.hard) and MaskOptions().pastes_back(True)


def test_auto_mask_finds_the_changed_cell_on_the_shapes_model():
    """On the bundled shapes model, where the edited cell is known (the first 4 held-out pairs of the
    benchmark's seed): the automatic region covers most of the changed cell in every pair, and
    covers it more than any other cell in most (benchmarks/local_edits.py measures the rest)."""
    from shapes.world import make_edit_pairs
    from softrepa.models import KINDS, SHAPES_MODEL_DIR, load_pipeline

    pipe = load_pipeline(str(SHAPES_MODEL_DIR), "shapes-sd3", torch.float32, "cpu", progress_bar=False)
    editor = FlowEditor(pipe, max_sequence_length=KINDS["shapes-sd3"].max_sequence_length)
    from editing.presets import get_preset

    params = get_preset("shapes").params
    top = 0
    for pair in make_edit_pairs(4, seed=1234):
        result = editor.edit(pair["source_image"], pair["source_prompt"], pair["target_prompt"], params,
                             use_tokens=False, mask=AutoMask())
        region = result.mask.values  # (64, 64) on the 2 x 2 grid of 32 px cells
        overlap = [region[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].mean() for r in range(2) for c in range(2)]
        assert overlap[pair["changed"]["cell"]] >= 0.5, (pair["index"], overlap)
        top += int(np.argmax(overlap)) == pair["changed"]["cell"]
        outside = region == 0
        assert np.array_equal(np.asarray(result.image)[outside], np.asarray(pair["source_image"])[outside])
    assert top >= 3


@pytest.mark.parametrize("mask", [None, "box", "auto"])
def test_candidates_equal_single_edits_with_their_seeds(editor, mask):
    """N seeds in one batched run: candidate j is the single edit with seed j (to batch-size rounding),
    with one transformer call per step for all of them."""
    image = picture(7)
    region = {"box": box_mask(image.size, (0, 0, 16, 32)), "auto": AutoMask(steps=2), None: None}[mask]
    params = FlowEditParams(**SMALL)
    candidates = editor.edit_candidates(image, SRC, TAR, params, seeds=[11, 12, 13], mask=region)
    assert [c.params.seed for c in candidates] == [11, 12, 13]
    assert candidates[0].stats.transformer_calls == params.n_max  # one call of 12 items per step
    for candidate in candidates:
        single = editor.edit(image, SRC, TAR, params.replace(seed=candidate.params.seed), mask=region)
        assert float((candidate.latents - single.latents).abs().max()) < 1e-4
        assert (candidate.mask is None) == (single.mask is None)
        if mask == "auto":
            assert np.array_equal(candidate.mask.values, single.mask.values)
    assert not torch.equal(candidates[0].latents, candidates[1].latents)
    with pytest.raises(ValueError, match="seed"):
        editor.edit_candidates(image, SRC, TAR, params, seeds=[1, -2])
