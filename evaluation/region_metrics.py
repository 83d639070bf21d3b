"""Region metrics of PIE-Bench (Ju et al., "PnP Inversion", ICLR 2024): how well an edit keeps what
it should keep and changes what it should change, given a mask of the edited region.

Inputs per sample: the edited image, the source image (same size), the mask of the edited region
M (1 = edited, 0 = kept; a PIL "L" image, a path to one, or a float array in [0, 1], at the images'
size) and the target prompt. Images are 8-bit RGB scaled to [0, 1].

**Unedited region** (PSNR, SSIM, MSE, LPIPS), PIE-Bench's convention (its ``evaluate.py``): both
images are multiplied by K = 1 - M and the metric is computed on the *whole* products, so the
masked-out pixels (0 in both) take part in the averages::

    MSE  = mean((K x_edit - K x_src)^2)            over 3 x H x W values
    PSNR = 10 log10(1 / MSE)                       (data range 1)
    SSIM = SSIM(K x_edit, K x_src)                 (Gaussian window 11, sigma 1.5, data range 1,
                                                    every pixel, borders mirrored: torchmetrics)
    LPIPS = LPIPS(2 K x_edit - 1, 2 K x_src - 1)   (SqueezeNet, as PIE-Bench; masked pixels are -1)

PSNR, SSIM and MSE are torchmetrics' functions; LPIPS runs the ``lpips`` package's network through
``evaluation.metrics.LpipsDistance`` (torchvision-based: the separate metrics environment). When
the unedited region is empty (M all ones) the four are NaN, as in PIE-Bench, and left out of means.

**CLIP** (PIE-Bench's CLIPScore: ``100 max(cos, 0)`` of CLIP ViT-L/14 image and text embeddings,
through ``evaluation.metrics.ClipSimilarity``): the target prompt against the whole edited image
(``clip_whole``) and against the edited region, the edited image times M, truncated to uint8
(``clip_edited``; NaN when M is all zeros).

**Structure distance** (Splice, Tumanyan et al. 2022, as PIE-Bench computes it): the keys of the
last layer of DINO ViT-B/8 (``facebook/dino-vitb8``, transformers' ``ViTModel``; the key
projection's output read by a forward hook), for T tokens (CLS included) the cosine
self-similarity S_ij = <k_i, k_j> / max(|k_i| |k_j|, 1e-8), and the mean squared difference of the
two images' T x T matrices. The images are resized so the short side is 224 (the long side at most
480; bilinear, antialiased) and normalized with ImageNet's mean and std. Inputs are in [0, 1] as in
Splice; PIE-Bench's code fed 0..255 values into the same normalization (``pixel_scale=255``
reproduces that). The computation is ``editing.structure``'s (shared with ``editing.scoring``, which
scores candidate edits with it); this module keeps the benchmark's names. Without the weights (no
Hub access, no local folder) it raises ``WeightsUnavailable``, which the evaluation reports as a
note while the other metrics run.

``REGION_METRICS`` is the registry (PIE-Bench's column order); ``build_region_metric`` makes one.
Every metric object has ``region_scores(images, references, masks, prompts) -> list[float]``.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from editing.structure import (DinoUnavailable, dino_input, dino_size, key_self_similarity,  # noqa: F401 (re-exported)
                               last_key_projection, last_keys, load_dino, similarity_distance)
from evaluation.image_tensors import ImageLike, as_rgb_image, to_unit_tensor
from evaluation.metrics import ClipSimilarity, LpipsDistance, MissingDependency, batches, require

MaskLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
TORCHMETRICS_INSTALL = 'pip install -e ".[eval]" (it brings torchmetrics==1.8.2)'


class WeightsUnavailable(MissingDependency):
    """A metric's model weights cannot be loaded here (not cached, no Hub access, no local folder)."""


# ----------------------------------------------------------------------------- inputs


def as_mask_array(mask: MaskLike) -> np.ndarray:
    """A mask as a float32 (H, W) array in [0, 1]: PIL images (any mode, read as "L") and paths are
    divided by 255; float or bool arrays / tensors are taken as they are. Integer arrays are
    refused (0..1 or 0..255 cannot be told apart)."""
    if isinstance(mask, (str, os.PathLike)):
        with Image.open(mask) as opened:
            mask = opened.convert("L")
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"cannot read a mask from a {type(mask).__name__}; pass a PIL 'L' image, a path, or a "
                        "float array in [0, 1]")
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.floating):
        raise TypeError(f"mask arrays must be float in [0, 1] or bool (got {mask.dtype}); for 0..255 masks pass a "
                        "PIL 'L' image")
    mask = np.squeeze(mask.astype(np.float32))
    if mask.ndim != 2:
        raise ValueError(f"a mask must be (H, W), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 1 or not np.isfinite(mask).all()):
        raise ValueError(f"mask values must lie in [0, 1] (got {mask.min():g} .. {mask.max():g})")
    return mask


@dataclass
class RegionSample:
    """One edited image, its source and the edited-region mask, checked to share one size.

    edited / source: (1, 3, H, W) float32 in [0, 1]; mask: (1, 1, H, W) float32 in [0, 1].
    """

    edited: torch.Tensor
    source: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def load(cls, edited: ImageLike, source: ImageLike, mask: MaskLike,
             device: str | torch.device = "cpu") -> "RegionSample":
        x_edit, x_src = to_unit_tensor(edited), to_unit_tensor(source)
        if x_edit.shape != x_src.shape:
            raise ValueError(f"the edited image is {_size(x_edit)} but the source is {_size(x_src)}: compare images "
                             "of one size (the prepared source the editor fed, or resize the edited image to it)")
        m = as_mask_array(mask)
        if m.shape != tuple(x_edit.shape[-2:]):
            raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]} but the images are {_size(x_edit)}: resize the "
                             "mask to the images' size first (nearest, to keep it binary)")
        return cls(x_edit[None].to(device), x_src[None].to(device), torch.from_numpy(m)[None, None].to(device))

    def kept(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both images times (1 - M): the unedited region, PIE-Bench's way."""
        keep = 1.0 - self.mask
        return self.edited * keep, self.source * keep

    @property
    def unedited_empty(self) -> bool:
        return bool((1.0 - self.mask).sum() == 0)

    @property
    def edited_empty(self) -> bool:
        return bool(self.mask.sum() == 0)


def _size(tensor: torch.Tensor) -> str:
    return f"{tensor.shape[-1]}x{tensor.shape[-2]}"


class RegionMetric(ABC):
    """A metric of an edited image against its source, a mask of the edited region and a prompt."""

    name: str

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16, progress: bool = True):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress

    @abstractmethod
    def region_scores(self, images: Sequence[ImageLike], references: Sequence[ImageLike], masks: Sequence[MaskLike],
                      prompts: Sequence[str]) -> list[float]: ...

    def _samples(self, images, references, masks, prompts=None):
        counts = {len(images), len(references), len(masks)} | ({len(prompts)} if prompts is not None else set())
        if len(counts) != 1:
            raise ValueError(f"{len(images)} images, {len(references)} references, {len(masks)} masks"
                             + (f", {len(prompts)} prompts" if prompts is not None else "") + ": one of each per item")
        for start, stop in batches(len(images), self.batch_size, self.name, self.progress):
            for index in range(start, stop):
                yield RegionSample.load(images[index], references[index], masks[index], self.device)


# ----------------------------------------------------------------------------- unedited region: PSNR, SSIM, MSE


def unedited_psnr(sample: RegionSample) -> float:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(*sample.kept(), data_range=1.0))


def unedited_ssim(sample: RegionSample) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(sample.edited.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images at least 11 px on each side (its Gaussian window), got "
                         f"{_size(sample.edited)}")
    return float(structural_similarity_index_measure(*sample.kept(), data_range=1.0))


def unedited_mse(sample: RegionSample) -> float:
    from torchmetrics.functional import mean_squared_error

    edited, source = sample.kept()
    return float(mean_squared_error(edited.contiguous(), source.contiguous()))


class PixelRegionMetric(RegionMetric):
    """PSNR, SSIM or MSE on the unedited region (torchmetrics); NaN where that region is empty."""

    def __init__(self, name: str, function: Callable[[RegionSample], float], **kwargs):
        super().__init__(**kwargs)
        self.name = name
        self.function = function

    def region_scores(self, images, references, masks, prompts=None):
        require("torchmetrics", "torchmetrics", self.name, TORCHMETRICS_INSTALL)
        return [math.nan if sample.unedited_empty else self.function(sample)
                for sample in self._samples(images, references, masks)]


class UneditedLpips(RegionMetric):
    """LPIPS on the unedited region: ``LpipsDistance``'s network (``lpips`` package) on 2 K x - 1."""

    name = "lpips_unedited"

    def __init__(self, net: str = "squeeze", **kwargs):
        super().__init__(**kwargs)
        self.lpips = LpipsDistance(net, device=self.device, progress=False)

    @torch.no_grad()
    def region_scores(self, images, references, masks, prompts=None):
        model = self.lpips.model  # MissingDependency (with the install line) where lpips does not import
        scores = []
        for sample in self._samples(images, references, masks):
            if sample.unedited_empty:
                scores.append(math.nan)
                continue
            edited, source = sample.kept()
            scores.append(float(model(edited * 2 - 1, source * 2 - 1).reshape(())))
        return scores


# ----------------------------------------------------------------------------- CLIP, whole and edited region


class RegionClip(RegionMetric):
    """PIE-Bench's CLIP similarity, ``100 max(cos, 0)``, of the target prompt and the whole edited
    image (part "whole") or the edited image times the mask, truncated to uint8 (part "edited")."""

    def __init__(self, name: str, part: str, model_id: str, processor_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if part not in ("whole", "edited"):
            raise ValueError(f"part must be 'whole' or 'edited', got {part!r}")
        self.name, self.part = name, part
        self.clip = ClipSimilarity(name, model_id, processor_id, device=self.device, batch_size=self.batch_size,
                                   progress=self.progress)

    def region_scores(self, images, references, masks, prompts=None):
        if prompts is None or len(prompts) != len(images) or len(masks) != len(images):
            raise ValueError("CLIP region scores need one prompt and one mask per image")
        inputs, keep = [], []
        for image, mask in zip(images, masks):
            pixels = np.asarray(as_rgb_image(image), dtype=np.uint8)
            if self.part == "whole":
                inputs.append(pixels)
                keep.append(True)
                continue
            m = as_mask_array(mask)
            if m.shape != pixels.shape[:2]:
                raise ValueError(f"the mask is {m.shape[1]}x{m.shape[0]} but the image is {pixels.shape[1]}x"
                                 f"{pixels.shape[0]}: resize the mask to the image's size first")
            inputs.append((pixels * m[..., None]).astype(np.uint8))  # PIE-Bench: np.uint8(image * mask)
            keep.append(bool(m.sum() > 0))
        todo = [index for index, ok in enumerate(keep) if ok]
        cosines = self.clip.score([inputs[i] for i in todo], [prompts[i] for i in todo]) if todo else []
        scores = [math.nan] * len(images)
        for index, cosine in zip(todo, cosines):
            scores[index] = 100.0 * max(cosine, 0.0)
        return scores


# ----------------------------------------------------------------------------- structure distance (DINO ViT)


class StructureDistance(RegionMetric):
    """MSE between the DINO ViT key self-similarity matrices of the source and the edited image.

    model_id: Hub id or local folder of a transformers ``ViTModel`` (default ``facebook/dino-vitb8``).
    short_side / max_long_side: the resize in front of the ViT. pixel_scale: 1 (Splice) or 255
    (PIE-Bench's code) for the pixel values fed to the ImageNet normalization.
    """

    name = "structure_distance"

    def __init__(self, model_id: str = "facebook/dino-vitb8", short_side: int = 224, max_long_side: int = 480,
                 pixel_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.model_id = str(model_id)
        self.short_side, self.max_long_side, self.pixel_scale = short_side, max_long_side, float(pixel_scale)

    @cached_property
    def model(self) -> torch.nn.Module:
        try:
            return load_dino(self.model_id, self.device)
        except DinoUnavailable as exc:
            raise WeightsUnavailable(f"structure distance unavailable: {exc}; download facebook/dino-vitb8 where the "
                                     "Hub is reachable and pass its folder (config.json + weights) with "
                                     "--metric-model structure_distance=DIR") from exc

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> resized and normalized ViT input, in the model's dtype."""
        return dino_input(pixels, self.short_side, self.max_long_side, self.pixel_scale,
                          next(self.model.parameters()).dtype)

    @torch.no_grad()
    def keys(self, pixels: torch.Tensor) -> torch.Tensor:
        """The last layer's keys (B, T, D) for (B, 3, H, W) images in [0, 1]."""
        return last_keys(self.model, self.preprocess(pixels.to(self.device)))

    def region_scores(self, images, references, masks=None, prompts=None):
        masks = masks if masks is not None else [np.zeros((1, 1), np.float32)] * len(images)
        if len(images) != len(references):
            raise ValueError(f"{len(images)} images but {len(references)} references")
        scores = []
        for start, stop in batches(len(images), self.batch_size, self.name, self.progress):
            for image, reference in zip(images[start:stop], references[start:stop]):  # the whole images
                edited, source = to_unit_tensor(image), to_unit_tensor(reference)
                if edited.shape != source.shape:
                    raise ValueError(f"the edited image is {_size(edited)} but the source is {_size(source)}: "
                                     "compare images of one size")
                similarity = key_self_similarity(self.keys(torch.stack([source, edited])))  # (2, T, T)
                scores.append(float(similarity_distance(similarity[:1], similarity[1:])[0]))
        return scores


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RegionMetricSpec:
    """One column of PIE-Bench's table. scale: the factor the table prints the value times (PIE-Bench
    prints structure distance x 10^3, LPIPS x 10^3, MSE x 10^4, SSIM x 10^2)."""

    name: str
    label: str
    higher_is_better: bool
    default_model: str
    build: Callable[..., RegionMetric]
    scale: float = 1.0
    default_processor: str = ""
    package: str = ""
    module: str = ""
    kind: str = "region"


def _pixel(function):
    return lambda name, model, processor, **kw: PixelRegionMetric(name, function, **kw)


def _clip(part: str):
    return lambda name, model, processor, **kw: RegionClip(name, part, model, processor or model, **kw)


CLIP_MODEL = "openai/clip-vit-large-patch14"
REGION_METRICS: dict[str, RegionMetricSpec] = {
    "structure_distance": RegionMetricSpec(
        "structure_distance", "Structure distance", False, "facebook/dino-vitb8",
        lambda name, model, processor, **kw: StructureDistance(model, **kw), scale=1e3, package="transformers",
        module="transformers"),
    "psnr_unedited": RegionMetricSpec("psnr_unedited", "PSNR", True, "torchmetrics", _pixel(unedited_psnr),
                                      package="torchmetrics", module="torchmetrics"),
    "lpips_unedited": RegionMetricSpec("lpips_unedited", "LPIPS", False, "squeeze",
                                       lambda name, model, processor, **kw: UneditedLpips(model, **kw), scale=1e3,
                                       package="lpips", module="lpips"),
    "mse_unedited": RegionMetricSpec("mse_unedited", "MSE", False, "torchmetrics", _pixel(unedited_mse), scale=1e4,
                                     package="torchmetrics", module="torchmetrics"),
    "ssim_unedited": RegionMetricSpec("ssim_unedited", "SSIM", True, "torchmetrics", _pixel(unedited_ssim),
                                      scale=1e2, package="torchmetrics", module="torchmetrics"),
    "clip_whole": RegionMetricSpec("clip_whole", "CLIP whole", True, CLIP_MODEL, _clip("whole"),
                                   default_processor=CLIP_MODEL, package="transformers", module="transformers"),
    "clip_edited": RegionMetricSpec("clip_edited", "CLIP edited", True, CLIP_MODEL, _clip("edited"),
                                    default_processor=CLIP_MODEL, package="transformers", module="transformers"),
}
REGION_ORDER = tuple(REGION_METRICS)  # PIE-Bench's column order


def get_region_spec(name: str) -> RegionMetricSpec:
    if name not in REGION_METRICS:
        raise ValueError(f"unknown region metric {name!r}; choose from {', '.join(REGION_METRICS)}")
    return REGION_METRICS[name]


def region_model_ids(name: str, models: dict[str, str], processors: dict[str, str]) -> dict[str, str]:
    """The model and processor a region metric uses: its own entry of ``models`` / ``processors``;
    for the two CLIP metrics, else the "clip" metric's (one CLIP flag serves every CLIP column);
    else PIE-Bench's default. A model given alone is also its processor."""
    spec = get_region_spec(name)
    fallback = "clip" if name in ("clip_whole", "clip_edited") else None
    model = models.get(name) or (models.get(fallback) if fallback else None)
    processor = processors.get(name) or (processors.get(fallback) if fallback else None)
    if processor:
        return {"model": model or spec.default_model, "processor": processor}
    if model:
        return {"model": model, "processor": model if spec.default_processor else ""}
    return {"model": spec.default_model, "processor": spec.default_processor}


def build_region_metric(name: str, model: str | os.PathLike | None = None, processor: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu", batch_size: int = 16,
                        progress: bool = True) -> RegionMetric:
    """A region metric by name; ``model`` / ``processor`` as in ``region_model_ids``."""
    ids = region_model_ids(name, {name: str(model)} if model else {}, {name: str(processor)} if processor else {})
    return get_region_spec(name).build(name, ids["model"], ids["processor"], device=device, batch_size=batch_size,
                                       progress=progress)


def region_availability(name: str) -> str:
    """'available' (model weights are only checked when used), or why the metric cannot run here."""
    spec = get_region_spec(name)
    install = TORCHMETRICS_INSTALL if spec.package == "torchmetrics" else None
    try:
        require(spec.module, spec.package, spec.label, *([install] if install else []))
    except MissingDependency as exc:
        return f"missing: {exc}"
    return "available" + (" (weights load on first use)" if spec.name == "structure_distance" else "")
