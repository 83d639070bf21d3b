"""Turning the images the evaluation handles (paths, PIL images, uint8 arrays) into metric inputs.

Every metric starts from 8-bit RGB, as the images are stored on disk, and scales it exactly once:

* ``to_unit_tensor``: float32 (3, H, W) in [0, 1] (``uint8 / 255``, as torchvision's ``ToTensor``);
* ``to_lpips_input``: float32 (B, 3, H, W) in [-1, 1], the range LPIPS was trained on. The authors'
  evaluation fed LPIPS uint8 tensors in 0..255 (the SoftREPA authors' evaluation code), which puts the inputs 128x outside
  that range; we do not copy that bug.

Float arrays are refused: whether a float image is in 0..1 or 0..255 cannot be told from its type,
and guessing wrong is exactly the bug above.
"""

from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from softrepa.images import load_rgb

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]


def _uint8_array_to_pil(array: np.ndarray, channels_first: bool) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 0..255 (got {array.dtype}); a float image is ambiguous "
                        "(0..1 or 0..255?): convert it to uint8 or PIL first")
    if array.ndim == 3 and channels_first:
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image array of shape (H, W, 3) (numpy) or (3, H, W) (torch), got {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return load_rgb(Image.fromarray(np.ascontiguousarray(array)))


def as_rgb_image(image: ImageLike) -> Image.Image:
    """One image as an RGB PIL image. Paths and PIL images go through ``softrepa.images.load_rgb``;
    numpy arrays are (H, W, C) uint8, torch tensors (C, H, W) uint8."""
    if isinstance(image, (str, os.PathLike, Image.Image)):
        return load_rgb(image)
    if isinstance(image, np.ndarray):
        return _uint8_array_to_pil(image, channels_first=False)
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"image tensors must be uint8 0..255 (got {image.dtype}); a float image is ambiguous "
                            "(0..1 or 0..255?): convert it to uint8 or PIL first")
        return _uint8_array_to_pil(image.detach().cpu().numpy(), channels_first=True)
    raise TypeError(f"cannot read an image from a {type(image).__name__}; pass a path, a PIL image or uint8 pixels")


def to_unit_tensor(image: ImageLike) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]: 8-bit RGB divided by 255."""
    array = np.asarray(as_rgb_image(image), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def resize_bilinear(batch: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) float batch, ``align_corners=False``. Without antialiasing
    it is the resize pytorch-fid applies in front of Inception; with it, close to PIL's bilinear
    (what torchvision's ``Resize`` does to PIL images). A no-op when the size already matches."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)


def to_lpips_input(images: ImageLike | Sequence[ImageLike], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Images as the (B, 3, H, W) float32 batch in [-1, 1] that LPIPS expects.

    ``size`` (height, width) resizes every image (bilinear, antialiased: a 1024 px image shrunk to
    299 without it would alias); without it all images must share a size.
    A single image (path, PIL, or one uint8 array/tensor of 3 dims) gives a batch of one; a uint8
    torch tensor of 4 dims is taken as a (B, 3, H, W) batch.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    tensors = [to_unit_tensor(image).unsqueeze(0) for image in images]
    if not tensors:
        raise ValueError("to_lpips_input got no images")
    if size is not None:
        tensors = [resize_bilinear(t, size, antialias=True) for t in tensors]
    shapes = {tuple(t.shape[-2:]) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes {sorted(shapes)}: pass size=(H, W) to resize them")
    return torch.cat(tensors).mul_(2.0).sub_(1.0)
