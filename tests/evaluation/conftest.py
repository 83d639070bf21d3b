"""Fixtures shared by the evaluation tests: tiny random-weight models saved to folders (nothing is
downloaded) and cheap stand-ins for the networks that need torchvision or take long on a CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.fid import InceptionFeatures
from evaluation.metrics import LpipsDistance


def _random_images(count: int, size=(24, 20), seed: int = 0) -> list[np.ndarray]:
    """uint8 (H, W, 3) noise images; ``size`` is (width, height)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(autouse=True, scope="module")
def flush_denormals():
    """The tiny random models drive float32 activations into denormals, which CPUs process ~10x
    slower (the editing run takes several times longer without this); flushing them to zero changes
    nothing the tests look at. The flag is per thread; it reaches every kernel because conftest.py
    keeps torch's intra-op pool to the calling thread alone."""
    supported = torch.set_flush_denormal(True)
    yield
    if supported:
        torch.set_flush_denormal(False)


@pytest.fixture
def cheap_fid_and_lpips(monkeypatch):
    """Stand-ins for the Inception features (colour statistics) and the LPIPS network (mean absolute
    difference of its [-1, 1] inputs), so the end-to-end runs stay fast and run without torchvision."""

    def colour_features(self, images, desc=""):
        from evaluation.image_tensors import to_unit_tensor

        return np.stack([to_unit_tensor(image).reshape(3, -1).quantile(torch.tensor([0.1, 0.5, 0.9]), dim=1)
                         .flatten().double().numpy() for image in images])

    monkeypatch.setattr(InceptionFeatures, "__call__", colour_features)
    monkeypatch.setattr(LpipsDistance, "model", property(
        lambda self: (lambda x, y: (x - y).abs().mean(dim=(1, 2, 3), keepdim=True))))


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_clip_dir):
    """Tiny SD3 folder, a token file, a 5-image COCO-like set and editing pairs."""
    from softrepa.tiny import save_tiny_pipeline
    from softrepa.tokens import SoftTokens, SoftTokensConfig, save_tokens

    root = tmp_path_factory.mktemp("eval-world")
    save_tiny_pipeline("sd3", root / "sd3")
    tokens = SoftTokens(SoftTokensConfig(kind="sd3", num_tokens=4, num_layers=2, width=32))
    with torch.no_grad():
        tokens.static.mul_(100.0)  # large enough to visibly change the tiny model's images
    save_tokens(tokens, root / "tokens.safetensors")
    images_dir = root / "coco"
    images_dir.mkdir()
    coco = {"images": [], "annotations": []}
    for i, array in enumerate(_random_images(5, size=(20, 16), seed=3)):
        Image.fromarray(array).save(images_dir / f"{i:012d}.jpg")
        coco["images"].append({"id": 100 + i, "file_name": f"{i:012d}.jpg"})
        coco["annotations"] += [{"image_id": 100 + i, "caption": f"a photo number {i} of a cat"},
                                {"image_id": 100 + i, "caption": "second caption"}]
    (root / "captions.json").write_text(json.dumps(coco))
    with (root / "pairs.jsonl").open("w") as handle:
        for i in range(4):
            handle.write(json.dumps({"image": str(images_dir / f"{i:012d}.jpg"), "image_name": f"{i}.jpg",
                                     "source_prompt": f"a cat number {i}", "target_prompt": f"a dog number {i}"})
                         + "\n")
    return root
