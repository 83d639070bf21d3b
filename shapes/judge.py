"""Ground-truth evaluator for the shapes world (docs/shapes.md).

What this module implements
---------------------------
* `ShapesClassifier` - a small pure-torch CNN that reads a shapes-world image: for every grid
  cell, "empty" or the object's shape, plus its colour, size and fill; and the background.
  Cells are classified by one shared network applied to a crop around each cell (with a
  margin, so objects that a generator draws slightly off-centre are still seen whole).
* `train_classifier(...)` - trains it only on rendered images, freshly sampled every step,
  with augmentation (random shift, colour jitter, downscale-upscale, gaussian blur, gaussian
  noise) so that it also reads the softer, noisier images a generator produces.
* `save_classifier` / `load_classifier` - safetensors only (the config travels as JSON in the
  file's metadata; nothing is pickled).  The shipped model is assets/shapes-classifier.safetensors.
* `evaluate_classifier(...)` - per-attribute accuracy on fresh held-out renders.
* `predict_scenes(classifier, images)` - images -> `Scene`s.
* `score(images, samples)` / `score_predictions(scenes, samples)` - attribute accuracy, count
  accuracy, spatial accuracy, background accuracy and full-prompt accuracy (every statement of
  the caption holds in the predicted scene), overall and per caption grammar.

CLI: `python -m shapes.judge train --out assets/shapes-classifier.safetensors`,
`... evaluate`, `... score --metadata DIR/metadata.jsonl [--image-root GENERATED_DIR]`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from shapes.world import (
    FILLS,
    SIZES,
    Scene,
    ShapeObject,
    ShapesWorldConfig,
    check,
    generate_samples,
    random_scene_in_split,
    render,
    sample_rng,
)
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
# Labels, images and augmentation
# ---------------------------------------------------------------------------------------------


def scene_targets(scenes: Sequence[Scene], config: ClassifierConfig) -> dict[str, torch.Tensor]:
    """Integer targets; colour/size/fill are -1 (ignored) for empty cells."""
    cells = config.grid ** 2
    out = {name: torch.full((len(scenes), cells), -1, dtype=torch.long) for name in HEADS}
    out["background"] = torch.tensor([config.backgrounds.index(s.background) for s in scenes])
    for b, scene in enumerate(scenes):
        for c, obj in enumerate(scene.cells):
            if obj is None:
                out["shape"][b, c] = 0
                continue
            out["shape"][b, c] = config.shapes.index(obj.shape) + 1
            out["colour"][b, c] = config.colours.index(obj.colour)
            out["size"][b, c] = config.sizes.index(obj.size)
            out["fill"][b, c] = config.fills.index(obj.fill)
    return out


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


@dataclass
class AugmentConfig:
    """Degradations that make rendered images look like a small generator's output."""

    max_shift: float = 2.0  # pixels
    max_rotation: float = 5.0  # degrees, whole image
    max_scale: float = 0.07  # +/- relative, per axis (slightly squashed or stretched objects)
    channel_gain: float = 0.12  # multiplicative jitter per channel, +/-
    channel_bias: float = 0.06  # additive jitter per channel, +/-
    resample_prob: float = 0.3  # downscale-then-upscale, like a low-res decoder
    resample_min_scale: float = 0.45
    blur_prob: float = 0.7
    blur_max_sigma: float = 1.1  # pixels
    noise_max_std: float = 0.06


def augment(images: torch.Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> torch.Tensor:
    """Random degradations, independent per image; images (B, 3, R, R) in [0, 1]."""
    config = config or AugmentConfig()
    batch, _, res, _ = images.shape

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    # Small affine warp (shift, rotation, per-axis scale): generated objects are neither
    # pixel-aligned with the grid nor geometrically exact.
    angle = uniform(batch, low=-1, high=1) * math.radians(config.max_rotation)
    scale = 1 + uniform(batch, 2, low=-config.max_scale, high=config.max_scale)
    shift = uniform(batch, 2, low=-1, high=1) * config.max_shift * 2 / res  # normalised coords
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos / scale[:, 0], -sin / scale[:, 0], shift[:, 0]], dim=1),
            torch.stack([sin / scale[:, 1], cos / scale[:, 1], shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Colour jitter.
    gain = uniform(batch, 3, 1, 1, low=1 - config.channel_gain, high=1 + config.channel_gain)
    bias = uniform(batch, 3, 1, 1, low=-config.channel_bias, high=config.channel_bias)
    images = images * gain + bias
    # Downscale-upscale (loses thin strokes' sharpness the way a low-res decoder does).
    resample = uniform(batch) < config.resample_prob
    for b in torch.nonzero(resample).flatten().tolist():
        scale = float(uniform(1, low=config.resample_min_scale, high=0.9))
        small = max(8, int(round(res * scale)))
        low = F.interpolate(
            images[b : b + 1], size=(small, small), mode="bilinear", antialias=True, align_corners=False
        )
        images[b : b + 1] = F.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    # Gaussian blur with a per-image sigma (depthwise conv, one kernel per image).
    sigma = uniform(batch, low=0.3, high=config.blur_max_sigma) * (uniform(batch) < config.blur_prob)
    radius = 3
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # sigma ~0 -> a delta: no blur
    kernel = kernel.repeat_interleave(3, dim=0)  # (B*3, taps)
    flat = images.reshape(1, batch * 3, res, res)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=batch * 3)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=batch * 3)
    images = flat.view(batch, 3, res, res)
    # Gaussian noise.
    std = uniform(batch, 1, 1, 1, high=config.noise_max_std)
    images = images + std * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    steps: int = 2500
    batch_size: int = 48
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # Each cell is filled independently with a probability drawn per image from this range, so
    # the classifier sees every layout (up to full grids) and learns no prior on them.
    occupancy: tuple[float, float] = (0.2, 0.8)
    empty_keep: float = 0.35
    threads: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def training_batch(step: int, train: TrainConfig, world: ShapesWorldConfig) -> tuple[list[Scene], torch.Tensor]:
    """Freshly rendered batch for one step, from the world's *train* split only (hash-disjoint
    from every val scene used in evaluation)."""
    rng = sample_rng(train.seed, "train", step, purpose="classifier")
    scenes = [
        random_scene_in_split(rng, world, "train", occupancy=rng.uniform(*train.occupancy))
        for _ in range(train.batch_size)
    ]
    images = np.stack([np.asarray(render(s, world.resolution)) for s in scenes])
    return scenes, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def training_loss(
    model: ShapesClassifier,
    images: torch.Tensor,
    targets: dict[str, torch.Tensor],
    empty_keep: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Cross-entropy over all heads.  Only a random `empty_keep` fraction of empty cells is
    run through the network: they are the easy majority, and skipping them buys more
    object-bearing cells per second of CPU."""
    flat = {name: targets[name].flatten() for name in HEADS}
    keep = (flat["shape"] > 0) | (torch.rand(flat["shape"].shape, generator=generator) < empty_keep)
    logits = model.cell_logits(model.cell_crops(images)[keep])
    loss = F.cross_entropy(model.background_logits(images), targets["background"])
    for name in HEADS:
        loss = loss + F.cross_entropy(logits[name], flat[name][keep], ignore_index=-1)
    return loss


def train_classifier(
    world: ShapesWorldConfig | None = None,
    train: TrainConfig | None = None,
    classifier_config: ClassifierConfig | None = None,
    progress: bool = True,
) -> ShapesClassifier:
    """Train a classifier on freshly rendered, augmented images (no fixed training set, so no
    overfitting to particular renders).  AdamW with linear warm-up and cosine decay."""
    world = world or ShapesWorldConfig()
    train = train or TrainConfig()
    torch.set_num_threads(train.threads)
    torch.manual_seed(train.seed)
    model = ShapesClassifier(classifier_config or ClassifierConfig.for_world(world))
    optimiser = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    warmup = max(1, train.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, train.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    generator = torch.Generator().manual_seed(train.seed)
    model.train()
    bar = tqdm(range(train.steps), desc="train shapes classifier", disable=not progress)
    running = None
    for step in bar:
        scenes, images = training_batch(step, train, world)
        images = augment(images, generator, train.augment)
        loss = training_loss(model, images, scene_targets(scenes, model.config), train.empty_keep, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    model.eval()
    return model


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
# Prediction and evaluation
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


def attribute_accuracy(predicted: Sequence[Scene], truth: Sequence[Scene]) -> dict[str, float]:
    """Per-attribute accuracy of predicted scenes against ground truth: shape (incl. "empty")
    over all cells; colour, size and fill over truly occupied cells; background per image;
    "cell" = every attribute of a cell right."""
    hits = {k: 0 for k in ("shape", "colour", "size", "fill", "background", "cell")}
    totals = dict.fromkeys(hits, 0)
    for p, t in zip(predicted, truth, strict=True):
        hits["background"] += p.background == t.background
        totals["background"] += 1
        for pc, tc in zip(p.cells, t.cells, strict=True):
            totals["shape"] += 1
            totals["cell"] += 1
            if tc is None:
                hits["shape"] += pc is None
                hits["cell"] += pc is None
                continue
            same = {
                "shape": pc is not None and pc.shape == tc.shape,
                "colour": pc is not None and pc.colour == tc.colour,
                "size": pc is not None and pc.size == tc.size,
                "fill": pc is not None and pc.fill == tc.fill,
            }
            for k, ok in same.items():
                hits[k] += ok
                totals[k] += k != "shape"
            hits["cell"] += all(same.values())
    return {k: hits[k] / totals[k] if totals[k] else float("nan") for k in hits}


def evaluate_classifier(
    model: ShapesClassifier,
    n: int = 500,
    seed: int = 9001,
    split: str = "val",
    apply_augment: bool = True,
    augment_config: AugmentConfig | None = None,
) -> dict[str, float]:
    """Per-attribute accuracy on n fresh renders of the world's `split` (default: val scenes,
    hash-disjoint from training), degraded with the training augmentation when apply_augment."""
    c = model.config
    world = ShapesWorldConfig(
        resolution=c.resolution, grid=c.grid, shapes=c.shapes, colours=c.colours, backgrounds=c.backgrounds
    )
    samples = generate_samples(n, seed, world, split)
    images = images_to_tensor([s["image"] for s in samples], c.resolution)
    if apply_augment:
        images = augment(images, torch.Generator().manual_seed(seed), augment_config)
    predicted = predict_scenes(model, images)
    return attribute_accuracy(predicted, [Scene.from_dict(s["labels"]) for s in samples])


def _ratio(hits: int, total: int) -> float | None:
    return hits / total if total else None


def score_predictions(predicted: Sequence[Scene], samples: Sequence[dict]) -> dict:
    """Caption metrics of predicted scenes against samples' statements (dicts with
    "statements" and "grammar", e.g. metadata.jsonl rows or generate_samples() items):

    attribute_acc  - mentioned attributes found on the bound objects (micro average)
    count_acc      - exact-count statements that hold
    spatial_acc    - position and relation statements that hold
    background_acc - background statements that hold
    full_prompt_acc - samples whose every statement holds
    Returned overall and per grammar ({"overall": {...}, "per_grammar": {grammar: {...}}})."""
    keys = ("attribute", "count", "spatial", "background")
    buckets: dict[str, dict[str, int]] = {}
    for scene, sample in zip(predicted, samples, strict=True):
        grid = sample.get("labels", {}).get("grid", scene.grid)
        if grid != scene.grid:  # a classifier for another world would score garbage, silently
            raise ValueError(f"the classifier reads a {scene.grid}x{scene.grid} grid but the samples are "
                             f"{grid}x{grid}: train one for this world (python -m shapes.judge train "
                             f"--grid {grid})")
        result = check(sample["statements"], scene)
        for name in ("overall", sample.get("grammar", "unknown")):
            empty = {"n": 0, "full": 0, **{f"{k}_{x}": 0 for k in keys for x in ("hits", "total")}}
            b = buckets.setdefault(name, empty)
            b["n"] += 1
            b["full"] += result.all_hold
            for k in keys:
                b[f"{k}_hits"] += getattr(result, f"{k}_hits")
                b[f"{k}_total"] += getattr(result, f"{k}_total")

    def summarise(b: dict) -> dict:
        out = {"n": b["n"], "full_prompt_acc": b["full"] / b["n"]}
        out.update({f"{k}_acc": _ratio(b[f"{k}_hits"], b[f"{k}_total"]) for k in keys})
        return out

    overall = buckets.pop("overall", None)
    return {
        "overall": summarise(overall) if overall else {"n": 0},
        "per_grammar": {g: summarise(b) for g, b in sorted(buckets.items())},
    }


def score(images, samples: Sequence[dict], classifier: ShapesClassifier | None = None) -> dict:
    """Classify `images` (one per sample, e.g. generated from the samples' captions) and score
    them against the samples' statements; see score_predictions for the metrics."""
    return score_predictions(predict_scenes(classifier, images), samples)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m shapes.judge", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the ground-truth classifier and save it")
    train.add_argument("--out", default=str(DEFAULT_CLASSIFIER_PATH))
    train.add_argument("--steps", type=int, default=TrainConfig.steps)
    train.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    train.add_argument("--lr", type=float, default=TrainConfig.lr)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--grid", type=int, default=ShapesWorldConfig.grid, choices=(2, 3))
    train.add_argument("--resolution", type=int, default=ShapesWorldConfig.resolution)
    train.add_argument("--eval-n", type=int, default=2000, help="held-out renders for the accuracy report")
    evaluate = commands.add_parser("evaluate", help="per-attribute accuracy on fresh held-out renders")
    evaluate.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER_PATH))
    evaluate.add_argument("--n", type=int, default=2000)
    evaluate.add_argument("--seed", type=int, default=9001)
    evaluate.add_argument("--no-augment", action="store_true")
    score_cmd = commands.add_parser("score", help="caption metrics of images against a metadata.jsonl")
    score_cmd.add_argument("--metadata", required=True, help="metadata.jsonl written by shapes.world make")
    score_cmd.add_argument(
        "--image-root",
        default=None,
        help="folder holding the images under the rows' `image` paths "
        "(default: the metadata's folder, i.e. the ground-truth renders)",
    )
    score_cmd.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER_PATH))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "train":
        world = ShapesWorldConfig(resolution=args.resolution, grid=args.grid)
        train = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, threads=args.threads
        )
        started, cpu_started = time.time(), time.process_time()
        model = train_classifier(world, train)
        minutes = (time.time() - started) / 60
        cpu_minutes = (time.process_time() - cpu_started) / 60
        report = {
            "augmented": evaluate_classifier(model, n=args.eval_n, seed=9001, apply_augment=True),
            "clean": evaluate_classifier(model, n=args.eval_n, seed=9001, apply_augment=False),
        }
        training = asdict(train) | {"minutes": round(minutes, 1), "cpu_minutes": round(cpu_minutes, 1)}
        heldout = report | {"n": args.eval_n, "seed": 9001, "split": "val"}
        metadata = {"world": world.to_dict(), "training": training, "heldout_accuracy": heldout}
        save_classifier(model, args.out, metadata)
        print(json.dumps({"out": args.out, **{k: training[k] for k in ("minutes", "cpu_minutes")}, **report}, indent=1))
    elif args.command == "evaluate":
        torch.set_num_threads(1)
        model = load_classifier(args.classifier)
        accuracy = evaluate_classifier(model, n=args.n, seed=args.seed, apply_augment=not args.no_augment)
        print(json.dumps(accuracy, indent=1))
    elif args.command == "score":
        torch.set_num_threads(1)
        rows = [json.loads(line) for line in open(args.metadata) if line.strip()]
        root = Path(args.image_root) if args.image_root else Path(args.metadata).parent
        images = [Image.open(root / row["image"]).convert("RGB") for row in rows]
        print(json.dumps(score(images, rows, load_classifier(args.classifier)), indent=1))
    else:
        raise ValueError(f"unknown command {args.command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
