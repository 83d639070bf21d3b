"""DINO-ViT structure distance (Splice, Tumanyan et al. 2022; PIE-Bench's "structure distance"): how
far an edit moved the *layout* of a picture, read from the keys of a self-supervised ViT.

For a batch of images x in [0, 1], (B, 3, H, W), a transformers ``ViTModel`` (DINO ViT-B/8,
``facebook/dino-vitb8``, in PIE-Bench) and T tokens (CLS included)::

    (h, w) = dino_size(H, W)                        short side 224, long side at most 480
    x'     = (resize(x, (h, w)) * pixel_scale - mean) / std      ImageNet mean / std; bilinear,
                                                                 antialiased (no-op at (h, w))
    K      = the last layer's key projection output           (B, T, D), read by a forward hook
    S_ij   = <k_i, k_j> / max(|k_i| |k_j|, eps)               (B, T, T), eps = 1e-8
    d(src, edit) = mean_ij (S_edit,ij - S_src,ij)^2            one number per edit; 0 = same layout

pixel_scale is 1 in Splice; PIE-Bench's code fed 0..255 values into the same normalization (255
reproduces that). This is the one implementation: ``evaluation.region_metrics.StructureDistance``
(the benchmark column) and ``editing.scoring.EditScorer`` (scoring candidate edits) both call it.
Device and dtype are the model's: inputs go to the model's device and dtype, similarities are
float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

DINO_MODEL = "facebook/dino-vitb8"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoUnavailable(OSError):
    """The DINO ViT weights cannot be loaded (no such folder, not cached and no Hub access, no weights)."""


def load_dino(model_id: str | os.PathLike = DINO_MODEL, device: torch.device | str = "cpu",
              dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A transformers ``ViTModel`` (no pooling layer) in eval mode on ``device`` / ``dtype``, from a Hub
    id or a local folder; ``DinoUnavailable`` saying why where it cannot be loaded."""
    from transformers import ViTModel

    name = str(model_id)
    local = Path(name).expanduser()
    if (local.is_absolute() or name.startswith((".", "~"))) and not local.exists():
        raise DinoUnavailable(f"no DINO ViT folder at {local}")
    try:
        model = ViTModel.from_pretrained(name, add_pooling_layer=False)
    except (OSError, ValueError) as exc:  # not cached and no Hub access, a bad id, a folder without weights
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise DinoUnavailable(f"the DINO ViT weights {name!r} could not be loaded ({type(exc).__name__}: "
                              f"{first_line})") from exc
    return model.eval().to(device=device, dtype=dtype)


def dino_size(height: int, width: int, short: int = 224, max_long: int = 480) -> tuple[int, int]:
    """(H, W) with the short side ``short`` and the aspect kept, unless the long side would pass
    ``max_long`` (then it is ``max_long``): torchvision's ``Resize(short, max_size=max_long)``."""
    small, large = sorted((height, width))
    new_small, new_large = short, int(short * large / small)
    if new_large > max_long:
        new_small, new_large = int(max_long * new_small / new_large), max_long
    return (new_small, new_large) if height <= width else (new_large, new_small)


def last_key_projection(model: torch.nn.Module) -> torch.nn.Module:
    """The key projection of a transformers ``ViTModel``'s last layer (transformers 5: ``layers[-1]
    .attention.k_proj``; 4: ``encoder.layer[-1].attention.attention.key``)."""
    layers = getattr(model, "layers", None)
    if layers is not None and hasattr(layers[-1].attention, "k_proj"):
        return layers[-1].attention.k_proj
    encoder = getattr(model, "encoder", None)
    if encoder is not None and hasattr(encoder.layer[-1].attention.attention, "key"):
        return encoder.layer[-1].attention.attention.key
    raise TypeError(f"cannot find the last layer's key projection in a {type(model).__name__}; expected a "
                    "transformers ViTModel")


def key_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, T, D) keys -> (B, T, T) cosine similarities, the norm product clamped at ``eps``."""
    keys = keys.float()
    norms = keys.norm(dim=-1, keepdim=True)  # (B, T, 1)
    return keys @ keys.transpose(1, 2) / (norms @ norms.transpose(1, 2)).clamp(min=eps)


def dino_input(pixels: torch.Tensor, short_side: int = 224, max_long_side: int = 480, pixel_scale: float = 1.0,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the resized, ImageNet-normalized ViT input (B, 3, h, w) in ``dtype``."""
    size = dino_size(*pixels.shape[-2:], short_side, max_long_side)
    x = pixels.float() * pixel_scale
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype or x.dtype)


@torch.no_grad()
def last_keys(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The last layer's keys (B, T, D) for a ViT input (B, 3, h, w) (``dino_input``'s output)."""
    captured: list[torch.Tensor] = []
    handle = last_key_projection(model).register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        model(pixel_values=pixel_values, interpolate_pos_encoding=True)
    finally:
        handle.remove()
    return captured[-1]


def structure_self_similarity(model: torch.nn.Module, pixels: torch.Tensor, short_side: int = 224,
                              max_long_side: int = 480, pixel_scale: float = 1.0) -> torch.Tensor:
    """S for (B, 3, H, W) images in [0, 1]: (B, T, T) float32, on the model's device."""
    parameter = next(model.parameters())
    x = dino_input(pixels.to(parameter.device), short_side, max_long_side, pixel_scale, parameter.dtype)
    return key_self_similarity(last_keys(model, x))


def similarity_distance(source: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
    """d(src, edit) = mean_ij (S_edit,ij - S_src,ij)^2: source (1, T, T), edits (B, T, T) -> (B,)."""
    if source.shape[-2:] != edits.shape[-2:]:
        raise ValueError(f"self-similarities of {tuple(source.shape[-2:])} and {tuple(edits.shape[-2:])} tokens: "
                         "compare images of one size")
    return ((edits - source) ** 2).mean(dim=(-2, -1))
