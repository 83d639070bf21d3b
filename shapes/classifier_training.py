"""Training the shapes world's ground-truth classifier (`shapes.classifier`) and measuring it.

* `train_classifier(...)` - trains it only on rendered images, freshly sampled every step, with
  augmentation (random shift, colour jitter, downscale-upscale, gaussian blur, gaussian noise) so
  that it also reads the softer, noisier images a generator produces.
* `evaluate_classifier(...)` - per-attribute accuracy on fresh held-out renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shapes.classifier import HEADS, ClassifierConfig, ShapesClassifier, images_to_tensor, predict_scenes
from shapes.rendering import render
from shapes.scenes import Scene, ShapesWorldConfig, random_scene_in_split, sample_rng
from shapes.world import generate_samples

# ---------------------------------------------------------------------------------------------
# Labels and augmentation
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
class ClassifierTrainConfig:
    """How the classifier is trained (steps, batch, optimiser, the layouts it sees, augmentation)."""

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


def training_batch(
    step: int, train: ClassifierTrainConfig, world: ShapesWorldConfig
) -> tuple[list[Scene], torch.Tensor]:
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
    train: ClassifierTrainConfig | None = None,
    classifier_config: ClassifierConfig | None = None,
    progress: bool = True,
) -> ShapesClassifier:
    """Train a classifier on freshly rendered, augmented images (no fixed training set, so no
    overfitting to particular renders).  AdamW with linear warm-up and cosine decay."""
    world = world or ShapesWorldConfig()
    train = train or ClassifierTrainConfig()
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
# Held-out accuracy
# ---------------------------------------------------------------------------------------------


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
