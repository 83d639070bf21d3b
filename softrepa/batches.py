"""Training data: the dataset cached and split into training / held-out items, and the batches of
each step in a deterministic order of (seed, epoch), so a resumed run reads exactly the batches an
uninterrupted one would. With several processes each takes its share of the global batch and its
images are scored against every process's captions (see ``softrepa.train``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from softrepa.cache import FeatureCache, build_cache, model_fingerprint
from softrepa.checkpoints import TrainState
from softrepa.data import CaptionDataset, DatasetError, epoch_order, open_dataset
from softrepa.pairs import PairBatch
from softrepa.train_config import TrainConfig, default_cache_dir

log = logging.getLogger("softrepa.train")  # the run's log: its messages keep the name users filter on


class BatchSource:
    """Cached features -> ``PairBatch``es in the deterministic order of (seed, epoch)."""

    def __init__(self, dataset: CaptionDataset, cache: FeatureCache, seed: int, resolution: int, needs_time_ids: bool,
                 hard_negatives: bool = False):
        self.dataset, self.cache, self.seed = dataset, cache, seed
        self.resolution, self.needs_time_ids, self.hard_negatives = resolution, needs_time_ids, hard_negatives
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.dataset), self.seed, epoch))
        return self._order[1]

    def load(self, indices: list[int], epoch: int) -> PairBatch:
        latents = torch.stack([self.cache.load_latents(self.dataset.records[i]) for i in indices])  # (B, C, h, w)
        captions = [self.dataset.caption(i, self.seed, epoch) for i in indices]
        if self.hard_negatives:  # image i's own caption stays column i; its negative is column B + i
            captions += [self.dataset.negative(i, self.seed, epoch) for i in indices]
        texts = [self.cache.load_text(caption) for caption in captions]
        text = {key: torch.stack([t[key] for t in texts]) for key in texts[0]}  # (B or 2B, n, D), (B or 2B, P)
        image_cond = {}
        if self.needs_time_ids:
            # SDXL micro-conditioning: original size, crop top-left, target size of a center crop
            r = self.resolution
            image_cond["time_ids"] = torch.tensor([[r, r, 0, 0, r, r]] * len(indices), dtype=torch.float32)
        return PairBatch(latents=latents, text=text, image_cond=image_cond)


def next_global_batch(source: BatchSource, state: TrainState, global_batch: int) -> tuple[list[int], int]:
    """The global batch at ``state``'s data position, and advance the position. Returns (indices, epoch)."""
    per_epoch = len(source.dataset) // global_batch
    order = source.order(state.epoch)
    start = state.batch_in_epoch * global_batch
    indices, epoch = order[start:start + global_batch], state.epoch
    state.batch_in_epoch += 1
    if state.batch_in_epoch >= per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return indices, epoch


def gather_text(accelerator: Any, batch: PairBatch, device: torch.device) -> PairBatch:
    """Every process's captions as negatives for the local images (``softrepa.train``'s docstring, step 1)."""
    text = {k: v.to(device) for k, v in batch.text.items()}
    if accelerator.num_processes == 1:
        return PairBatch(batch.latents, text, batch.image_cond, None)
    gathered = accelerator.gather(text)  # {key: (captions * world, ...)}, rank-major
    positives = accelerator.process_index * batch.num_captions + torch.arange(batch.num_images)
    return PairBatch(batch.latents, gathered, batch.image_cond, positives)


@dataclass
class TrainData:
    """The training items in their batch order, and the held-out ones."""

    source: BatchSource
    val_set: CaptionDataset | None  # None: nothing held out
    batch_size: int  # images per process and step

    def next_batch(self, state: TrainState, accelerator: Any) -> tuple[PairBatch, int]:
        """This process's images of the global batch at ``state``'s data position (advancing it), with
        every process's captions. Returns (batch, epoch)."""
        indices, epoch = next_global_batch(self.source, state, self.batch_size * accelerator.num_processes)
        rank = accelerator.process_index
        local = indices[rank * self.batch_size:(rank + 1) * self.batch_size]  # this process's images
        return gather_text(accelerator, self.source.load(local, epoch), accelerator.device), epoch

    def validation_batch(self) -> PairBatch | None:
        """Every held-out item (own captions only) as one batch; None when nothing is held out."""
        if self.val_set is None:
            return None
        source = self.source
        return BatchSource(self.val_set, source.cache, source.seed, source.resolution, source.needs_time_ids).load(
            list(range(len(self.val_set))), epoch=0)


def open_training_data(config: TrainConfig, pipe: Any, model_id: str, weight_dtype: torch.dtype, needs_time_ids: bool,
                       accelerator: Any) -> TrainData:
    """Open the dataset, encode what the feature cache lacks (each process its share; all read
    everything), drop unreadable images and hold out ``val_items`` items with a fixed shuffle."""
    dataset = open_dataset(config.data, config.captions)
    if config.hard_negatives and not all(r.negatives for r in dataset.records):  # before the cache is built
        raise DatasetError(f"{config.data}: --hard-negatives needs a negative_caption on every item "
                           f"({sum(not r.negatives for r in dataset.records)} have none); "
                           "python -m shapes.world edits --split train writes such a folder")
    cache_dtype = weight_dtype if weight_dtype != torch.float64 else torch.float32
    cache = FeatureCache(config.cache_dir or default_cache_dir(), model_fingerprint(pipe, model_id), config.resolution,
                         cache_dtype, config.max_sequence_length)
    report = build_cache(pipe, dataset, cache, accelerator.device, config.cache_batch_size, accelerator.process_index,
                         accelerator.num_processes, progress=config.progress and accelerator.is_main_process)
    accelerator.wait_for_everyone()
    usable = [i for i, r in enumerate(dataset.records) if cache.has_latents(r)]
    if len(usable) < len(dataset):
        log.warning("%d of %d images are unreadable and skipped (see warnings above)", len(dataset) - len(usable),
                    len(dataset))
    global_batch = config.batch_size * accelerator.num_processes
    if len(usable) < global_batch:
        raise DatasetError(f"{config.data}: {len(usable)} usable images; a step needs batch_size x processes = "
                           f"{global_batch}")
    n_val = min(config.val_items, len(usable) - global_batch)  # training keeps at least one full batch
    if n_val < config.val_items:
        log.warning("holding out %d items for validation instead of %d: the dataset is small", n_val, config.val_items)
    dataset = dataset.subset(usable)
    split = epoch_order(len(dataset), config.seed, -1)  # a fixed shuffle for the held-out split
    val_set = dataset.subset(sorted(split[:n_val])) if n_val > 0 else None
    train_set = dataset.subset(sorted(split[n_val:]))
    source = BatchSource(train_set, cache, config.seed, config.resolution, needs_time_ids, config.hard_negatives)
    log.info("cache: %d captions and %d images encoded now, %d skipped; %d train / %d held-out items",
             report.encoded_captions, report.encoded_images, len(report.skipped), len(train_set), n_val)
    return TrainData(source=source, val_set=val_set, batch_size=config.batch_size)
