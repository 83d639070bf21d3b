"""Pre-encoded training features: the frozen VAE and text encoders run once per item, not per step.

Layout (one safetensors file per item, fanned out over 256 sub-folders by hash prefix):

    <root>/<model fingerprint>/latents-<resolution>px-<dtype>/<ab>/<sha256>.safetensors
        {"latents": (C, h, w)}
    <root>/<model fingerprint>/text-<dtype>/<ab>/<sha256>.safetensors
        {"prompt_embeds": (n, D), ["pooled_prompt_embeds": (P,)]}

* Keys: latents by (image path, size, mtime, resolution); text by (caption, max_sequence_length);
  both under a fingerprint of the model (its id, the VAE / text-encoder classes, configs and a
  sample of their weights), so a cache is reused across epochs and runs and never mixed between
  models.
* Each file holds only its own item: every tensor is ``.clone()``d out of the batch before
  saving. The authors saved slices of the batch tensor, so each file carried the whole batch and
  COCO's cache grew to 9.1 TB.
* Writes are atomic (temp file + rename): a killed run never leaves a truncated file.
* Latents are the *mode* of the VAE posterior, ``(mode - shift_factor) * scaling_factor`` (SD3)
  or ``mode * scaling_factor`` (UNets, no shift). Sampling the posterior instead would need the
  mean and the std cached (2x the bytes) for an augmentation that is negligible for the SD VAEs
  (posterior std ~1e-2 of the latent scale); the mode also matches what FlowEdit and generation use.
* After caching the text encoders are dropped from the pipeline (``free_text_encoders``): T5-XXL
  alone is 9.5 GB. A caller that still references them elsewhere keeps them alive.

Sizes: SD3 stores (77 + 256) x 4096 text embeddings per caption (2.7 MB in bf16), SD1.5 77 x 768
(118 KB), SDXL 77 x 2048 (315 KB); latents are 4 x 64 x 64 at 512 px (32 KB in fp16; SD3: 16 ch).
"""

from __future__ import annotations

import gc
import hashlib
import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from softrepa.atomic import atomic_path
from softrepa.data import CaptionDataset, ImageInputError, Record, load_image_tensor

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
FORMAT_VERSION = "1"


# ----------------------------------------------------------------------------- encoding


def _encode_prompt_kwargs(pipe: Any, max_sequence_length: int | None) -> dict:
    params = inspect.signature(pipe.encode_prompt).parameters
    kwargs = {name: None for name in ("prompt_2", "prompt_3") if name in params}
    if max_sequence_length is not None and "max_sequence_length" in params:
        kwargs["max_sequence_length"] = max_sequence_length
    return kwargs


@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str], device: torch.device | str, negative_prompt: str | None = None,
                   max_sequence_length: int | None = None) -> dict[str, torch.Tensor]:
    """The pipeline's own ``encode_prompt`` for a list of prompts, as keyword tensors the pipeline's
    ``__call__`` accepts: ``prompt_embeds`` (N, n, D), ``pooled_prompt_embeds`` (N, P) for SD3/SDXL,
    and, when ``negative_prompt`` is given (CFG), the ``negative_*`` counterparts.
    """
    cfg = negative_prompt is not None
    out = pipe.encode_prompt(prompt=list(prompts), device=device, num_images_per_prompt=1,
                             do_classifier_free_guidance=cfg,
                             negative_prompt=[negative_prompt] * len(prompts) if cfg else None,
                             **_encode_prompt_kwargs(pipe, max_sequence_length))
    if len(out) == 2:  # SD1.5-style: (prompt_embeds, negative_prompt_embeds)
        names = ("prompt_embeds", "negative_prompt_embeds")
    elif len(out) == 4:  # SD3 / SDXL: + pooled embeddings
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    else:
        raise ValueError(f"{type(pipe).__name__}.encode_prompt returned {len(out)} values; expected 2 or 4")
    return {name: value for name, value in zip(names, out) if value is not None}


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> scaled latents x0 (B, C, h, w), float32: the posterior mode."""
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:  # the SDXL VAE overflows in fp16 (the pipelines upcast it the same way)
        vae.to(torch.float32)
    try:
        mode = vae.encode(images.to(vae.device, dtype)).latent_dist.mode()
    finally:
        if upcast:
            vae.to(torch.float16)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((mode.float() - shift) * vae.config.scaling_factor).float()


def free_text_encoders(pipe: Any) -> list[str]:
    """Drop the pipeline's text encoders and release their memory; returns the names dropped."""
    dropped = []
    for name in TEXT_ENCODERS:
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)  # diffusers also clears the component from the pipeline config
            dropped.append(name)
    gc.collect()
    if torch.accelerator.is_available():
        torch.accelerator.empty_cache()
    return dropped


def model_fingerprint(pipe: Any, model_id: str) -> str:
    """A short hash naming the features this pipeline produces.

    The id alone does not tell two local folders (or two random-weight test models) apart, and
    hashing whole checkpoints would read gigabytes; component classes, configs and the first values
    of each component's first weight do.
    """
    digest = hashlib.sha256(f"softrepa-cache-v{FORMAT_VERSION}|{model_id}".encode())
    for name in ("vae", *TEXT_ENCODERS):
        module = getattr(pipe, name, None)
        if module is None:
            digest.update(f"|{name}:none".encode())
            continue
        config = getattr(module, "config", None)
        config_text = config.to_json_string() if hasattr(config, "to_json_string") else json.dumps(
            dict(config or {}), sort_keys=True, default=str)
        digest.update(f"|{name}:{type(module).__name__}:{config_text}".encode())
        first = next(module.parameters(), None)
        if first is not None:
            digest.update(first.detach().flatten()[:64].to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()[:20]


# ----------------------------------------------------------------------------- the cache


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _save_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=metadata)


class FeatureCache:
    """Per-item latents and caption embeddings on disk (see module docstring)."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, resolution: int, dtype: torch.dtype = torch.float32,
                 max_sequence_length: int | None = None):
        self.root = Path(root) / fingerprint
        self.resolution = int(resolution)
        self.dtype = dtype
        self.max_sequence_length = max_sequence_length
        self.latent_dir = self.root / f"latents-{self.resolution}px-{_dtype_name(dtype)}"
        self.text_dir = self.root / f"text-{_dtype_name(dtype)}"

    @staticmethod
    def _path(directory: Path, key: str) -> Path:
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return directory / name[:2] / f"{name}.safetensors"

    def latent_path(self, record: Record) -> Path:
        image = Path(record.image).resolve()
        try:
            stat = image.stat()
            identity = f"{image}|{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:  # vanished since listing: the cache builder will report it
            identity = f"{image}|missing"
        return self._path(self.latent_dir, identity)

    def text_path(self, caption: str) -> Path:
        return self._path(self.text_dir, f"{caption}|msl={self.max_sequence_length}")

    def has_latents(self, record: Record) -> bool:
        return self.latent_path(record).is_file()

    def has_text(self, caption: str) -> bool:
        return self.text_path(caption).is_file()

    def save_latents(self, record: Record, latents: torch.Tensor) -> Path:
        path = self.latent_path(record)
        # clone: this item's bytes only, never a view into the batch
        _save_atomic(path, {"latents": latents.detach().to("cpu", self.dtype).clone().contiguous()},
                     {"image": str(record.image), "resolution": str(self.resolution)})
        return path

    def save_text(self, caption: str, tensors: dict[str, torch.Tensor]) -> Path:
        path = self.text_path(caption)
        _save_atomic(path, {k: v.detach().to("cpu", self.dtype).clone().contiguous() for k, v in tensors.items()},
                     {"caption": caption})
        return path

    @staticmethod
    def _load(path: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # a file damaged outside our atomic writes
            raise ValueError(f"cache file {path} is unreadable ({exc}); delete it to re-encode") from exc

    def load_latents(self, record: Record) -> torch.Tensor:
        return self._load(self.latent_path(record))["latents"]  # (C, h, w)

    def load_text(self, caption: str) -> dict[str, torch.Tensor]:
        return self._load(self.text_path(caption))  # {"prompt_embeds": (n, D), ["pooled_prompt_embeds": (P,)]}


@dataclass
class CacheReport:
    encoded_images: int = 0
    encoded_captions: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image path, reason)


def _batches(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def build_cache(pipe: Any, dataset: CaptionDataset, cache: FeatureCache, device: torch.device | str,
                batch_size: int = 8, process_index: int = 0, num_processes: int = 1,
                progress: bool = False) -> CacheReport:
    """Encode what ``cache`` lacks for ``dataset``: every caption and every image.

    With several processes each encodes its share (item i goes to process i % num_processes);
    the caller waits for all before reading. Unreadable images are logged and skipped (no file is
    written, so they are tried again next run and never trained on).
    """
    from tqdm.auto import tqdm

    report = CacheReport()
    captions = [c for i, c in enumerate(dataset.all_captions()) if i % num_processes == process_index]
    todo_text = [c for c in captions if not cache.has_text(c)]
    for batch in tqdm(list(_batches(todo_text, batch_size)), desc="cache captions", disable=not progress):
        encoded = encode_prompts(pipe, batch, device, max_sequence_length=cache.max_sequence_length)
        for row, caption in enumerate(batch):
            cache.save_text(caption, {k: encoded[k][row] for k in ("prompt_embeds", "pooled_prompt_embeds")
                                      if k in encoded})
        report.encoded_captions += len(batch)

    records = [r for i, r in enumerate(dataset.records) if i % num_processes == process_index]
    todo_images = [r for r in records if not cache.has_latents(r)]
    for batch in tqdm(list(_batches(todo_images, batch_size)), desc="cache images", disable=not progress):
        good, pixels = [], []
        for record in batch:
            try:
                pixels.append(load_image_tensor(record.image, cache.resolution))
                good.append(record)
            except ImageInputError as exc:
                log.warning("skipping unreadable image %s: %s", record.image, exc)
                report.skipped.append((str(record.image), str(exc)))
        if not good:
            continue
        latents = encode_latents(pipe.vae, torch.stack(pixels))  # (b, C, h, w)
        for row, record in enumerate(good):
            cache.save_latents(record, latents[row])
        report.encoded_images += len(good)
    return report
