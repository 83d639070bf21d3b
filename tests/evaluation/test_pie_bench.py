"""Tests of the PIE-Bench loader (evaluation.pie_bench), its run-length masks, and the editing
evaluation on a small set written in PIE-Bench's layout: region metrics per configuration, the
dataset's masks as the region whatever the mask mode, and the masks handed to the editor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from editing.inputs import prepare_image
from evaluation.cli import main
from evaluation.datasets import RunLengthMask
from evaluation.edit import EditConfig, EditTask, region_mask
from evaluation.pie_bench import MAPPING_FILE, check_runs, is_pie_bench, load_pie_bench, strip_brackets
from evaluation.region_metrics import build_region_metric

# (id, image_path, size (W, H), edited rectangle (top, bottom, left, right), type, source, target)
ENTRIES = [
    ("000000000000", "0_random_140/000000000000.jpg", (512, 512), (100, 300, 150, 400), "0",
     "a [cat] sitting on a wooden table", "a [dog] sitting on a wooden table"),
    ("111000000000", "1_change_object_80/1_artificial/111000000000.jpg", (512, 512), (0, 128, 0, 512), "1",
     "a red [apple]", "a red [ball]"),
    ("211000000001", "2_add_object_80/211000000001.jpg", (60, 45), (10, 30, 20, 50), "2",
     "a house by a lake", "a house by a lake [with a boat]"),
]


def rectangle_runs(width: int, rectangle: tuple[int, int, int, int]) -> list[int]:
    top, bottom, left, right = rectangle
    return [value for row in range(top, bottom) for value in (row * width + left, right - left)]


def rectangle_mask(size, rectangle, border=True) -> np.ndarray:
    width, height = size
    top, bottom, left, right = rectangle
    mask = np.zeros((height, width), np.float32)
    mask[top:bottom, left:right] = 1
    if border:
        mask[0], mask[-1], mask[:, 0], mask[:, -1] = 1, 1, 1, 1
    return mask


@pytest.fixture(scope="module")
def pie_dir(tmp_path_factory):
    """Three images in PIE-Bench's layout (two 512 x 512, one 60 x 45), listed in reverse id order."""
    root = tmp_path_factory.mktemp("PIE-Bench_v1")
    mapping = {}
    for key, path, (width, height), rectangle, kind, source, target in reversed(ENTRIES):
        ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
        pixels = (ramp * np.array([1.0, 0.5, 0.25]) + np.arange(height)[:, None, None] * 0.3).astype(np.uint8)
        (root / "annotation_images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "annotation_images" / path)
        mapping[key] = {"image_path": path, "original_prompt": source, "editing_prompt": target,
                        "editing_instruction": "change it", "editing_type_id": kind, "blended_word": "",
                        "mask": rectangle_runs(width, rectangle)}
    (root / MAPPING_FILE).write_text(json.dumps(mapping))
    return root


# ----------------------------------------------------------------------------- masks and prompts


def test_run_length_masks_decode_as_written_by_hand():
    # 4 x 5 image, row-major: runs (2, 3) -> 2 3 4; (10, 1) -> 10; (3, 2) overlaps -> 3 4; (18, 9) is cut at 19
    mask = RunLengthMask((2, 3, 10, 1, 3, 2, 18, 9), height=4, width=5, border=False).array()
    expected = np.zeros(20, np.float32)
    expected[[2, 3, 4, 10, 18, 19]] = 1
    assert mask.dtype == np.float32 and np.array_equal(mask, expected.reshape(4, 5))
    framed = RunLengthMask((12, 1), height=4, width=5).array()  # PIE-Bench's frame of ones
    assert framed.sum() == 14 + 1 and framed[2, 2] == 1 and framed[1, 1] == 0 and framed[0].all()
    image = RunLengthMask((12, 1), 4, 5, border=False).image()
    assert image.mode == "L" and image.size == (5, 4) and np.asarray(image)[2, 2] == 255
    assert np.asarray(image).sum() == 255


def test_bracketed_words_are_unmarked():
    assert strip_brackets("a [cat] sitting on a [wooden]  table") == "a cat sitting on a wooden table"
    assert strip_brackets("[a dog]") == "a dog"
    assert strip_brackets("a house by a lake [with a boat]") == "a house by a lake with a boat"


@pytest.mark.parametrize("runs, message", [
    ([1, 2, 3], "even count"),
    ([5, 2, 400, 1], "run 1 starts at 400, outside the 20x10 image"),
    ([-1, 2], "run 0 starts at -1"),
    ([3, -2], "negative length"),
    ([3, 2.5], "must hold integers"),
    ({"start": 3}, "list of run-length pairs"),
])
def test_malformed_runs_are_refused_by_name(runs, message):
    with pytest.raises(ValueError, match=message) as error:
        check_runs(runs, height=10, width=20, where="PIE-Bench entry '000000000042'")
    assert "'000000000042'" in str(error.value)


# ----------------------------------------------------------------------------- the loader


def test_load_pie_bench_pairs_with_masks(pie_dir):
    assert is_pie_bench(pie_dir) and is_pie_bench(pie_dir / MAPPING_FILE) and not is_pie_bench(pie_dir.parent)
    pairs = load_pie_bench(pie_dir)
    assert [pair.name for pair in pairs] == [entry[0] for entry in ENTRIES]  # sorted by id
    assert [pair.index for pair in pairs] == [0, 1, 2]
    assert pairs[0].source_prompt == "a cat sitting on a wooden table"
    assert pairs[2].target_prompt == "a house by a lake with a boat"
    assert [pair.editing_type for pair in pairs] == ["0", "1", "2"]
    for pair, (_, path, size, rectangle, *_rest) in zip(pairs, ENTRIES):
        assert pair.image == str(pie_dir / "annotation_images" / path)
        assert (pair.mask.width, pair.mask.height) == size
        assert np.array_equal(pair.mask.array(), rectangle_mask(size, rectangle))
    assert [p.name for p in load_pie_bench(pie_dir / MAPPING_FILE, n=2)] == ["000000000000", "111000000000"]
    assert [p.name for p in load_pie_bench(pie_dir, editing_types=["2", "1"])] == ["111000000000", "211000000001"]
    with pytest.raises(ValueError, match="fewer than --n 5"):
        load_pie_bench(pie_dir, n=5)
    with pytest.raises(ValueError, match="unknown editing types \\['12'\\]"):
        load_pie_bench(pie_dir, editing_types=["12"])
    with pytest.raises(FileNotFoundError, match="mapping_file.json"):
        load_pie_bench(pie_dir.parent)


@pytest.mark.parametrize("change, error, message", [
    (lambda e: e.pop("editing_prompt"), ValueError, "lacks \\['editing_prompt'\\]"),
    (lambda e: e.update(original_prompt=" [ ] "), ValueError, "'original_prompt' must be a non-empty string"),
    (lambda e: e.update(image_path="0_random_140/missing.jpg"), FileNotFoundError, "missing.jpg not found"),
    (lambda e: e.update(mask=[512 * 512, 4]), ValueError, "outside the 512x512 image"),
])
def test_malformed_entries_name_their_id(pie_dir, tmp_path, change, error, message):
    mapping = json.loads((pie_dir / MAPPING_FILE).read_text())
    change(mapping["000000000000"])
    (tmp_path / MAPPING_FILE).write_text(json.dumps(mapping))
    (tmp_path / "annotation_images").symlink_to(pie_dir / "annotation_images")
    with pytest.raises(error, match=message) as raised:
        load_pie_bench(tmp_path)
    assert "'000000000000'" in str(raised.value)


def test_region_mask_follows_the_editors_resize_and_crop(pie_dir):
    _, path, size, rectangle, *_ = ENTRIES[2]
    prepared = prepare_image(pie_dir / "annotation_images" / path, max_side=32, multiple=2, min_side=8)
    runs = tuple(rectangle_runs(size[0], rectangle))
    fitted = np.asarray(region_mask(RunLengthMask(runs, size[1], size[0]), prepared.report))
    assert prepared.report.resized_size == (32, 24) and fitted.shape[::-1] == prepared.image.size == (32, 24)
    assert set(np.unique(fitted).tolist()) == {0, 255}  # binary again after the resize
    assert fitted[0].min() == fitted[-1].min() == fitted[:, 0].min() == fitted[:, -1].min() == 255  # the frame
    # the rectangle (rows 10-30 of 45, columns 20-50 of 60) lands at the same relative place
    ys, xs = np.nonzero(fitted[1:-1, 1:-1])
    assert abs(ys.min() + 1 - 10 * 24 / 45) <= 1 and abs(xs.max() + 2 - 50 * 32 / 60) <= 1
    unframed = np.asarray(region_mask(RunLengthMask(runs, size[1], size[0], border=False), prepared.report))
    assert np.array_equal(unframed[1:-1, 1:-1], fitted[1:-1, 1:-1]) and unframed[0].max() == 0


# ----------------------------------------------------------------------------- the editing evaluation


def _pie_argv(pie_dir, tiny_world, tiny_clip_dir, out, *extra):
    return ["edit", "--pie-bench", str(pie_dir), "--model", str(tiny_world / "sd3"), "--steps", "3",
            "--vanilla-n-max", "2", "--vanilla-cfgs", "3", "--max-side", "32", "--out", str(out), "--device", "cpu",
            "--dtype", "float32", "--metrics", "lpips", "--metric-model", f"clip={tiny_clip_dir}", "--no-progress",
            *extra]


def test_pie_bench_edit_run_scores_region_metrics(pie_dir, tiny_world, tiny_clip_dir, tiny_vit_dir,
                                                   cheap_fid_and_lpips, tmp_path):
    out = tmp_path / "pie"
    # no DINO weights: structure distance is noted as unavailable, every other metric is computed
    argv = _pie_argv(pie_dir, tiny_world, tiny_clip_dir, out, "--metric-model",
                     f"structure_distance={tmp_path / 'no-dino'}")
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "PIE-Bench" and summary["mask"] == "none"
    metrics = summary["groups"][0]["metrics"]
    assert summary["groups"][0]["n"] == 3
    assert set(metrics) == {"lpips", "structure_distance", "psnr_unedited", "lpips_unedited", "mse_unedited",
                            "ssim_unedited", "clip_whole", "clip_edited"}
    assert metrics["structure_distance"] is None
    assert any("Structure distance not computed" in note and "structure_distance=DIR" in note
               for note in summary["notes"])
    assert 0 < metrics["mse_unedited"] < 1 and math.isfinite(metrics["psnr_unedited"])
    assert 0 < metrics["ssim_unedited"] <= 1 and metrics["lpips_unedited"] > 0
    assert summary["settings"]["metrics"]["clip_edited"]["model"] == str(tiny_clip_dir)  # follows clip=

    # the region is the dataset's mask at the prepared source's size, and the scores are its scores
    source = Image.open(out / "images/source/00002.png")
    region = Image.open(out / "images/masks/00002.png")
    assert source.size == region.size == (32, 24) and region.mode == "L"
    assert not list((out / "images").rglob("*.mask.png"))  # unmasked edits write no mask
    rows = {row["key"]: row for row in map(json.loads, (out / "per_item.jsonl").read_text().splitlines())}
    row = rows["vanilla-nmax2-cfg3/00000"]
    assert row["region_mask"] == "images/masks/00000.png" and row["editing_type"] == "0"
    assert row["prompt"] == "a dog sitting on a wooden table"
    direct = build_region_metric("psnr_unedited", progress=False).region_scores(
        [out / row["image"]], [row["reference"]], [out / row["region_mask"]], [row["prompt"]])[0]
    assert row["scores"]["psnr_unedited"] == pytest.approx(direct, rel=1e-6)
    markdown = (out / "table.md").read_text()
    assert "Region metrics (PIE-Bench layout" in markdown and "Structure distance ×10^3↓" in markdown
    scaled = [metrics["psnr_unedited"], metrics["lpips_unedited"] * 1e3, metrics["mse_unedited"] * 1e4,
              metrics["ssim_unedited"] * 1e2, metrics["clip_whole"], metrics["clip_edited"]]
    region_rows = [line for line in markdown.splitlines() if line.startswith("| FlowEdit |") and line.count("|") == 11]
    assert region_rows == ["| FlowEdit | 2 | 3 | - | " + " | ".join(f"{value:.2f}" for value in scaled) + " |"]

    # with the DINO folder: only structure distance is computed now; nothing is edited again
    times = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert main(_pie_argv(pie_dir, tiny_world, tiny_clip_dir, out, "--metric-model",
                          f"structure_distance={tiny_vit_dir}", "--strict-metrics")) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == times
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"][0]["metrics"]["structure_distance"] > 0


def test_mask_given_hands_the_editor_the_datasets_masks(pie_dir, tiny_world, tiny_clip_dir, cheap_fid_and_lpips,
                                                        tmp_path, monkeypatch):
    from editing.editor import FlowEditor

    seen = []
    original = FlowEditor.edit

    def recording_edit(self, image, *args, **kwargs):
        seen.append(kwargs.get("mask"))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(FlowEditor, "edit", recording_edit)
    out = tmp_path / "given"
    argv = _pie_argv(pie_dir, tiny_world, tiny_clip_dir, out, "--mask", "given", "--region-metrics",
                     "psnr_unedited,mse_unedited", "--editing-types", "0", "2")
    assert main(argv) == 0
    assert len(seen) == 2
    for mask, index, entry in zip(seen, (0, 1), (ENTRIES[0], ENTRIES[2])):  # the pairs kept are renumbered
        _, _, size, rectangle, *_ = entry
        # the editor gets the dataset's mask at the picture's size, without PIE-Bench's frame ...
        assert isinstance(mask, Image.Image) and mask.size == size
        assert np.array_equal(np.asarray(mask) / 255, rectangle_mask(size, rectangle, border=False))
        # ... and fits it to the prepared image as the region the metrics read (inside the frame)
        region = np.asarray(Image.open(out / f"images/masks/0000{index}.png"))
        used = np.asarray(Image.open(out / f"images/vanilla-nmax2-cfg3/0000{index}.mask.png"))
        assert used.shape == region.shape and region[0].min() == 255 and used[0].max() == 0
        assert np.array_equal(used[1:-1, 1:-1], region[1:-1, 1:-1])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["generation"]["mask"] == "given"
    metrics = summary["groups"][0]["metrics"]
    assert set(metrics) == {"lpips", "psnr_unedited", "mse_unedited"}
    # the editor pastes the source back outside a hard mask: the unedited region is the source's, bit
    # for bit, so MSE 0 and PSNR infinite, which the mean keeps (as PIE-Bench's averaging would)
    assert metrics["mse_unedited"] == 0.0 and metrics["psnr_unedited"] == math.inf
    assert any(note.startswith("PSNR: 2 of 2 edits keep the unedited region bit-identical")
               for note in summary["notes"])
    assert "| FlowEdit | 2 | 3 | - | inf | - | 0.00 | - | - | - |" in (out / "table.md").read_text()
    assert all((out / f"images/vanilla-nmax2-cfg3/0000{i}.mask.png").is_file() for i in (0, 1))


def test_mask_modes_are_checked_before_any_work(tiny_world, pie_dir, tmp_path, capsys):
    with pytest.raises(ValueError, match="EditConfig.mask must be one of none, given, auto, got 'box'"):
        EditTask(EditConfig(out=tmp_path / "a", pairs=pie_dir, mask="box"))
    with pytest.raises(ValueError, match="4 of the 4 pairs .* have none .*--mask none or --mask auto"):
        EditTask(EditConfig(out=tmp_path / "b", pairs=tiny_world / "pairs.jsonl", mask="given"))
    with pytest.raises(ValueError, match="not a PIE-Bench folder"):
        EditTask(EditConfig(out=tmp_path / "c", pairs=tiny_world / "pairs.jsonl", editing_types=("1",)))
    assert main(["edit", "--pie-bench", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "no mapping_file.json there" in capsys.readouterr().err
    task = EditTask(EditConfig(out=tmp_path / "e", pairs=pie_dir))  # unmasked on PIE-Bench: "mask" not in the
    assert "mask" not in task.generation_settings()                 # settings, so older runs still resume
    assert all(item["region_mask"].startswith("images/masks/") for item in task.items())
    plain = EditTask(EditConfig(out=tmp_path / "f", pairs=tiny_world / "pairs.jsonl", n=2))
    assert not any("region_mask" in item for item in plain.items())


def test_mask_auto_saves_the_editors_masks_and_scores_the_datasets(pie_dir, tiny_world, tiny_clip_dir,
                                                                   cheap_fid_and_lpips, tmp_path):
    out = tmp_path / "auto"
    argv = _pie_argv(pie_dir, tiny_world, tiny_clip_dir, out, "--mask", "auto", "--region-metrics", "mse_unedited",
                     "--editing-types", "1")
    assert main(argv) == 0
    found = Image.open(out / "images/vanilla-nmax2-cfg3/00000.mask.png")  # the editor's, beside the edit
    region = Image.open(out / "images/masks/00000.png")
    assert found.size == region.size == Image.open(out / "images/source/00000.png").size
    row = json.loads((out / "per_item.jsonl").read_text().splitlines()[0])
    direct = build_region_metric("mse_unedited", progress=False).region_scores(
        [out / row["image"]], [row["reference"]], [out / "images/masks/00000.png"], ["p"])[0]
    assert row["scores"]["mse_unedited"] == pytest.approx(direct, rel=1e-6)  # scored on the dataset's mask
    assert json.loads((out / "summary.json").read_text())["settings"]["generation"]["mask"] == "auto"
