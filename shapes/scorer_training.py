"""Training the shapes world's edit scorer: a small CLIP (a transformers ``CLIPModel``) trained
contrastively on rendered shapes images and their captions, so that the editor can score
candidate edits offline with the same code that scores them with ``openai/clip-vit-large-patch14``.

Method
------
Data: ``pool_pairs`` edit pairs of the *train* split, from this module's own seeds:
``shapes.world.make_edit_pair(k, 5150, split="train")`` for the world's scenes and, for a
``single_share`` of the pool, ``make_edit_pair(k, 5151, ...)`` on one-object scenes whose captions
mention every attribute. A pair is a scene and a copy of it with exactly one attribute (shape,
colour, size or fill) of one object changed, with the two captions, worded alike but for that
attribute. Both scenes are rendered once, so a batch of P pairs holds 2P images and their 2P
captions, and each image's partner caption (same scene, one attribute off) is a *hard negative*
in the batch, as is each caption's partner image. Batches come from shuffled epochs of the pool.

Loss: CLIP's symmetric InfoNCE over the 2P x 2P cosine-similarity matrix (learned temperature),
plus ``hard_weight`` times a two-way cross-entropy between each image's caption and its hard
negative (both directions): telling an edit's target caption from its source caption is what
the scorer is for, and in the full softmax that one negative is diluted among 2P - 1. Plus
``aux_weight`` times a training-only auxiliary loss (``CellHeads``, not saved): half way up the
vision tower, each token predicts its grid cell's shape (or empty), colour, size and fill from
the scene's own labels. Measured on 2-core CPU runs of 1000 steps, pure contrastive training
learned colour within a few hundred steps but left shape, size and fill at chance for 1000
steps; the cell heads get the vision tower to read them early, and the contrastive losses then
bind them to the words.

Model: the text tower is as wide as the bundled model's text encoders (hidden 64, the bundled
CLIP tokenizer's 49,408-token vocabulary, 64 positions); the vision tower takes 32-px patches,
one token per cell of the world's 2 x 2 grid (8- and 16-px patches learned far slower per CPU
second). The folder is the world's own, like the bundled model: it reads 64-px 2 x 2 scenes.

Augmentation, so the scorer also reads what the bundled model draws: a ``vae_share`` of the pool
is stored as the bundled VAE's round trip (``assets/shapes-sd3/vae``: encode to the posterior
mode, decode), the rest gets a random shift of up to 2 px, per-channel gain, gaussian blur and
noise at every draw. Images are normalised exactly as the saved ``CLIPImageProcessor`` does at
64 px (rescale by 1/255, CLIP's mean and std; tested equal), so scoring through the processor
matches training.

Independence from the judge: nothing here imports ``shapes.judge``, ``shapes.classifier`` or
``shapes.classifier_training`` or reads the classifier's weights (tests/shapes/test_scorer.py
checks it with an audit hook); the labels the cell heads learn from are the world's own scene
labels. The scorer is measured on held-out edit pairs of the *val* split from its own seed (777),
never the benchmark's pairs (seed 1234) or its tuning pairs (seed 99): does the target render
score its target caption above its source caption, the source render the reverse, and does the
image change point the way the caption change does (the editor's directional score); on clean
and on VAE round-tripped renders.

Output: a normal transformers folder (config.json, model.safetensors in fp16 that loads as fp32,
the bundled CLIP tokenizer's files, preprocessor_config.json, and training_report.json), written
to a temp folder beside ``--out`` and renamed into place.

    python -m shapes.scorer_training --out assets/shapes-scorer [--steps N --threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from shapes.rendering import render
from shapes.scenes import FILLS, SIZES, Scene, ShapesWorldConfig
from shapes.world import make_edit_pair, make_edit_pairs
from softrepa.known_warnings import quiet_known_warnings

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = REPO_ROOT / "assets" / "shapes-sd3"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # what CLIPImageProcessor normalises with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ScorerConfig:
    """Everything a training run depends on (recorded in the folder's training_report.json)."""

    steps: int = 4500
    batch_pairs: int = 32  # edit pairs per step: 2x images and captions
    pool_pairs: int = 24000  # edit pairs rendered once and drawn from in shuffled epochs
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    hard_weight: float = 5.0  # weight of the two-way image/caption vs its hard negative loss
    seed: int = 5150  # train-split edit pairs and all random draws (seed + 1: the one-object pairs)
    aux_weight: float = 3.0  # training-only per-cell attribute heads on the vision tokens (0: pure CLIP)
    aux_layer: int = -1  # vision layer whose tokens the heads read (-1: half way)
    single_share: float = 0.5  # share of each batch's pairs from one-object scenes (see the docstring)
    vae_share: float = 0.04  # pool pairs stored as the bundled VAE's round trip
    max_shift: float = 2.0  # pixels, the other images' augmentation
    channel_gain: float = 0.08
    blur_max_sigma: float = 1.0
    noise_max_std: float = 0.04
    # model: text as in the bundled model's encoders (hidden 64), a small ViT with one token per grid cell
    text_hidden: int = 64
    text_layers: int = 4
    vision_hidden: int = 192
    vision_layers: int = 4
    patch_size: int = 32  # = the 2x2 grid's cell: one token per cell
    projection_dim: int = 128
    eval_pairs: int = 200
    eval_seed: int = 777  # held-out val-split pairs (the benchmark uses 1234, its tuning 99)
    eval_every: int = 0  # steps between quick held-out checks in the progress bar (0: off)
    threads: int = 1
    vae: str = str(BUNDLED / "vae")  # "" or "none": no VAE (augmentation and measure (c) skipped)
    tokenizer: str = str(BUNDLED / "tokenizer")


# ---------------------------------------------------------------------------------------------
# Model, tokenizer, processor
# ---------------------------------------------------------------------------------------------


def build_model(config: ScorerConfig, resolution: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=49408, hidden_size=config.text_hidden, intermediate_size=4 * config.text_hidden,
                num_hidden_layers=config.text_layers, num_attention_heads=4, max_position_embeddings=64,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=config.projection_dim)
    vision = dict(hidden_size=config.vision_hidden, intermediate_size=4 * config.vision_hidden,
                  num_hidden_layers=config.vision_layers, num_attention_heads=4, image_size=resolution,
                  patch_size=config.patch_size, projection_dim=config.projection_dim)
    torch.manual_seed(config.seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config.projection_dim))


def make_processor(resolution: int):
    """The image processor saved with the scorer: CLIP's, at the world's resolution (no torchvision
    needed; transformers then uses its PIL backend)."""
    from transformers import CLIPImageProcessor

    quiet_known_warnings()  # the PIL backend is the one meant; transformers' torchvision notice says nothing here
    return CLIPImageProcessor(size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def load_vae(path: str):
    if not path or path.lower() == "none":
        return None
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Data and augmentation
# ---------------------------------------------------------------------------------------------


def to_unit(images: Sequence) -> torch.Tensor:
    """PIL RGB images -> (B, 3, R, R) float in [0, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255.0


def normalise(unit: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the model's pixel_values, as the saved CLIPImageProcessor makes them."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (unit - mean) / std


@torch.no_grad()
def vae_round_trip(vae, unit: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Encode to the posterior mode and decode with the bundled VAE; [0, 1] in and out."""
    out = []
    for start in range(0, len(unit), chunk):
        x = unit[start:start + chunk] * 2 - 1
        out.append(((vae.decode(vae.encode(x).latent_dist.mode()).sample + 1) / 2).clamp(0, 1))
    return torch.cat(out) if out else unit


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur with a per-image sigma (pixels); sigma 0 leaves the image."""
    radius = 3
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (B, 7)
    batch, channels, height, width = images.shape
    weight = kernel.repeat_interleave(channels, 0)  # (B*C, 7)
    x = images.reshape(1, batch * channels, height, width)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), weight.view(-1, 1, 1, 2 * radius + 1),
                 groups=batch * channels)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), weight.view(-1, 1, 2 * radius + 1, 1),
                 groups=batch * channels)
    return x.view(batch, channels, height, width)


def augment(unit: torch.Tensor, generator: torch.Generator, config: ScorerConfig) -> torch.Tensor:
    """Light random degradations, independent per image: shift, channel gain, blur, noise."""
    batch, _, res, _ = unit.shape

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    shift = uniform(batch, 2) * config.max_shift * 2 / res
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
    x = F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x * (1 + config.channel_gain * uniform(batch, 3, 1, 1))
    x = _blur(x, uniform(batch, low=0.0, high=config.blur_max_sigma))
    x = x + uniform(batch, 1, 1, 1, low=0.0, high=config.noise_max_std) * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


class PairPool:
    """The training data: `pool_pairs` train-split edit pairs (a `single_share` of them of one-object
    scenes, every attribute mentioned), rendered, tokenized and labelled once; a `vae_share` of
    them is stored as the bundled VAE's round trip. Batches are drawn from shuffled epochs."""

    def __init__(self, config: ScorerConfig, world: ShapesWorldConfig, tokenizer, vae, progress: bool = True):
        self.config, self.world = config, world
        count, multi = config.pool_pairs, config.pool_pairs - round(config.single_share * config.pool_pairs)
        single_world = replace(world, min_objects=1, max_objects=1, mention_colour=1.0, mention_size=1.0, mention_fill=1.0)
        pairs = [make_edit_pair(k, config.seed, world, split="train") for k in range(multi)]
        pairs += [make_edit_pair(k, config.seed + 1, single_world, split="train") for k in range(count - multi)]
        res = world.resolution
        self.images = torch.empty(count, 2, 3, res, res, dtype=torch.uint8)  # source, target
        for k, pair in enumerate(tqdm(pairs, desc="rendering", unit="pair", disable=not progress)):
            for side, key in enumerate(("source_labels", "target_labels")):
                array = np.array(render(Scene.from_dict(pair[key]), res), dtype=np.uint8)  # a writable copy
                self.images[k, side] = torch.from_numpy(array).permute(2, 0, 1)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.from_vae = torch.zeros(count, dtype=torch.bool)
        if vae is not None and config.vae_share > 0:
            rows = torch.randperm(count, generator=self.generator)[:round(config.vae_share * count)]
            for chunk in tqdm(rows.split(32), desc="VAE round trips", unit="batch", disable=not progress):
                unit = self.images[chunk].flatten(0, 1).float() / 255
                trip = (vae_round_trip(vae, unit) * 255).round().to(torch.uint8)
                self.images[chunk] = trip.view(len(chunk), 2, 3, res, res)
            self.from_vae[rows] = True
        captions = [pair[key] for pair in pairs for key in ("source_prompt", "target_prompt")]
        tokens = tokenizer(captions, padding=True, truncation=True, return_tensors="pt")
        self.input_ids = tokens["input_ids"].view(count, 2, -1)
        self.attention_mask = tokens["attention_mask"].view(count, 2, -1)
        scenes = [pair[key] for pair in pairs for key in ("source_labels", "target_labels")]
        self.labels = cell_labels(scenes, world).view(count, 2, world.grid ** 2, 4)
        self.order: list[int] = []

    def next_indices(self) -> torch.Tensor:
        size = min(self.config.batch_pairs, len(self.images))
        if len(self.order) < size:
            self.order += torch.randperm(len(self.images), generator=self.generator).tolist()
        indices, self.order = self.order[:size], self.order[size:]
        return torch.tensor(indices)

    def batch(self) -> dict[str, torch.Tensor]:
        """The next batch: the sources, then their targets, augmented unless stored from the VAE."""
        indices = self.next_indices()

        def both(tensor: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor[indices, 0], tensor[indices, 1]])

        unit = both(self.images).float() / 255
        augmented = augment(unit, self.generator, self.config)
        keep = self.from_vae[indices].repeat(2)
        augmented[keep] = unit[keep]
        mask = both(self.attention_mask)
        length = int(mask.sum(1).max())
        return {"pixel_values": normalise(augmented), "input_ids": both(self.input_ids)[:, :length],
                "attention_mask": mask[:, :length], "cell_labels": both(self.labels)}


# ---------------------------------------------------------------------------------------------
# Loss and training
# ---------------------------------------------------------------------------------------------


def pooled(output) -> torch.Tensor:
    """get_image_features / get_text_features as a tensor: transformers 4 returns one, 5 an output
    object whose pooler_output is the projected embedding."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CellHeads(torch.nn.Module):
    """Training-only auxiliary heads (not saved): each patch token of the vision tower predicts its
    grid cell's shape (or empty), colour, size and fill from the scene's own labels."""

    def __init__(self, hidden: int, world: ShapesWorldConfig, layer: int):
        super().__init__()
        self.layer = layer  # read the tokens after this many encoder layers, so later layers pool them
        self.norm = torch.nn.LayerNorm(hidden)
        self.sizes = (len(world.shapes) + 1, len(world.colours), len(SIZES), len(FILLS))
        self.linear = torch.nn.Linear(hidden, sum(self.sizes))

    def forward(self, tokens: torch.Tensor, cell_labels: torch.Tensor) -> torch.Tensor:
        """tokens (B, T*T, hidden) in raster order; cell_labels (B, G*G, 4), -1 where undefined."""
        batch, count, _ = tokens.shape
        side, grid = math.isqrt(count), math.isqrt(cell_labels.shape[1])
        rows = torch.arange(side).repeat_interleave(side) * grid // side
        cols = torch.arange(side).repeat(side) * grid // side
        targets = cell_labels[:, rows * grid + cols]  # (B, T*T, 4)
        logits = self.linear(self.norm(tokens)).split(self.sizes, dim=-1)
        losses = [F.cross_entropy(part.reshape(-1, part.shape[-1]), targets[..., k].reshape(-1), ignore_index=-1)
                  for k, part in enumerate(logits)]
        return sum(losses) / len(losses)


def cell_labels(scenes: Sequence[dict], world: ShapesWorldConfig) -> torch.Tensor:
    """(B, G*G, 4) integer labels per cell: shape index + 1 (0: empty), colour, size, fill (-1: empty)."""
    out = torch.full((len(scenes), world.grid ** 2, 4), -1, dtype=torch.long)
    out[..., 0] = 0
    for b, scene in enumerate(scenes):
        for c, obj in enumerate(scene["cells"]):
            if obj is not None:
                out[b, c] = torch.tensor([world.shapes.index(obj["shape"]) + 1, world.colours.index(obj["colour"]),
                                          SIZES.index(obj["size"]), FILLS.index(obj["fill"])])
    return out


def scorer_loss(model, batch: dict[str, torch.Tensor], hard_weight: float, heads: CellHeads | None = None,
                aux_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """CLIP's symmetric InfoNCE over the batch plus the two-way hard-negative term (item i's hard
    negative is item (i + n/2) mod n: sources first, then their targets), plus `aux_weight` times
    the cell heads' loss when they are given."""
    vision = model.vision_model(pixel_values=batch["pixel_values"], output_hidden_states=heads is not None)
    image = F.normalize(model.visual_projection(vision.pooler_output), dim=-1)
    text = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    text = F.normalize(pooled(text), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100.0) * image @ text.T
    n = len(logits)
    labels = torch.arange(n)
    partner = (labels + n // 2) % n
    clip = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    rows = torch.stack([logits[labels, labels], logits[labels, partner]], dim=1)
    columns = torch.stack([logits[labels, labels], logits[partner, labels]], dim=1)
    zeros = torch.zeros(n, dtype=torch.long)
    hard = (F.cross_entropy(rows, zeros) + F.cross_entropy(columns, zeros)) / 2
    with torch.no_grad():
        hard_accuracy = (rows[:, 0] > rows[:, 1]).float().mean().item()
    parts = {"clip": clip.item(), "hard": hard.item(), "hard_acc": hard_accuracy}
    loss = clip + hard_weight * hard
    if heads is not None and aux_weight > 0:
        aux = heads(vision.hidden_states[heads.layer][:, 1:], batch["cell_labels"])
        loss, parts["aux"] = loss + aux_weight * aux, aux.item()
    return loss, parts


def make_optimizer(model, config: ScorerConfig, heads: torch.nn.Module | None = None):
    named = list(model.named_parameters()) + (list(heads.named_parameters()) if heads is not None else [])
    decay = [p for name, p in named if p.ndim >= 2 and "embedding" not in name]
    rest = [p for name, p in named if not (p.ndim >= 2 and "embedding" not in name)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98),
                                  fused=True)

    def factor(step: int) -> float:  # linear warm-up, then cosine to 0
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_scorer(config: ScorerConfig, world: ShapesWorldConfig | None = None, progress: bool = True):
    """Train a scorer; returns (model, tokenizer, vae, log). The model is left in eval mode."""
    from transformers import CLIPTokenizer

    world = world or ShapesWorldConfig()
    tokenizer = CLIPTokenizer.from_pretrained(config.tokenizer)
    vae = load_vae(config.vae)
    model = build_model(config, world.resolution).train()
    layer = config.aux_layer if config.aux_layer >= 0 else config.vision_layers // 2
    heads = CellHeads(config.vision_hidden, world, layer) if config.aux_weight > 0 else None
    optimizer, schedule = make_optimizer(model, config, heads)
    pool = PairPool(config, world, tokenizer, vae, progress)
    check = make_edit_pairs(min(config.eval_pairs, 64), config.eval_seed, world) if config.eval_every else None
    log, bar = [], tqdm(range(config.steps), desc="scorer", unit="step", disable=not progress)
    for step in bar:
        batch = pool.batch()
        loss, parts = scorer_loss(model, batch, config.hard_weight, heads, config.aux_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
        optimizer.step()
        schedule.step()
        entry = {"step": step, "loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in parts.items()}}
        if check and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            model.eval()
            rates = pair_preferences(model, tokenizer, check, None)
            entry["heldout"] = round((rates["target_over_source"] + rates["source_over_target"]) / 2, 4)
            model.train()
        log.append(entry)
        bar.set_postfix({k: v for k, v in entry.items() if k in ("loss", "hard_acc", "heldout")})
    return model.eval(), tokenizer, vae, log


# ---------------------------------------------------------------------------------------------
# Scoring and measuring
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _embed_images(model, processor, images: Sequence) -> torch.Tensor:
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    output = model.get_image_features(pixel_values=pixels)
    return F.normalize(pooled(output), dim=-1)


@torch.no_grad()
def _embed_texts(model, tokenizer, captions: Sequence[str]) -> torch.Tensor:
    tokens = tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
    output = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return F.normalize(pooled(output), dim=-1)


@torch.no_grad()
def cosine_scores(model, tokenizer, processor, images: Sequence, captions: Sequence[str]) -> torch.Tensor:
    """(len(images), len(captions)) cosine similarities, through the saved processor and tokenizer:
    the way a user scores with any CLIPModel."""
    return _embed_images(model, processor, images) @ _embed_texts(model, tokenizer, captions).T


def _to_pil(unit: torch.Tensor) -> list:
    from PIL import Image

    array = (unit.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def pair_preferences(model, tokenizer, pairs: Sequence[dict], vae, processor=None) -> dict[str, float]:
    """Shares of pairs whose target render scores its target caption above its source caption
    (target_over_source), whose source render the reverse (source_over_target), and whose
    image change points the way the caption change does (directional: cos(I(target) - I(source),
    T(target caption) - T(source caption)) > 0, the editor's directional score); with a VAE, the
    same on the renders' VAE round trips (vae_*)."""
    processor = processor or make_processor(pairs[0]["source_image"].size[0])
    images = {"": ([p["source_image"] for p in pairs], [p["target_image"] for p in pairs])}
    if vae is not None:
        sources, targets = images[""]
        images["vae_"] = (_to_pil(vae_round_trip(vae, to_unit(sources))), _to_pil(vae_round_trip(vae, to_unit(targets))))
    captions = [p["source_prompt"] for p in pairs] + [p["target_prompt"] for p in pairs]
    n, out = len(pairs), {}
    for prefix, (sources, targets) in images.items():
        image_change = _embed_images(model, processor, targets) - _embed_images(model, processor, sources)
        text_change = _embed_texts(model, tokenizer, captions[n:]) - _embed_texts(model, tokenizer, captions[:n])
        out[f"{prefix}directional"] = ((image_change * text_change).sum(-1) > 0).float().mean().item()
        from_sources = cosine_scores(model, tokenizer, processor, sources, captions)  # (n, 2n)
        from_targets = cosine_scores(model, tokenizer, processor, targets, captions)
        on_source, source_vs_target = from_sources.diagonal(0), from_sources.diagonal(n)
        on_target, target_vs_source = from_targets.diagonal(n), from_targets.diagonal(0)
        out[f"{prefix}target_over_source"] = (on_target > target_vs_source).float().mean().item()
        out[f"{prefix}source_over_target"] = (on_source > source_vs_target).float().mean().item()
        out[f"{prefix}mean_margin"] = ((on_target - target_vs_source).mean() + (on_source - source_vs_target).mean()).item() / 2
    return out


def evaluate_scorer(model, tokenizer, vae, config: ScorerConfig, world: ShapesWorldConfig | None = None,
                    processor=None) -> dict[str, float]:
    """pair_preferences on `eval_pairs` held-out val-split pairs of seed `eval_seed`."""
    pairs = make_edit_pairs(config.eval_pairs, config.eval_seed, world or ShapesWorldConfig(), split="val")
    return pair_preferences(model, tokenizer, pairs, vae, processor)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_scorer(model, tokenizer, processor, out: str | os.PathLike, report: dict) -> Path:
    """Write the folder atomically: into a temp folder beside `out`, then renamed over it. The
    weights are stored in fp16 and the config names float32, so from_pretrained loads fp32."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.to(torch.float16).save_pretrained(temp)
        model.to(torch.float32)
        config_path = temp / "config.json"
        saved = json.loads(config_path.read_text())
        saved.pop("_name_or_path", None)
        saved["dtype"] = "float32"
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(temp)
        processor.save_pretrained(temp)
        (temp / "training_report.json").write_text(json.dumps(report, indent=1) + "\n")
        for path in temp.iterdir():
            path.chmod(0o644)
        temp.chmod(0o755)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(temp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = ScorerConfig()
    parser = argparse.ArgumentParser(prog="python -m shapes.scorer_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (e.g. assets/shapes-scorer)")
    for name in ("steps", "batch_pairs", "pool_pairs", "warmup", "seed", "aux_layer", "text_hidden", "text_layers", "vision_hidden",
                 "vision_layers", "patch_size", "projection_dim", "eval_pairs", "eval_seed", "eval_every", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "hard_weight", "aux_weight", "single_share", "vae_share", "max_shift", "channel_gain", "blur_max_sigma",
                 "noise_max_std"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--vae", default=defaults.vae, help="VAE folder for augmentation and measure (c); 'none': off")
    parser.add_argument("--tokenizer", default=defaults.tokenizer)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    fields = ScorerConfig.__dataclass_fields__
    config = ScorerConfig(**{name: value for name, value in vars(args).items() if name in fields})
    torch.set_num_threads(config.threads)
    world = ShapesWorldConfig()
    start = time.time()
    model, tokenizer, vae, log = train_scorer(config, world, progress=not args.no_progress)
    minutes = (time.time() - start) / 60
    processor = make_processor(world.resolution)
    rates = evaluate_scorer(model, tokenizer, vae, config, world, processor)
    report = {"config": asdict(config), "train_split": "train", "train_pairs": config.steps * config.batch_pairs,
              "eval": {"pairs": config.eval_pairs, "seed": config.eval_seed, "split": "val", **rates},
              "train_minutes": round(minutes, 2), "threads": config.threads, "last_log": log[-5:]}
    for key in ("vae", "tokenizer"):  # record where from, relative to the repository when inside it
        path = Path(report["config"][key]).resolve() if report["config"][key] not in ("", "none") else None
        if path is not None and path.is_relative_to(REPO_ROOT):
            report["config"][key] = str(path.relative_to(REPO_ROOT))
    save_scorer(model, tokenizer, processor, args.out, report)
    figures = " ".join(f"{k}={v:.3f}" for k, v in rates.items())
    print(f"RESULT {figures} pairs={config.eval_pairs} seed={config.eval_seed} steps={config.steps} "
          f"train_minutes={minutes:.1f} threads={config.threads} out={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
