"""Tests of evaluation.region_metrics: each metric against a plain computation written here (numpy,
or the tiny models' layers called by hand), PIE-Bench's masking convention, and the edge cases
(empty regions, mismatched sizes, masks of the wrong type, DINO weights that are not there)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from evaluation.metrics import ClipSimilarity, LpipsDistance, MissingDependency
from evaluation.region_metrics import (REGION_METRICS, REGION_ORDER, RegionSample, StructureDistance,
                                       WeightsUnavailable, as_mask_array, build_region_metric, dino_size,
                                       key_self_similarity, last_key_projection, region_model_ids)

W, H = 24, 20


@pytest.fixture(scope="module")
def triple():
    """An edited image, its source, and a mask (1 = edited) whose rectangle the edit changed most."""
    rng = np.random.default_rng(5)
    source = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    edited = np.clip(source.astype(int) + rng.integers(-20, 21, source.shape), 0, 255).astype(np.uint8)
    edited[4:12, 6:18] = rng.integers(0, 256, (8, 12, 3))
    mask = np.zeros((H, W), np.float32)
    mask[4:12, 6:18] = 1.0
    return edited, source, mask


def _kept(edited, source, mask):
    keep = (1.0 - mask.astype(np.float64))[..., None]
    return edited / 255.0 * keep, source / 255.0 * keep


def ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) of (H, W, 3) images in [0, 1]: Gaussian window 11, sigma 1.5, at
    every pixel of the images mirrored by 5 px at the borders (torchmetrics' padding), averaged over
    channels and pixels."""
    offsets = np.arange(11) - 5.0
    gauss = np.exp(-(offsets / 1.5) ** 2 / 2)
    window = np.outer(gauss, gauss) / gauss.sum() ** 2

    def local_mean(x):
        padded = np.pad(x, ((5, 5), (5, 5), (0, 0)), mode="reflect")
        return (sliding_window_view(padded, (11, 11), axis=(0, 1)) * window).sum(axis=(-2, -1))

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = np.maximum(local_mean(a * a) - mu_a ** 2, 0)
    var_b = np.maximum(local_mean(b * b) - mu_b ** 2, 0)
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ratio = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ratio.mean())


def _score(name, edited, source, mask, prompt="a photo", **kwargs):
    metric = build_region_metric(name, progress=False, **kwargs)
    return metric.region_scores([edited], [source], [mask], [prompt])[0]


# ----------------------------------------------------------------------------- PSNR, SSIM, MSE


def test_unedited_psnr_mse_ssim_match_plain_computations(triple):
    edited, source, mask = triple
    a, b = _kept(edited, source, mask)
    mse = float(((a - b) ** 2).mean())
    assert _score("mse_unedited", edited, source, mask) == pytest.approx(mse, rel=1e-5)
    assert _score("psnr_unedited", edited, source, mask) == pytest.approx(10 * math.log10(1 / mse), abs=1e-5)
    assert _score("ssim_unedited", edited, source, mask) == pytest.approx(ssim_reference(a, b), abs=1e-5)
    # the masked-out pixels count in the averages (PIE-Bench): not the MSE over the kept pixels alone
    kept_only = float(((edited / 255.0 - source / 255.0) ** 2)[mask == 0].mean())
    assert _score("mse_unedited", edited, source, mask) < kept_only * 0.9


def test_masks_as_pil_path_bool_and_tensor_agree(triple, tmp_path):
    edited, source, mask = triple
    pil = Image.fromarray((mask * 255).astype(np.uint8), mode="L")
    pil.save(tmp_path / "mask.png")
    forms = [mask, pil, tmp_path / "mask.png", str(tmp_path / "mask.png"), mask.astype(bool), torch.from_numpy(mask)]
    values = [_score("mse_unedited", edited, source, form) for form in forms]
    assert np.allclose(values, values[0], rtol=0, atol=0)
    assert np.array_equal(as_mask_array(pil), mask)


def test_the_edited_region_does_not_count(triple):
    edited, source, mask = triple
    inside_only = source.copy()
    inside_only[mask > 0] = 255 - source[mask > 0]  # changed only where the mask allows
    assert _score("mse_unedited", inside_only, source, mask) == 0.0
    assert _score("psnr_unedited", inside_only, source, mask) == math.inf
    assert _score("ssim_unedited", inside_only, source, mask) == pytest.approx(1.0, abs=1e-6)
    assert _score("mse_unedited", inside_only, source, np.zeros_like(mask)) > 0.01  # unmasked: counted


def test_empty_regions_and_whole_image_masks(triple):
    edited, source, mask = triple
    zeros, ones = np.zeros_like(mask), np.ones_like(mask)
    whole = float(((edited / 255.0 - source / 255.0) ** 2).mean())
    assert _score("mse_unedited", edited, source, zeros) == pytest.approx(whole, rel=1e-5)  # all kept: whole image
    for name in ("psnr_unedited", "mse_unedited", "ssim_unedited"):
        assert math.isnan(_score(name, edited, source, ones))  # nothing kept: NaN, as PIE-Bench


def test_size_mismatches_and_bad_masks_say_what_to_do(triple):
    edited, source, mask = triple
    with pytest.raises(ValueError, match="edited image is 24x20 but the source is 20x20.*one size"):
        _score("psnr_unedited", edited, source[:, :20], mask)
    with pytest.raises(ValueError, match="mask is 20x20 but the images are 24x20: resize the mask"):
        _score("psnr_unedited", edited, source, mask[:, :20])
    with pytest.raises(TypeError, match="float in \\[0, 1\\] or bool"):
        as_mask_array((mask * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        as_mask_array(mask * 2)
    with pytest.raises(ValueError, match="at least 11 px"):
        _score("ssim_unedited", edited[:8, :8], source[:8, :8], mask[:8, :8])
    with pytest.raises(ValueError, match="1 images, 1 references, 2 masks"):
        build_region_metric("mse_unedited", progress=False).region_scores([edited], [source], [mask, mask])


# ----------------------------------------------------------------------------- LPIPS


def test_unedited_lpips_feeds_the_network_masked_images_in_minus_one_one(triple, monkeypatch):
    edited, source, mask = triple
    seen = []

    def network(x, y):
        seen.append((x, y))
        return (x - y).pow(2).mean().reshape(1, 1, 1, 1)

    monkeypatch.setattr(LpipsDistance, "model", property(lambda self: network))
    metric = build_region_metric("lpips_unedited", progress=False)
    assert metric.lpips.net == "squeeze"  # PIE-Bench's LPIPS network
    value = metric.region_scores([edited], [source], [mask], ["p"])[0]
    a, b = _kept(edited, source, mask)
    x, y = (t[0].permute(1, 2, 0).numpy() for t in seen[0])
    assert np.allclose(x, a * 2 - 1, atol=1e-6) and np.allclose(y, b * 2 - 1, atol=1e-6)
    assert x[mask > 0].max() == -1.0  # the edited region is black (-1) in both
    assert value == pytest.approx(float((((a - b) * 2) ** 2).mean()), rel=1e-5)
    assert math.isnan(metric.region_scores([edited], [source], [np.ones_like(mask)], ["p"])[0])


def test_unedited_lpips_without_the_package_names_it(triple):
    try:
        import lpips  # noqa: F401  (torchvision-based; does not import in the core install)
    except Exception:
        with pytest.raises(MissingDependency, match="'lpips'"):
            _score("lpips_unedited", *triple)
    else:
        pytest.skip("lpips imports here; the missing-package message is not reachable")


# ----------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def flipped_clip_dir(tiny_clip_dir, tmp_path_factory):
    """The tiny CLIP with its image projection negated: its cosines are the tiny CLIP's negated, and
    the tiny CLIP's are all negative here, so these are positive (the clamp at 0 would hide errors)."""
    from transformers import CLIPModel

    directory = tmp_path_factory.mktemp("flipped-clip")
    shutil.copytree(tiny_clip_dir, directory, dirs_exist_ok=True)
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        model.visual_projection.weight.neg_()
    model.save_pretrained(directory)
    return directory


def test_clip_whole_and_edited_region(flipped_clip_dir, tiny_clip_dir):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    prompts = ["a cat", "a red car on a road", "a tree", "two dogs"]
    masks = [np.zeros((32, 32), np.float32) for _ in range(4)]
    for index, mask in enumerate(masks[:3]):
        mask[4 * index:4 * index + 16, 8:24] = 1.0  # masks[3] stays empty
    raw = ClipSimilarity("clip", str(flipped_clip_dir), progress=False)
    whole = build_region_metric("clip_whole", str(flipped_clip_dir), progress=False)
    edited = build_region_metric("clip_edited", str(flipped_clip_dir), progress=False)

    cosines = raw.score(images, prompts)
    assert all(c > 0.05 for c in cosines)  # so the clamp at 0 hides nothing below
    expected_whole = [100 * max(c, 0.0) for c in cosines]
    assert np.allclose(whole.region_scores(images, images, masks, prompts), expected_whole, atol=1e-4)

    masked = [(image * mask[..., None]).astype(np.uint8) for image, mask in zip(images, masks)]
    expected_edited = [100 * max(c, 0.0) for c in raw.score(masked[:3], prompts[:3])]
    scores = edited.region_scores(images, images, masks, prompts)
    assert np.allclose(scores[:3], expected_edited, atol=1e-4) and math.isnan(scores[3])  # empty region: NaN
    assert not np.allclose(raw.score(masked[:3], prompts[:3]), cosines[:3])  # the mask changed the input
    # PIE-Bench's CLIPScore clamps at 0: the unflipped tiny CLIP's cosines are all negative
    original = build_region_metric("clip_whole", str(tiny_clip_dir), progress=False)
    assert original.region_scores(images, images, masks, prompts) == [0.0] * 4


# ----------------------------------------------------------------------------- structure distance


def _hand_structure_distance(model, source: np.ndarray, edited: np.ndarray, size: tuple[int, int]) -> float:
    """Splice's structure distance computed by calling the ViT's parts by hand: resize + ImageNet
    normalization, embeddings, every layer but the last, the last's layer norm and key projection."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.from_numpy(np.stack([source, edited])).permute(0, 3, 1, 2).float() / 255
    x = (torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", antialias=True) - mean) / std
    with torch.no_grad():
        hidden = model.embeddings(x, interpolate_pos_encoding=True)
        for layer in model.layers[:-1]:
            hidden = layer(hidden)
        last = model.layers[-1]
        keys = last.attention.k_proj(last.layernorm_before(hidden)).double()
    unit = keys / keys.norm(dim=-1, keepdim=True)
    similarity = unit @ unit.transpose(1, 2)
    return float(((similarity[1] - similarity[0]) ** 2).mean())


def test_structure_distance_matches_a_hand_computation(tiny_vit_dir):
    from transformers import ViTModel

    rng = np.random.default_rng(9)
    source = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    edited = source.copy()
    edited[8:24, 16:40] = 255 - edited[8:24, 16:40]
    metric = StructureDistance(str(tiny_vit_dir), short_side=32, max_long_side=64, progress=False)
    value = metric.region_scores([edited], [source], [None], ["p"])[0]
    model = ViTModel.from_pretrained(tiny_vit_dir, add_pooling_layer=False).eval()
    expected = _hand_structure_distance(model, source, edited, dino_size(40, 56, 32, 64))
    assert value > 1e-6
    assert value == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert metric.region_scores([source], [source], [None], ["p"])[0] == 0.0  # identical images
    assert metric.keys(torch.rand(1, 3, 40, 56)).shape == (1, 1 + 4 * 5, 32)  # 32x44 -> 4x5 patches + CLS


def test_structure_distance_registry_defaults_and_shapes(tiny_vit_dir):
    assert dino_size(512, 512) == (224, 224)  # PIE-Bench's images
    assert dino_size(512, 1024) == (224, 448)
    assert dino_size(1000, 100) == (480, 48)  # the long side is capped at 480
    metric = build_region_metric("structure_distance", str(tiny_vit_dir), progress=False)
    assert (metric.short_side, metric.max_long_side, metric.pixel_scale) == (224, 480, 1.0)
    # transformers 4 names the parts encoder.layer[i].attention.attention.key (the eval environment)
    old_layout = torch.nn.Module()
    old_layout.encoder = torch.nn.Module()
    old_layout.encoder.layer = torch.nn.ModuleList([torch.nn.Module() for _ in range(2)])
    for layer in old_layout.encoder.layer:
        layer.attention = torch.nn.Module()
        layer.attention.attention = torch.nn.Module()
        layer.attention.attention.key = torch.nn.Linear(4, 4)
    assert last_key_projection(old_layout) is old_layout.encoder.layer[1].attention.attention.key
    assert last_key_projection(metric.model) is metric.model.layers[-1].attention.k_proj
    with pytest.raises(TypeError, match="expected a transformers ViTModel"):
        last_key_projection(torch.nn.Linear(2, 2))
    keys = torch.randn(2, 5, 8)
    similarity = key_self_similarity(keys)
    assert similarity.shape == (2, 5, 5)
    assert torch.allclose(torch.diagonal(similarity, dim1=1, dim2=2), torch.ones(2, 5), atol=1e-6)
    assert torch.allclose(key_self_similarity(torch.zeros(1, 3, 4)), torch.zeros(1, 3, 3))  # eps: no NaN


def test_structure_distance_without_weights_is_unavailable(tmp_path, triple):
    edited, source, _ = triple
    with pytest.raises(WeightsUnavailable, match="structure_distance=DIR"):
        StructureDistance(str(tmp_path / "no-such-folder"), progress=False).region_scores([edited], [source])
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailable, match="could not be loaded"):
        StructureDistance(str(tmp_path / "empty"), progress=False).region_scores([edited], [source])
    assert issubclass(WeightsUnavailable, MissingDependency)  # the evaluation notes it and goes on


# ----------------------------------------------------------------------------- registry


def test_region_registry_and_model_ids():
    assert REGION_ORDER == ("structure_distance", "psnr_unedited", "lpips_unedited", "mse_unedited",
                            "ssim_unedited", "clip_whole", "clip_edited")  # PIE-Bench's columns
    assert {name: spec.scale for name, spec in REGION_METRICS.items()} == {
        "structure_distance": 1e3, "psnr_unedited": 1, "lpips_unedited": 1e3, "mse_unedited": 1e4,
        "ssim_unedited": 1e2, "clip_whole": 1, "clip_edited": 1}
    assert region_model_ids("structure_distance", {}, {}) == {"model": "facebook/dino-vitb8", "processor": ""}
    assert region_model_ids("clip_edited", {}, {})["model"] == "openai/clip-vit-large-patch14"
    assert region_model_ids("clip_whole", {"clip": "/m"}, {}) == {"model": "/m", "processor": "/m"}  # follows clip=
    assert region_model_ids("clip_whole", {"clip": "/m", "clip_whole": "/w"}, {})["model"] == "/w"
    with pytest.raises(ValueError, match="unknown region metric 'psnr'"):
        build_region_metric("psnr")


def test_region_sample_checks_once(triple):
    edited, source, mask = triple
    sample = RegionSample.load(edited, source, mask)
    assert sample.edited.shape == (1, 3, H, W) and sample.mask.shape == (1, 1, H, W)
    kept_edit, _ = sample.kept()
    assert float(kept_edit[0, :, 5, 7].abs().sum()) == 0.0  # inside the mask: zeroed
    assert not sample.unedited_empty and not sample.edited_empty
