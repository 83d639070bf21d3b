"""Masks for local edits: a person's mask checked and fitted to the prepared image, brought to the
latent grid, found automatically from the edit, and the source pasted back outside it.

A mask is float32 in [0, 1] at image resolution (H, W): 1 = the edit may change this pixel,
0 = keep it. It is *hard* when every value is 0 or 1.

* **Reading** (``read_mask``, the one place that owns what a mask file may be): a grey image
  ("L", "1", 16-bit, float), or the alpha of an image with transparency (a brush layer: painted =
  opaque), or an RGB image whose three channels are equal (a black-and-white mask saved as RGB).
  Colour without alpha is refused: which channel would mean "edit"?
* **Fitting** (``fit_mask``): the mask is drawn on the *original* picture; the editor downscales
  and center-crops that picture (``editing.inputs.prepare_image``), so the mask goes through the
  same resize and crop. A mask of another size with the image's aspect is resized (with a note);
  another aspect is refused. A hard mask stays hard (re-thresholded at 0.5 after resizing).
* **Latent resolution** (``latent_mask``): area downsampling by the VAE factor f, i.e. each latent
  cell gets the mean of its f x f pixels (``F.avg_pool2d``), so a cell half covered edits at half
  strength. Optional feathering before (``feather_px``: a Gaussian blur of the pixel mask, sigma in
  pixels) and after (``feather_latent``: sigma in latent cells) widens the transition.
* **Automatic region** (``AutoMask``): LEDITS++-style implicit masking from FlowEdit's own
  velocity difference. With s(x) = the channel mean of |v_delta| at latent cell x, averaged over
  the first ``steps`` FlowEdit steps, the mask is ``dilate(s >= threshold * max s, dilate)``
  (binary, at latent resolution). The defaults were chosen by ``benchmarks/local_edits.py``.
* **Paste-back** (``paste_back``): after decoding, the source pixels outside the mask are copied
  back, so the kept region equals the input bit for bit (the VAE decoder mixes neighbouring
  latents, so equal latents alone do not give equal pixels). The edge is feathered *inward*:
  alpha = mask x min(1, d / feather), d = chessboard distance in pixels to the nearest kept pixel,
  so alpha is exactly 0 wherever the mask is 0.

How FlowEdit uses the latent mask is in ``editing/flowedit.py``.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from editing.inputs import InputReport
from softrepa.images import MAX_PIXELS, ImageInputError

MaskLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray, torch.Tensor]
ASPECT_TOLERANCE = 0.01  # relative aspect difference still treated as "the same picture, another size"
MAX_FEATHER = 256  # pixels or latent cells: a blur wider than this is a mistake, not a setting


class MaskError(ImageInputError):
    """A mask that cannot be used, with a message for a person."""


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AutoMask:
    """Find the edit's region from the edit itself (see the module docstring).

    steps: FlowEdit steps whose |v_delta| is averaged before the mask is fixed (fewer if the edit
        has fewer); those steps are masked after the fact.
    threshold: a latent cell is in the region when its score is >= threshold x the highest score.
    dilate: latent cells the region grows by on each side (a square neighbourhood).
    """

    steps: int = 8
    threshold: float = 0.6
    dilate: int = 2

    def check(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"auto mask steps must be a whole number >= 1, got {self.steps!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"auto mask threshold must be in (0, 1], got {self.threshold!r}")
        if isinstance(self.dilate, bool) or not isinstance(self.dilate, int) or not 0 <= self.dilate <= MAX_FEATHER:
            raise ValueError(f"auto mask dilate must be a whole number of latent cells in 0..{MAX_FEATHER}, "
                             f"got {self.dilate!r}")

    @staticmethod
    def score(v_delta: torch.Tensor) -> torch.Tensor:
        """One step's evidence: the channel mean of |v_delta| (N, C, h, w) -> (N, 1, h, w)."""
        return v_delta.abs().mean(dim=1, keepdim=True)

    def find(self, scores: list[torch.Tensor]) -> torch.Tensor:
        """The binary region (N, 1, h, w) float32 from the per-step ``score`` maps (each candidate its own)."""
        evidence = torch.stack(scores).mean(dim=0)  # (N, 1, h, w): one map per candidate
        region = (evidence >= float(self.threshold) * evidence.amax(dim=(2, 3), keepdim=True)).float()
        return dilate(region, self.dilate)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "threshold": float(self.threshold), "dilate": self.dilate}


@dataclass(frozen=True)
class MaskOptions:
    """How a mask is applied.

    feather_px: Gaussian sigma (pixels) applied to the pixel mask before it goes to latents.
    feather_latent: Gaussian sigma (latent cells) applied at latent resolution.
    paste_back: copy the source pixels back outside the mask after decoding; None = on for hard
        masks (drawn, uploaded black-and-white, automatic), off for soft ones.
    paste_feather_px: width of the inward ramp of the paste-back edge, in pixels (0 = a hard seam).
    """

    feather_px: float = 0.0
    feather_latent: float = 0.0
    paste_back: bool | None = None
    paste_feather_px: int = 4

    def check(self) -> None:
        for name in ("feather_px", "feather_latent", "paste_feather_px"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_FEATHER:
                raise ValueError(f"mask {name} must be a number in 0..{MAX_FEATHER}, got {value!r}")
        if self.paste_back not in (None, True, False):
            raise ValueError(f"mask paste_back must be true, false or unset, got {self.paste_back!r}")

    def pastes_back(self, hard: bool) -> bool:
        return hard if self.paste_back is None else bool(self.paste_back)

    def to_dict(self) -> dict[str, Any]:
        return {"feather_px": float(self.feather_px), "feather_latent": float(self.feather_latent),
                "paste_back": self.paste_back, "paste_feather_px": int(self.paste_feather_px)}


@dataclass
class PixelMask:
    """A mask fitted to a prepared image: values (H, W) float32 in [0, 1], and what was done."""

    values: np.ndarray
    hard: bool
    notes: list[str] = field(default_factory=list)

    @property
    def coverage(self) -> float:
        """The fraction of the image the edit may change."""
        return float(self.values.mean())

    def image(self) -> Image.Image:
        """As a grey PNG-able image (white = may change)."""
        return mask_image(self.values)


# ----------------------------------------------------------------------------- reading and fitting


def _open_mask(source: MaskLike) -> Image.Image | np.ndarray:
    if isinstance(source, (Image.Image, np.ndarray)):
        return source
    if isinstance(source, torch.Tensor):
        return source.detach().to("cpu", torch.float32).numpy()
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise MaskError("the mask is empty (0 bytes)")
        return Image.open(io.BytesIO(source))
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise MaskError(f"mask file {source} does not exist")
        if os.path.getsize(source) == 0:
            raise MaskError(f"mask file {source} is empty (0 bytes)")
        return Image.open(source)
    raise MaskError(f"a mask must be an image file, image or array, got {type(source).__name__}")


def _array_values(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise MaskError(f"a mask array must be (H, W) with values in [0, 1], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise MaskError("a mask array must hold values in [0, 1] (or uint8 0..255)")
    return values


def _image_values(image: Image.Image) -> np.ndarray:
    """(H, W) in [0, 1] from a mask image: grey levels, alpha, or equal RGB channels."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():  # a float image (TIFF) may hold NaN or infinities
            raise MaskError("the mask holds values that are not numbers (NaN or infinite): use a black-and-white "
                            "PNG (white = edit)")
        return np.clip(values if values.max() <= 1.0 else values / 255.0, 0.0, 1.0)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any():
        raise MaskError(f"the mask is a colour ({image.mode}) image with no transparency, so it is unclear what "
                        "to edit: use a black-and-white image (white = edit) or a transparent image with the "
                        "region painted")
    return rgb[..., 0].astype(np.float32) / 255.0


def read_mask(source: MaskLike) -> np.ndarray:
    """The mask's values (H, W) float32 in [0, 1]; ``MaskError`` saying what is wrong otherwise.

    Animated images use their first frame; EXIF orientation is applied as for the source image.
    """
    try:
        opened = _open_mask(source)
        if isinstance(opened, np.ndarray):
            return _array_values(opened)
        width, height = opened.size
        if width * height > MAX_PIXELS:
            raise MaskError(f"the mask is {width}x{height} pixels, over the limit of {MAX_PIXELS:,}")
        if getattr(opened, "n_frames", 1) > 1:
            opened.seek(0)  # an animated image: its first frame, as for the source image
        opened = ImageOps.exif_transpose(opened)
        opened.load()
        return _image_values(opened)
    except MaskError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MaskError("the mask is not an image PIL can read (use a PNG: white or painted = the region "
                        "to edit)") from exc


def _is_hard(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def _resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float mask to ``size`` = (width, height): area-like for shrinking, bilinear for growing."""
    image = Image.fromarray(values.astype(np.float32), mode="F")
    shrinking = size[0] < image.size[0]
    return np.asarray(image.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR),
                      dtype=np.float32)


def fit_mask(values: np.ndarray, report: InputReport) -> PixelMask:
    """The mask (drawn on the original picture) through the editor's resize and center crop.

    Raises ``MaskError`` when the mask's aspect differs from the picture's, or nothing is left to edit.
    """
    hard = _is_hard(values)
    notes = []
    (width, height), (mask_w, mask_h) = report.original_size, (values.shape[1], values.shape[0])
    if (mask_w, mask_h) != (width, height):
        if abs(mask_w / mask_h - width / height) > ASPECT_TOLERANCE * width / height:
            raise MaskError(f"the mask is {mask_w}x{mask_h} but the image is {width}x{height}, a different shape: "
                            f"draw the mask on this image, or give a {width}x{height} mask")
        values = _resize(values, (width, height))
        notes.append(f"the mask was {mask_w}x{mask_h}; resized to the image's {width}x{height}")
    if report.resized_size is not None:
        values = _resize(values, report.resized_size)
    final_w, final_h = report.final_size
    top, left = (values.shape[0] - final_h) // 2, (values.shape[1] - final_w) // 2  # as prepare_image crops
    values = np.clip(values[top:top + final_h, left:left + final_w], 0.0, 1.0)
    if hard:
        values = (values >= 0.5).astype(np.float32)
    if not values.any():
        raise MaskError("the mask is empty (all black or transparent), so there is nothing to edit: paint the "
                        "region the edit may change (white or opaque), or edit without a mask")
    return PixelMask(values=np.ascontiguousarray(values, dtype=np.float32), hard=hard, notes=notes)


def prepare_mask(source: MaskLike, report: InputReport) -> PixelMask:
    """Read ``source`` and fit it to the image ``report`` describes (the one entry for user masks)."""
    return fit_mask(read_mask(source), report)


# ----------------------------------------------------------------------------- latent grid


def gaussian_blur(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1, 1, h, w) blurred with a separable Gaussian of ``sigma`` (replicate padding); 0 = unchanged."""
    if sigma <= 0:
        return mask
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(mask, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1)).clamp(0.0, 1.0)


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """(1, 1, h, w) grown by ``cells`` on each side (a square neighbourhood's maximum)."""
    if cells <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * cells + 1, stride=1, padding=cells)


def feathered(mask: PixelMask, feather_px: float) -> PixelMask:
    """The mask blurred with a Gaussian of sigma ``feather_px`` pixels (0: the mask itself)."""
    if feather_px <= 0:
        return mask
    pixels = torch.from_numpy(mask.values).view(1, 1, *mask.values.shape)  # (1, 1, H, W)
    values = gaussian_blur(pixels, float(feather_px))[0, 0].numpy()
    return PixelMask(values=np.ascontiguousarray(values), hard=_is_hard(values), notes=list(mask.notes))


def latent_mask(mask: PixelMask, factor: int, feather_latent: float = 0.0, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """The pixel mask on the latent grid: (1, 1, H / factor, W / factor) float32 (module docstring)."""
    height, width = mask.values.shape
    if height % factor or width % factor:
        raise ValueError(f"the mask is {width}x{height}, not a multiple of the VAE factor {factor}: fit it to the "
                         "prepared image first (fit_mask)")
    pixels = torch.from_numpy(mask.values).to(device).view(1, 1, height, width)
    latent = F.avg_pool2d(pixels, kernel_size=factor)  # (1, 1, h, w): each cell's covered fraction
    return gaussian_blur(latent, float(feather_latent))


def pixel_mask_of_latent(latent: torch.Tensor, factor: int) -> PixelMask:
    """A latent-grid mask (1, 1, h, w) at image resolution (each cell repeated f x f)."""
    values = latent[0, 0].to("cpu", torch.float32).repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    values = values.numpy()
    return PixelMask(values=np.ascontiguousarray(values), hard=_is_hard(values))


# ----------------------------------------------------------------------------- after decoding


def paste_alpha(values: np.ndarray, feather_px: int) -> np.ndarray:
    """How much of the edit each pixel keeps: the mask ramped inward over ``feather_px`` pixels.

    alpha = mask x min(1, d / feather) with d the chessboard distance to the nearest kept pixel
    (counted by repeated 3x3 erosion), so alpha = 0 exactly where the mask is 0.
    """
    inside = torch.from_numpy((values > 0).astype(np.float32)).view(1, 1, *values.shape)
    if feather_px <= 0:
        return values.copy()
    ramp, eroded = torch.zeros_like(inside), inside
    for _ in range(int(feather_px)):
        ramp += eroded
        eroded = -F.max_pool2d(-eroded, kernel_size=3, stride=1, padding=1)  # erosion (border counts as inside)
    return values * (ramp[0, 0].numpy() / float(feather_px))


def paste_back(edited: Image.Image, source: Image.Image, mask: PixelMask, feather_px: int) -> Image.Image:
    """The edited image with the source's pixels wherever the mask is 0 (bit for bit)."""
    if edited.size != source.size or mask.values.shape != (source.size[1], source.size[0]):
        raise ValueError(f"paste_back needs equal sizes: edited {edited.size}, source {source.size}, "
                         f"mask {mask.values.shape[::-1]}")
    alpha = paste_alpha(mask.values, feather_px)[..., None]  # (H, W, 1)
    src = np.asarray(source.convert("RGB"), dtype=np.float32)
    out = np.asarray(edited.convert("RGB"), dtype=np.float32)
    blended = np.rint(src + alpha * (out - src)).clip(0, 255)
    blended = np.where(alpha > 0, blended, src)  # exactly the source outside the mask
    return Image.fromarray(blended.astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------- showing masks


def mask_image(values: np.ndarray) -> Image.Image:
    """(H, W) in [0, 1] -> grey "L" image, white = may change."""
    return Image.fromarray(np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8), mode="L")


def overlay(image: Image.Image, values: np.ndarray, colour: tuple[int, int, int] = (255, 48, 48),
            opacity: float = 0.45) -> Image.Image:
    """``image`` with the mask's region tinted (for showing where an edit may act)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = (np.clip(values, 0.0, 1.0) * opacity)[..., None]
    tinted = rgb * (1 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    return Image.fromarray(np.rint(tinted).clip(0, 255).astype(np.uint8), mode="RGB")
