"""editing.scoring: candidate edits scored by CLIP (and a DINO ViT) against plain computations, on
tiny random-weight models saved to folders (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from editing.masks import PixelMask
from editing.scoring import DEFAULT_CLIP, EditScorer, EditScores, mask_box
from editing.structure import DinoUnavailable

SOURCE_PROMPT = "a star that is tiny and blue"
TARGET_PROMPT = "a triangle that is solid and orange"
SIZE = (48, 40)  # (width, height): not square, so the processor's resize and center crop both act


@pytest.fixture(scope="module")
def scorer(clip_dir) -> EditScorer:
    return EditScorer(clip_dir, device="cpu")


def picture(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def changed(image: Image.Image, box: tuple[int, int, int, int], seed: int) -> Image.Image:
    """``image`` with the pixels inside ``box`` (left, top, right, bottom) replaced by noise."""
    array = np.asarray(image).copy()
    left, top, right, bottom = box
    array[top:bottom, left:right] = np.asarray(picture(seed, (right - left, bottom - top)))
    return Image.fromarray(array)


def box_mask(box: tuple[int, int, int, int], size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), np.float32)
    left, top, right, bottom = box
    mask[top:bottom, left:right] = 1.0
    return mask


def reference_scores(clip_dir: Path, source, edits, mask_crop=None) -> list[dict]:
    """The measures written out: the processor's tensors through get_image_features /
    get_text_features, unit length, dot products; the preservation on crops where given."""
    from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)

    def unit(output):
        output = output if isinstance(output, torch.Tensor) else output.pooler_output
        return F.normalize(output.float(), dim=-1)

    with torch.no_grad():
        def images(pictures):
            return unit(model.get_image_features(
                pixel_values=processor(images=pictures, return_tensors="pt")["pixel_values"]))

        tokens = tokenizer([SOURCE_PROMPT, TARGET_PROMPT], padding=True, return_tensors="pt")
        t_src, t_tar = unit(model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"]))
        whole = images([source, *edits])
        kept = images([im.crop(mask_crop) for im in [source, *edits]]) if mask_crop else whole
    crops = [im.crop(mask_crop) if mask_crop else im for im in [source, *edits]]
    pixels = [np.asarray(im.convert("RGB"), np.float64) / 255 for im in crops]
    return [dict(clip_target=float(i_k @ t_tar), clip_source=float(i_k @ t_src),
                 directional=float(F.cosine_similarity(i_k - whole[0], t_tar - t_src, dim=0)),
                 image_similarity=float(kept[k + 1] @ kept[0]),
                 pixel_similarity=float(1 - np.abs(pixels[k + 1] - pixels[0]).mean()))
            for k, i_k in enumerate(whole[1:])]


def assert_scores_match(scores: list[EditScores], expected: list[dict], tolerance: float = 1e-5):
    assert len(scores) == len(expected)
    for got, want in zip(scores, expected):
        for name, value in want.items():
            assert getattr(got, name) == pytest.approx(value, abs=tolerance), name


# ----------------------------------------------------------------------------- CLIP measures


def test_scores_equal_a_plain_clip_computation(scorer, clip_dir):
    source = picture(0)
    edits = [changed(source, (8, 4, 30, 28), seed=1), picture(2), source]
    scores = scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT)
    assert_scores_match(scores, reference_scores(clip_dir, source, edits))
    assert scores[2].image_similarity == pytest.approx(1.0, abs=1e-5)  # the source itself: kept whole
    assert scores[2].directional == 0.0  # no change: the eps keeps it finite
    assert scores[0].structure_distance is None  # no DINO model given
    assert isinstance(scores[0].clip_target, float) and not isinstance(scores[0].clip_target, np.floating)
    assert scores[0].to_dict() == {"clip_target": scores[0].clip_target, "clip_source": scores[0].clip_source,
                                   "directional": scores[0].directional,
                                   "image_similarity": scores[0].image_similarity,
                                   "pixel_similarity": scores[0].pixel_similarity, "structure_distance": None}
    assert scores[2].pixel_similarity == 1.0 and scores[1].pixel_similarity < scores[0].pixel_similarity < 1.0
    assert scorer.describe() == {"clip": str(clip_dir), "structure": None}
    assert DEFAULT_CLIP == "openai/clip-vit-large-patch14"


def test_a_mask_crops_the_preservation_measures_only(scorer, clip_dir):
    source = picture(3)
    box = (10, 6, 34, 30)
    edits = [changed(source, (0, 0, SIZE[0], 5), seed=4),  # changes only above the mask's box
             changed(source, (14, 10, 30, 26), seed=5)]  # changes inside it
    masked = scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT, mask=box_mask(box))
    assert_scores_match(masked, reference_scores(clip_dir, source, edits, mask_crop=box))
    assert masked[0].image_similarity == pytest.approx(1.0, abs=1e-5)  # identical inside the box
    assert masked[0].pixel_similarity == 1.0
    assert masked[1].image_similarity < 1.0 - 1e-4
    whole = scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT)
    assert whole[0].image_similarity < 1.0 - 1e-4  # without the mask the change counts
    for with_mask, without in zip(masked, whole):  # the alignment measures read the whole image either way
        assert (with_mask.clip_target, with_mask.clip_source, with_mask.directional) == pytest.approx(
            (without.clip_target, without.clip_source, without.directional), abs=1e-6)
    pixel_mask = PixelMask(values=box_mask(box) * 0.5, hard=False)  # soft values and a PixelMask: same box
    assert scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT, mask=pixel_mask) == masked


def test_mask_box_is_the_box_of_the_nonzero_pixels():
    mask = np.zeros((40, 48), np.float32)
    mask[5, 7] = 0.01
    mask[20:31, 12:40] = 1.0
    assert mask_box(mask, SIZE) == (7, 5, 40, 31)
    assert mask_box(None, SIZE) is None
    assert mask_box(np.ones((40, 48), bool), SIZE) == (0, 0, 48, 40)


def test_batched_scores_equal_one_at_a_time(scorer, clip_dir):
    source = picture(6)
    edits = [changed(source, (4, 4, 20, 20), seed=7), picture(8), changed(source, (20, 10, 44, 36), seed=9)]
    mask = box_mask((2, 2, 46, 30))
    batched = scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT, mask=mask)
    one_by_one = [scorer.score(source, [edit], SOURCE_PROMPT, TARGET_PROMPT, mask=mask)[0] for edit in edits]
    small_batches = EditScorer(clip_dir, device="cpu", batch_size=2).score(source, edits, SOURCE_PROMPT,
                                                                           TARGET_PROMPT, mask=mask)
    for scores in (one_by_one, small_batches):
        assert_scores_match(scores, [{name: value for name, value in s.to_dict().items()
                                      if name != "structure_distance"} for s in batched])


# ----------------------------------------------------------------------------- structure distance


def test_structure_distance_equals_the_evaluations(clip_dir, tiny_vit_dir):
    from evaluation import region_metrics
    from evaluation.region_metrics import StructureDistance

    from editing import structure

    scorer = EditScorer(clip_dir, structure=tiny_vit_dir, device="cpu", dtype="float32")
    assert scorer.describe() == {"clip": str(clip_dir), "structure": str(tiny_vit_dir)}
    source = picture(10)
    edits = [changed(source, (8, 8, 28, 24), seed=11), source, picture(12)]
    evaluation = StructureDistance(str(tiny_vit_dir), progress=False)
    expected = evaluation.region_scores(edits, [source] * len(edits))
    got = [s.structure_distance for s in scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT)]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert got[1] == 0.0 and got[0] > 1e-6
    box = (4, 2, 40, 34)  # with a mask: the evaluation's measure of the two crops
    masked = scorer.score(source, edits, SOURCE_PROMPT, TARGET_PROMPT, mask=box_mask(box))
    expected = evaluation.region_scores([edit.crop(box) for edit in edits], [source.crop(box)] * len(edits))
    assert [s.structure_distance for s in masked] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    for name in ("dino_size", "last_key_projection", "key_self_similarity"):  # one implementation
        assert getattr(region_metrics, name) is getattr(structure, name)


def test_missing_models_say_which(tmp_path, clip_dir):
    with pytest.raises(OSError, match="clip: cannot load a CLIP scorer"):
        EditScorer(tmp_path / "no-such-folder", device="cpu")
    with pytest.raises(DinoUnavailable, match="no DINO ViT folder"):
        EditScorer(clip_dir, structure=tmp_path / "no-dino", device="cpu")


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("change, match", [
    (dict(edits=[]), "edits is empty"),
    (dict(edits=picture(0)), "edits must be a sequence"),
    (dict(edits=[picture(1), picture(2, (40, 48))]), r"edits\[1\] is 40x48 but the source is 48x40"),
    (dict(edits=[np.zeros((40, 48, 3), np.uint8)]), r"edits\[0\] must be a PIL image"),
    (dict(source="source.png"), "source must be a PIL image"),
    (dict(target_prompt=None), "target_prompt must be a str"),
    (dict(mask=np.ones((48, 40), np.float32)), r"mask has shape \(48, 40\) but the images are 48x40"),
    (dict(mask=np.ones((40, 48, 1), np.float32)), "mask has shape"),
    (dict(mask=np.full((40, 48), 2.0)), r"mask values must lie in \[0, 1\]"),
    (dict(mask=np.full((40, 48), np.nan)), "mask values"),
    (dict(mask=np.ones((40, 48), np.uint8)), "mask must be float"),
    (dict(mask=np.zeros((40, 48), np.float32)), "mask is all zeros"),
    (dict(mask=[[1.0]]), "mask must be an"),
])
def test_bad_input_is_a_value_error_naming_the_argument(scorer, change, match):
    call = dict(source=picture(0), edits=[picture(1)], source_prompt=SOURCE_PROMPT, target_prompt=TARGET_PROMPT,
                mask=None) | change
    with pytest.raises(ValueError, match=match):
        scorer.score(**call)
