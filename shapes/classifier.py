"""The shapes world's ground-truth classifier (docs/shapes.md).

`ShapesClassifier` is a small pure-torch CNN that reads a shapes-world image: for every grid cell,
"empty" or the object's shape, plus its colour, size and fill; and the background.  Cells are
classified by one shared network applied to a crop around each cell (with a margin, so objects
that a generator draws slightly off-centre are still seen whole).

Also here: `save_classifier` / `load_classifier` (safetensors only: the config travels as JSON in
the file's metadata; nothing is pickled; the shipped model is assets/shapes-classifier.safetensors)
and `predict_scenes(classifier, images)` (images -> `Scene`s).  Training is in
`shapes.classifier_training`, caption scoring in `shapes.judge`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from shapes.scenes import FILLS, SIZES, Scene, ShapeObject, ShapesWorldConfig
from softrepa.atomic import atomic_path

DEFAULT_CLASSIFIER_PATH = Path(__file__).resolve().parents[1] / "assets" / "shapes-classifier.safetensors"
FORMAT = "softrepa-shapes-classifier-v1"
HEADS = ("shape", "colour", "size", "fill")


@dataclass
class ClassifierConfig:
    """Architecture and the world it reads.  The label vocabularies are stored so that a saved
    classifier decodes its outputs without importing the world's current defaults."""

    resolution: int = 64
    grid: int = 2
    shapes: tuple[str, ...] = ()
    colours: tuple[str, ...] = ()
    backgrounds: tuple[str, ...] = ()
    sizes: tuple[str, ...] = SIZES
    fills: tuple[str, ...] = FILLS
    widths: tuple[int, ...] = (16, 24, 32, 48, 64)
    # Crop side around each cell, as a multiple of the cell side: the margin lets the network
    # see objects that spill over a cell border.
    crop_factor: float = 1.3

    @classmethod
    def for_world(cls, world: ShapesWorldConfig, **overrides) -> "ClassifierConfig":
        return cls(
            resolution=world.resolution,
            grid=world.grid,
            shapes=tuple(world.shapes),
            colours=tuple(world.colours),
            backgrounds=tuple(world.backgrounds),
            **overrides,
        )

    @property
    def crop_side(self) -> int:
        side = math.ceil(self.resolution / self.grid * self.crop_factor)
        return side + side % 2

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        data = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class ShapesClassifier(nn.Module):
    """Per-cell CNN (shared over cells) + a background head on the pooled whole image."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.widths
        # Full resolution first (outline strokes are ~2 px), then two stride-2 stages.
        self.cell_net = nn.Sequential(
            _conv_block(3, w[0], 1),
            _conv_block(w[0], w[1], 2),
            _conv_block(w[1], w[2], 1),
            _conv_block(w[2], w[3], 2),
            _conv_block(w[3], w[4], 1),
        )
        feat = w[4] * 2  # average- and max-pooled features
        self.cell_mlp = nn.Sequential(nn.Linear(feat, 128), nn.ReLU(inplace=True))
        self.shape_head = nn.Linear(128, len(config.shapes) + 1)  # index 0 = empty cell
        self.colour_head = nn.Linear(128, len(config.colours))
        self.size_head = nn.Linear(128, len(config.sizes))
        self.fill_head = nn.Linear(128, len(config.fills))
        self.background_head = nn.Sequential(
            nn.Linear(3 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Linear(64, len(config.backgrounds))
        )
        # Fixed crop offsets (top-left corner of each cell's crop in the padded image).
        cell = config.resolution / config.grid
        pad = config.crop_side
        offsets = []
        for row in range(config.grid):
            for col in range(config.grid):
                cy, cx = (row + 0.5) * cell, (col + 0.5) * cell
                top, left = int(round(cy - config.crop_side / 2)), int(round(cx - config.crop_side / 2))
                offsets.append((top + pad, left + pad))
        self.crop_offsets = offsets

    def cell_crops(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [0, 1] -> (B * grid^2, 3, crop, crop), cells row-major per image."""
        side = self.config.crop_side
        padded = F.pad(images, (side, side, side, side), mode="replicate")
        crops = [padded[:, :, y : y + side, x : x + side] for y, x in self.crop_offsets]
        return torch.stack(crops, dim=1).flatten(0, 1)

    def cell_logits(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cell crops (N, 3, crop, crop) in [0, 1] -> shape/colour/size/fill logits (N, classes)."""
        # channels_last runs these small convolutions ~1.4x faster on CPU.
        x = (crops * 2 - 1).contiguous(memory_format=torch.channels_last)
        x = self.cell_net(x)
        x = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        x = self.cell_mlp(x)
        return {
            "shape": self.shape_head(x),
            "colour": self.colour_head(x),
            "size": self.size_head(x),
            "fill": self.fill_head(x),
        }

    def background_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.background_head(F.adaptive_avg_pool2d(images * 2 - 1, 4).flatten(1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (B, 3, R, R) floats in [0, 1].  Returns logits: shape/colour/size/fill as
        (B, grid^2, classes), background as (B, classes)."""
        batch, cells = images.shape[0], self.config.grid ** 2
        out = {name: v.view(batch, cells, -1) for name, v in self.cell_logits(self.cell_crops(images)).items()}
        out["background"] = self.background_logits(images)
        return out


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def images_to_tensor(images, resolution: int) -> torch.Tensor:
    """PIL images, a uint8 array (N, H, W, 3), or a float tensor (N, 3, H, W) in [0, 1] ->
    float tensor (N, 3, resolution, resolution) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (N, 3, H, W) tensor, got {tuple(x.shape)}")
    elif isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (N, H, W, 3) array, got {images.dtype} {images.shape}")
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    elif isinstance(images, (list, tuple)):
        arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
        sizes = {a.shape for a in arrays}
        if len(sizes) != 1:
            side = (resolution, resolution)
            arrays = [np.asarray(im.convert("RGB").resize(side, Image.BICUBIC)) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    else:
        raise TypeError(f"unsupported images type {type(images).__name__}")
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Saving and loading (safetensors only)
# ---------------------------------------------------------------------------------------------


def save_classifier(model: ShapesClassifier, path: str | Path, extra_metadata: dict | None = None) -> Path:
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": model.config.to_json()}
    for key, value in (extra_metadata or {}).items():
        metadata[key] = json.dumps(value)  # every value but "format" is JSON text
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)
    return path


def load_classifier(path: str | Path | None = None) -> ShapesClassifier:
    """Load a classifier saved by save_classifier (default: the shipped asset), in eval mode."""
    from safetensors import safe_open

    path = Path(path) if path is not None else DEFAULT_CLASSIFIER_PATH
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format={metadata.get('format')!r})")
    model = ShapesClassifier(ClassifierConfig.from_json(metadata["config"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model


def classifier_metadata(path: str | Path | None = None) -> dict:
    """The JSON metadata stored with a saved classifier (config, training and accuracy report)."""
    from safetensors import safe_open

    with safe_open(str(Path(path) if path else DEFAULT_CLASSIFIER_PATH), framework="pt") as f:
        return {k: json.loads(v) if k != "format" else v for k, v in (f.metadata() or {}).items()}


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model: ShapesClassifier, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
    x = images_to_tensor(images, model.config.resolution)
    model.eval()
    parts = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def logits_to_scenes(logits: dict[str, torch.Tensor], config: ClassifierConfig) -> list[Scene]:
    picks = {k: v.argmax(dim=-1).tolist() for k, v in logits.items()}
    scenes = []
    for b, background in enumerate(picks["background"]):
        cells = []
        for c, shape in enumerate(picks["shape"][b]):
            if shape == 0:
                cells.append(None)
                continue
            cells.append(
                ShapeObject(
                    shape=config.shapes[shape - 1],
                    colour=config.colours[picks["colour"][b][c]],
                    size=config.sizes[picks["size"][b][c]],
                    fill=config.fills[picks["fill"][b][c]],
                )
            )
        scenes.append(Scene(background=config.backgrounds[background], grid=config.grid, cells=tuple(cells)))
    return scenes


def predict_scenes(classifier: ShapesClassifier | None, images, batch_size: int = 256) -> list[Scene]:
    """Read images (PIL list, uint8 (N, H, W, 3) array or float (N, 3, H, W) tensor in [0, 1])
    into scenes.  classifier None -> the shipped one."""
    model = classifier if classifier is not None else load_classifier()
    return logits_to_scenes(predict_logits(model, images, batch_size), model.config)
