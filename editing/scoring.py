"""Scoring candidate edits without the answer: how far each edit went toward the target prompt and
how much of the source it kept, measured by models that are not the judge (REFERENCE §11). The
automatic strength (``editing.auto``) runs one edit per setting and picks among them with these.

With I(.) and T(.) the CLIP image and text embeddings scaled to unit length ((D,) each), x_src the
source, x_k the k-th candidate edit (k = 1 .. B), p_src / p_tar the source / target prompts, and
crop(.) the bounding box of the mask's nonzero pixels (the whole image without a mask)::

    i_src = I(x_src),  i_k = I(x_k),  t_src = T(p_src),  t_tar = T(p_tar)

    clip_target_k        = <i_k, t_tar>                              text adherence (CLIP score / 100)
    clip_source_k        = <i_k, t_src>                              how much still reads as the source
    directional_k        = <i_k - i_src, t_tar - t_src>              StyleGAN-NADA; InstructPix2Pix's
                           / max(|i_k - i_src| |t_tar - t_src|, eps)   "did it change the way the text did"
    image_similarity_k   = <I(crop(x_k)), I(crop(x_src))>            InstructPix2Pix's preservation
    pixel_similarity_k   = 1 - mean |crop(x_k) - crop(x_src)| / 255     how much of the pixels stayed (no model)
    structure_distance_k = d(crop(x_src), crop(x_k))                 DINO key self-similarity distance
                                                                     (``editing.structure``); 0 = same layout

with eps = 1e-8 (directional is 0 when the edit is the source or the two prompts embed alike).
Higher clip_target and directional mean more edit; higher image_similarity and pixel_similarity
and lower structure_distance mean more kept. These are the raw measures; weighing them is the caller's.

**Masks** (``mask``: (H, W) floats in [0, 1] at the images' size, 1 = may change, as in
``editing.masks``). The alignment measures (clip_target, clip_source, directional) read the whole
images, since the prompts describe the whole picture. The preservation measures (image_similarity,
pixel_similarity, structure_distance) compare edit and source inside the box around the mask's
nonzero pixels, both cropped to it: outside the mask the editor pastes the input back, so the whole image would count
the kept part as "preserved" for every candidate alike and hide the differences. CLIP's processor
then resizes and center-crops the box as it does any image (a long thin box loses its ends).

Models: a ``CLIPModel`` with its ``CLIPTokenizer`` and the PIL ``CLIPImageProcessor`` (the slow class
by name: the default one needs torchvision), all from one folder or Hub id (``DEFAULT_CLIP``, or
a CLIP trained on the shapes world and saved the same way); optionally a DINO ViT
(``structure``, e.g. ``facebook/dino-vitb8``); without it structure_distance is None. The
constructor is the entry that resolves device and dtype (``softrepa.runtime``: CUDA, then MPS, then
CPU; float16 on accelerators, float32 on CPU); embeddings and similarities are float32.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from editing.structure import load_dino, similarity_distance, structure_self_similarity
from softrepa.images import to_rgb
from softrepa.runtime import resolve_device, resolve_dtype

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
EPS = 1e-8
Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL's crop box


@dataclass(frozen=True)
class EditScores:
    """The raw measures of one candidate edit (the module docstring has the equations)."""

    clip_target: float
    clip_source: float
    directional: float
    image_similarity: float
    pixel_similarity: float
    structure_distance: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


# ----------------------------------------------------------------------------- checking the inputs


def _rgb(image: Any, name: str) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{name} must be a PIL image, got {type(image).__name__}")
    return to_rgb(image)


def check_images(source: Image.Image, edits: Sequence[Image.Image]) -> tuple[Image.Image, list[Image.Image]]:
    """The source and the edits as RGB, checked: at least one edit, every edit the source's size."""
    source = _rgb(source, "source")
    if isinstance(edits, Image.Image) or not isinstance(edits, Sequence):
        raise ValueError(f"edits must be a sequence of PIL images (a list), got {type(edits).__name__}")
    if len(edits) == 0:
        raise ValueError("edits is empty: pass at least one candidate edit to score")
    checked = [_rgb(edit, f"edits[{index}]") for index, edit in enumerate(edits)]
    for index, edit in enumerate(checked):
        if edit.size != source.size:
            raise ValueError(f"edits[{index}] is {edit.size[0]}x{edit.size[1]} but the source is "
                             f"{source.size[0]}x{source.size[1]}: score edits at the source's size")
    return source, checked


def mask_box(mask: Any, size: tuple[int, int]) -> Box | None:
    """The box (left, top, right, bottom) around the nonzero pixels of an (H, W) mask in [0, 1] for
    images of ``size`` (width, height); None without a mask. A ``editing.masks.PixelMask`` is read
    through its values. ValueError naming ``mask`` for anything else."""
    if mask is None:
        return None
    values = getattr(mask, "values", mask)  # a PixelMask carries its array as .values
    if not isinstance(values, np.ndarray):
        raise ValueError(f"mask must be an (H, W) float array in [0, 1], got {type(mask).__name__}")
    if values.dtype != bool and not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"mask must be float in [0, 1] (or bool), got {values.dtype}")
    width, height = size
    if values.shape != (height, width):
        raise ValueError(f"mask has shape {values.shape} but the images are {width}x{height}: pass an (H, W) = "
                         f"({height}, {width}) mask")
    values = values.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError(f"mask values must lie in [0, 1] (got {values.min():g} .. {values.max():g})")
    rows, cols = np.nonzero(values > 0)
    if rows.size == 0:
        raise ValueError("mask is all zeros: nothing may change, so there is no edit to score")
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def unit_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB images of one size -> (B, 3, H, W) float32 in [0, 1]."""
    array = np.stack([np.asarray(image, dtype=np.uint8) for image in images])  # (B, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)


def cosine_rows(a: torch.Tensor, b: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """<a_k, b_k> / max(|a_k| |b_k|, eps) for (B, D) rows (b may be (1, D)) -> (B,)."""
    return (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=eps)


# ----------------------------------------------------------------------------- the models


def clip_image_processor_class() -> type:
    """The PIL-based CLIP image processor (``CLIPImageProcessorPil`` in transformers 5, where the
    default ``CLIPImageProcessor`` needs torchvision; ``CLIPImageProcessor`` in transformers 4)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def features(output: Any) -> torch.Tensor:
    """``get_image_features`` / ``get_text_features``' result as a (B, D) tensor: a tensor in
    transformers 4, an output object whose ``pooler_output`` is the projected embedding in 5."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"CLIP features came back as a {type(output).__name__} without a pooler_output tensor")
    return pooled


def load_clip(name: str | os.PathLike) -> tuple[Any, Any, Any]:
    """(CLIPModel, CLIPTokenizer, the PIL CLIPImageProcessor) from one folder or Hub id, on the CPU."""
    from transformers import CLIPModel, CLIPTokenizer

    from softrepa.known_warnings import quiet_known_warnings

    quiet_known_warnings()  # the PIL processor is the one meant: transformers' torchvision notice says nothing here
    source = str(name)
    try:
        model = CLIPModel.from_pretrained(source)
        tokenizer = CLIPTokenizer.from_pretrained(source)
        processor = clip_image_processor_class().from_pretrained(source)
    except (OSError, ValueError) as exc:  # no such folder, not cached and no Hub access, a missing file
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise OSError(f"clip: cannot load a CLIP scorer from {source!r} ({type(exc).__name__}: {first_line}); it "
                      "needs a CLIPModel (config.json + weights), its CLIPTokenizer files and a "
                      "preprocessor_config.json in one folder or Hub repository") from exc
    return model.eval(), tokenizer, processor


def _torch_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    return dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)


class EditScorer:
    """Scores candidate edits of one source (``score``); the module docstring has the equations.

    clip: a CLIP folder or Hub id (model, tokenizer and image processor together). structure: a DINO
    ViT folder or Hub id, or None (no structure distance). device / dtype: None or "auto" picks
    (CUDA, MPS, CPU; float16 on accelerators, float32 on CPU). batch_size: images per forward.
    """

    def __init__(self, clip: str | os.PathLike = DEFAULT_CLIP, *, structure: str | os.PathLike | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                 batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = _torch_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.clip_name = str(clip)
        self.structure_name = None if structure is None else str(structure)
        model, self.tokenizer, self.processor = load_clip(clip)
        self.model = model.to(device=self.device, dtype=self.dtype)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.structure_model = (None if structure is None
                                else load_dino(structure, self.device, self.dtype))

    def describe(self) -> dict[str, str | None]:
        """What scored, for a result's metadata: the CLIP and DINO model names (None: not used)."""
        return {"clip": self.clip_name, "structure": self.structure_name}

    # ------------------------------------------------------------------------- embeddings

    def _chunks(self, items: Sequence[Any]):
        for start in range(0, len(items), self.batch_size):
            yield items[start:start + self.batch_size]

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """i = I(x) / |I(x)|: (B, D) float32 unit rows for RGB images (any sizes)."""
        rows = []
        for chunk in self._chunks(images):
            pixels = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"]  # (b, 3, S, S)
            output = self.model.get_image_features(pixel_values=pixels.to(device=self.device, dtype=self.dtype))
            rows.append(features(output).float())  # (b, D)
        embeds = torch.cat(rows)
        return embeds / embeds.norm(dim=-1, keepdim=True).clamp(min=EPS)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """t = T(p) / |T(p)|: (B, D) float32 unit rows; prompts truncated to the text model's positions."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        output = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                              attention_mask=tokens["attention_mask"].to(self.device))
        embeds = features(output).float()  # (B, D)
        return embeds / embeds.norm(dim=-1, keepdim=True).clamp(min=EPS)

    @torch.no_grad()
    def structure_distances(self, source: Image.Image, edits: Sequence[Image.Image]) -> list[float]:
        """d(source, edit_k) for RGB images of one size: the source's self-similarity once."""
        similarity_src = structure_self_similarity(self.structure_model, unit_pixels([source]))  # (1, T, T)
        distances: list[float] = []
        for chunk in self._chunks(edits):
            similarity = structure_self_similarity(self.structure_model, unit_pixels(chunk))  # (b, T, T)
            distances.extend(similarity_distance(similarity_src, similarity).cpu().tolist())
        return distances

    # ------------------------------------------------------------------------- scores

    def score(self, source: Image.Image, edits: Sequence[Image.Image], source_prompt: str, target_prompt: str,
              mask: np.ndarray | None = None) -> list[EditScores]:
        """One ``EditScores`` per edit, in order. The prompts and the source are encoded once; the
        edits in batches of ``batch_size``. ValueError naming the argument for bad input."""
        for name, prompt in (("source_prompt", source_prompt), ("target_prompt", target_prompt)):
            if not isinstance(prompt, str):
                raise ValueError(f"{name} must be a str, got {type(prompt).__name__}")
        source, edits = check_images(source, edits)
        box = mask_box(mask, source.size)
        t_src, t_tar = self.embed_texts([source_prompt, target_prompt])  # (D,) each
        whole = self.embed_images([source, *edits])  # (1 + B, D)
        i_src, i_edit = whole[:1], whole[1:]  # (1, D), (B, D)
        clip_target = i_edit @ t_tar  # (B,)
        clip_source = i_edit @ t_src  # (B,)
        directional = cosine_rows(i_edit - i_src, (t_tar - t_src)[None])  # (B,)
        if box is None:
            kept_src, kept_edits = source, edits
            kept = whole
        else:
            kept_src, kept_edits = source.crop(box), [edit.crop(box) for edit in edits]
            kept = self.embed_images([kept_src, *kept_edits])  # (1 + B, D)
        image_similarity = kept[1:] @ kept[0]  # (B,)
        pixels = unit_pixels([kept_src, *kept_edits])  # (1 + B, 3, h, w) in [0, 1]
        pixel_similarity = 1.0 - (pixels[1:] - pixels[:1]).abs().mean(dim=(1, 2, 3))  # (B,)
        structure: list[float | None] = (self.structure_distances(kept_src, kept_edits)
                                         if self.structure_model is not None else [None] * len(edits))
        return [EditScores(clip_target=float(clip_target[k]), clip_source=float(clip_source[k]),
                           directional=float(directional[k]), image_similarity=float(image_similarity[k]),
                           structure_distance=structure[k], pixel_similarity=float(pixel_similarity[k]))
                for k in range(len(edits))]

