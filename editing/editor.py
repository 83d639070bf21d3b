"""``FlowEditor``: keeps a pipeline (SD3, SD3.5 or FLUX.1) loaded and edits images with FlowEdit, caching
what repeats. The model family (``editing.flowedit.family_of``) decides how prompts are encoded and
velocities computed; everything here is the same for every family.

Caches (all bounded LRUs; sizes are constructor arguments):

* source latents, by the sha256 of the prepared pixels: re-editing an image skips the VAE encoder;
* prompt embeddings, by (prompt, max_sequence_length): independent of soft tokens, which enter
  the transformer after the text encoders, so one entry serves edits with tokens on and off;
* source-branch velocities, one table per (source image, source prompts, seed, ...): the noise of
  every step depends only on the seed, so v_src (a function of the source image, source prompts,
  src_cfg, the source branch's tokens state, T, n_max, n_avg and the seed) is the same for every
  target. A re-edit with a new target prompt or tar CFG runs only the target half of the batch (2
  items instead of 4). The noise generator is consumed the same way on a hit (z_tar needs the
  noise), so the result equals the uncached edit up to batch-size rounding. Candidates fill one
  table per seed, so re-editing any of the last variations' seeds hits.

Memory: a velocity table holds n_max x n_avg latents (SD3 at 1024 px: 1 MiB each, ~33 MiB a table),
on the model's device; the tables together stay within ``velocity_cache_bytes`` (measured when an
edit ends; ``cache_info()`` reports the bytes held), the least recently used dropped first.

One edit runs at a time per editor (a lock): the soft-token switch is a flag on the shared
transformer, and the caches are shared state.

App usage::

    editor = FlowEditor(pipe, tokens="tokens.safetensors")   # or a TokenFile, a SoftTokens, or None
    result = editor.edit(image, "a cat on a sofa", "a dog on a sofa", get_preset("sd3-tokens").params,
                         use_tokens=True, progress=lambda done, total: ...)
    result.image, result.source_image, result.input_report.describe(), result.save("out.png")
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Sequence, TypeVar

import torch
from PIL import Image

from editing.flowedit import (Branch, Candidate, FlowEditParams, ProgressCallback, PromptEmbeds, decode_latents,
                              encode_image, family_of, flowedit_candidates, source_and_target)
from editing.inputs import DEFAULT_MAX_SIDE, InputReport, PreparedImage, model_max_side, prepare_image
from editing.masks import (AutoMask, MaskError, MaskLike, MaskOptions, PixelMask, feathered, latent_mask, mask_image,
                           paste_back, pixel_mask_of_latent, prepare_mask, read_mask)
from editing.presets import default_preset_name, get_preset
from editing.token_file import TokenFile
from softrepa.compile import compile_denoiser, run_with_fallback
from softrepa.hooks import AttachedTokens, attach_tokens
from softrepa.images import EDIT_METADATA_KEY, write_png
from softrepa.models import PipelineKind, check_compatible, execution_device, get_kind, pipeline_kind
from softrepa.tokens import SoftTokens

logger = logging.getLogger(__name__)

METADATA_KEY = EDIT_METADATA_KEY  # PNG text chunk holding the edit's parameters as JSON
METADATA_VERSION = 1
# the source-velocity tables' budget: 15 seeds of SD3 at 1024 px (n_max 33: 33 MiB a table), e.g. the
# last 8 variations of an image and the edits around them
VELOCITY_CACHE_BYTES = 512 * 2**20
SWEPT = ("n_max", "tar_cfg", "seed", "noise_offset")  # what the edits of one batched run may differ in

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A bounded mapping that forgets the least recently used entries: their sizes (``sizeof``, default
    1 an entry, i.e. a count) add up to at most ``maxsize`` (0 stores nothing).

    A value's size is measured when it is put, so a value that grows (a velocity table filled during
    an edit) is put again once filled; a value larger than ``maxsize`` alone is not kept. The project's
    own rather than ``cachetools.LRUCache`` (the same rule): 20 lines against a dependency pinned in two
    install files (pyproject.toml, the Space's requirements.txt).
    """

    def __init__(self, maxsize: int, sizeof: Callable[[V], int] | None = None):
        if maxsize < 0:
            raise ValueError(f"cache size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self.currsize = 0  # the sizes of the entries held
        self._sizeof = sizeof or (lambda value: 1)
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()  # key -> (value, its size when put)

    def get(self, key: K) -> V | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key][0]

    def put(self, key: K, value: V) -> V:
        self.pop(key)
        size = self._sizeof(value)
        if size > self.maxsize:
            return value
        self._data[key] = (value, size)
        self.currsize += size
        while self.currsize > self.maxsize:
            self.currsize -= self._data.popitem(last=False)[1][1]
        return value

    def pop(self, key: K) -> None:
        if key in self._data:
            self.currsize -= self._data.pop(key)[1]

    def clear(self) -> None:
        self._data.clear()
        self.currsize = 0

    def values(self) -> list[V]:
        return [value for value, _ in self._data.values()]

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class _Source:
    x_src: torch.Tensor  # (1, C, h, w) float32 on the device the transformer runs on
    key: str  # the prepared pixels' sha256: the velocity tables of this image are keyed by it


VelocityTable = dict  # {(step, sample): v_src (1, C, h, w) float32}: one seed's source velocities


def table_bytes(table: VelocityTable) -> int:
    """The bytes a velocity table's tensors hold (what the editor's velocity budget counts)."""
    return sum(v.numel() * v.element_size() for v in table.values())


@dataclass
class EditStats:
    seconds: float
    transformer_calls: int
    prompts_encoded: int  # prompts that missed the cache and ran the text encoders
    source_latents_cached: bool  # True: the VAE encoder was skipped
    source_velocities_reused: int  # (step, sample) pairs that ran only the target branch
    kind_assumed: str | None = None  # the editor's kind was assumed, not known: why and how to choose (PipelineKind)


@dataclass
class EditResult:
    image: Image.Image
    latents: torch.Tensor  # (1, C, h, w) float32, before decoding
    source_image: Image.Image  # the prepared input (same size as ``image``): for before/after views
    source_prompt: str
    target_prompt: str
    params: FlowEditParams
    use_tokens: bool
    input_report: InputReport
    stats: EditStats
    model: str = ""
    kind: str = ""  # the model kind the edit ran as (its text length, presets, limits)
    tokens_info: dict[str, Any] | None = None  # file name, file sha256, tensor sha256
    mask: PixelMask | None = None  # the region the edit was restricted to (given or found), result size
    mask_info: dict[str, Any] | None = None  # how: "given" / "auto", options, pasted back, coverage, notes

    def metadata(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to reproduce the edit (what ``save`` writes into the PNG)."""
        data = {"version": METADATA_VERSION, "source_prompt": self.source_prompt, "target_prompt": self.target_prompt,
                "params": self.params.to_dict(), "use_tokens": self.use_tokens,
                "tokens": self.tokens_info if self.use_tokens else None, "model": self.model, "kind": self.kind,
                "input": self.input_report.to_dict(), "mask": self.mask_info}
        if self.stats.kind_assumed:
            data["kind_assumed"] = self.stats.kind_assumed
        data.update(extra or {})
        return data

    def save(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
        """Write the edited image as a PNG with ``metadata(extra)`` as one JSON text under
        ``METADATA_KEY``, atomically: a crash never leaves a half file that a resumed batch would
        mistake for done. A masked edit also writes its mask beside it (``mask_path``), first, and
        the PNG's metadata names that file and carries the mask itself (a PNG, base64), so the PNG
        alone replays the edit."""
        metadata = self.metadata(extra)
        if self.mask is not None:
            mask_file = write_png(self.mask.image(), mask_path(path))
            metadata["mask"] = {**(self.mask_info or {}), "file": mask_file.name,
                                "png_base64": base64.b64encode(mask_file.read_bytes()).decode("ascii")}
        return write_png(self.image, path, metadata, key=METADATA_KEY, layout="json")


def mask_path(path: str | os.PathLike) -> Path:
    """Where ``EditResult.save`` writes the mask of a result saved at ``path`` ("x.png" -> "x.mask.png")."""
    path = Path(path)
    return path.with_name(f"{path.stem}.mask.png")


def mask_from_metadata(metadata: dict[str, Any]) -> Image.Image | None:
    """The mask a saved edit carries (grey image, white = edited), or None for an unmasked edit.

    A PNG's metadata is as untrusted as an uploaded mask, so it is read like one (``read_mask``):
    ``MaskError`` saying what is wrong when the metadata carries something that is not a mask."""
    encoded = (metadata.get("mask") or {}).get("png_base64")
    if not encoded:
        return None
    if not isinstance(encoded, str):
        raise MaskError(f"the mask in the metadata (png_base64) is a {type(encoded).__name__}, not base64 text")
    try:
        data = base64.b64decode(encoded, validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        raise MaskError("the mask in the metadata (png_base64) is not base64") from None
    return mask_image(read_mask(data))


def read_png_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The edit metadata of a PNG written by ``EditResult.save``; ``ValueError`` when it has none."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(METADATA_KEY)
    if text is None:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata")
    return json.loads(text)


def _tokens_content_sha256(tokens: SoftTokens) -> str:
    digest = hashlib.sha256(tokens.config.to_json().encode())
    for tensor in (tokens.static, tokens.time.weight if tokens.time is not None else None):
        if tensor is not None:
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class FlowEditor:
    """Edit images with FlowEdit on an SD3, SD3.5 or FLUX.1 pipeline, optionally with SoftREPA soft tokens.

    pipe: a ``StableDiffusion3Pipeline`` or ``FluxPipeline`` (already on its device and dtype; never
        modified except for the token hooks this editor attaches and removes in ``close``).
    tokens: a token file path or ``TokenFile``, ``SoftTokens``, an ``AttachedTokens`` already hooked into
        ``pipe.transformer`` (left attached on close), or None.
    max_side: long-side limit for inputs (clamped to what the transformer's position embedding covers).
    min_side: smallest accepted side (default 4 patches: 64 px on SD3).
    cache_size: source images whose latents are kept; 0 disables the velocity tables too.
    velocity_cache_bytes: what the source-velocity tables (one per image, source prompt, seed, ...)
        may hold together, in bytes (default ``VELOCITY_CACHE_BYTES``, 512 MiB); 0 disables them.
    prompt_cache_size: prompt embeddings kept.
    cache_source_velocities: reuse source velocities across targets (see module docstring).
    max_sequence_length: T5 tokens per prompt (default: the kind's: 256 on SD3, 512 on FLUX.1-dev).
    kind: the model kind (``softrepa.models.KINDS``), for the default preset, text length and limits;
        default: the pipeline's (``softrepa.models.pipeline_kind``: the kind ``load_pipeline``
        recorded, else the one its folder or Hub id names, else the one kind its class fits; where
        several fit, e.g. SD3 and SD3.5, the first, said in the log and in each result's
        ``stats.kind_assumed`` and PNG metadata). With tokens, the default preset follows the tokens' kind.
    compile: None / False (eager), True or "default", "max-autotune-no-cudagraphs", "reduce-overhead":
        ``torch.compile`` the transformer's repeated blocks in place (``softrepa.compile``); the first
        edit compiles, later edits of any size reuse it; ``compile_info`` says what runs (and why
        eager, where no compiler is present).
    """

    def __init__(self, pipe: Any, tokens: SoftTokens | AttachedTokens | TokenFile | str | os.PathLike | None = None, *,
                 max_side: int = DEFAULT_MAX_SIDE, min_side: int | None = None, cache_size: int = 4,
                 velocity_cache_bytes: int = VELOCITY_CACHE_BYTES, prompt_cache_size: int = 32,
                 cache_source_velocities: bool = True, max_sequence_length: int | None = None, model_name: str | None = None,
                 kind: str | None = None, compile: bool | str | None = None):
        self.pipe = pipe
        self.family = family_of(pipe.transformer)
        self.compile_info = compile_denoiser(pipe.transformer, compile)  # softrepa.compile: blocks, in place
        if kind:
            get_kind(kind)  # an unknown kind is refused here, naming the known ones
        resolved = PipelineKind(kind) if kind else pipeline_kind(pipe)
        self.kind, self.kind_assumed = resolved.kind, resolved.assumed
        if self.kind_assumed:  # said once per editor, and in each result (EditStats, the PNG's metadata)
            logger.warning("FlowEditor: %s", self.kind_assumed)
        self.factor = self.family.pixel_multiple(pipe)
        limit = model_max_side(pipe)
        self.max_side = min(max_side, limit) if limit else max_side
        self.min_side = min_side
        self.max_sequence_length = max_sequence_length or get_kind(self.kind).max_sequence_length
        self.cache_source_velocities = cache_source_velocities
        self._velocities: LRU[tuple, VelocityTable] = LRU(velocity_cache_bytes, sizeof=table_bytes)
        self.model_name = model_name if model_name is not None else str(getattr(pipe, "name_or_path", "") or "")
        self._sources: LRU[str, _Source] = LRU(cache_size)
        self._prompts: LRU[tuple[str, int], PromptEmbeds] = LRU(prompt_cache_size)
        self._lock = threading.RLock()
        self._attached: AttachedTokens | None = None
        self._owns_attachment = False
        self.tokens_info: dict[str, Any] | None = None
        self.set_tokens(tokens)

    # tokens ------------------------------------------------------------------

    @property
    def has_tokens(self) -> bool:
        return self._attached is not None

    @property
    def attached_tokens(self) -> AttachedTokens | None:
        """The token hooks in use (None without tokens); ``tokens_info`` describes them."""
        return self._attached

    def set_tokens(self, tokens: SoftTokens | AttachedTokens | TokenFile | str | os.PathLike | None) -> None:
        """Swap the soft tokens (None removes them). Call again after changing tokens in place.

        A path is read here; a ``TokenFile`` (already read and hashed) is not read again.
        """
        with self._lock:
            if self._attached is not None and self._owns_attachment:
                self._attached.detach()
            self._attached, self._owns_attachment, self.tokens_info = None, False, None
            if tokens is None:
                return
            info: dict[str, Any] = {"file": None, "sha256": None}
            if isinstance(tokens, (str, os.PathLike)):
                tokens = TokenFile.load(tokens)
            if isinstance(tokens, TokenFile):  # read and hashed once, by whoever loaded it
                check_compatible(tokens.tokens.config, self.pipe, source=str(tokens.path))
                info = {"file": tokens.name, "sha256": tokens.sha256}
                tokens = tokens.tokens
            if isinstance(tokens, AttachedTokens):
                if tokens.denoiser is not self.pipe.transformer:
                    raise ValueError("the AttachedTokens are hooked into a different transformer than this pipeline's")
                self._attached = tokens
            else:
                # off by default: each transformer call switches them per branch
                self._attached, self._owns_attachment = attach_tokens(self.pipe, tokens, enabled=False), True
            info["content_sha256"] = _tokens_content_sha256(self._attached.tokens)
            info["config"] = json.loads(self._attached.tokens.config.to_json())
            self.tokens_info = info

    def close(self) -> None:
        """Remove the token hooks this editor attached and drop the caches."""
        self.set_tokens(None)
        self.clear_cache()

    # caches ------------------------------------------------------------------

    def clear_cache(self) -> None:
        with self._lock:
            self._sources.clear()
            self._prompts.clear()
            self._velocities.clear()

    def cache_info(self) -> dict[str, int]:
        """Entries per cache, and the bytes the velocity tables hold against their budget."""
        with self._lock:
            return {"sources": len(self._sources), "prompts": len(self._prompts),
                    "velocity_sets": len(self._velocities), "velocity_bytes": self._velocities.currsize,
                    "velocity_budget_bytes": self._velocities.maxsize}

    def _prompt(self, text: str, counter: list[int]) -> PromptEmbeds:
        key = (text, self.max_sequence_length)
        cached = self._prompts.get(key)
        if cached is None:
            counter[0] += 1
            cached = self._prompts.put(key, self.family.encode_prompt(self.pipe, text, self.max_sequence_length))
        return cached

    def _source(self, prepared: PreparedImage) -> tuple[_Source, bool]:
        key = prepared.content_hash
        cached = self._sources.get(key)
        if cached is not None:
            return cached, True
        device = execution_device(self.pipe)
        x_src = encode_image(self.pipe.vae, prepared.image, device).to(device)  # (1, C, h, w)
        return self._sources.put(key, _Source(x_src, key)), False

    # editing -----------------------------------------------------------------

    def prepare(self, image: str | os.PathLike | bytes | Image.Image | PreparedImage,
                max_side: int | None = None) -> PreparedImage:
        """Open and fit an image to the model (see ``editing.inputs.prepare_image``).

        max_side: this call's long-side limit (default and upper bound: the editor's ``max_side``).
        """
        if isinstance(image, PreparedImage):
            return image
        side = self.max_side if max_side is None else min(int(max_side), self.max_side)
        return prepare_image(image, max_side=side, multiple=self.factor, min_side=self.min_side)

    def check_prompt_length(self, prompt: str, name: str = "prompt") -> str | None:
        """Refuse a prompt whose end the model would silently drop; a warning when only partly read.

        SD3 reads a prompt with two CLIP encoders (``tokenizer.model_max_length``, 77 tokens) and T5
        (``max_sequence_length`` tokens); FLUX.1 with CLIP (pooled only) and T5 the same way.
        Over the CLIP limit but within T5's, T5 still reads all of
        it: returns a warning. Over both, or over CLIP without T5 (e.g. the shapes model): raises
        ``ValueError`` saying by how much to shorten it. Else returns None.
        """
        tokenizer = self.pipe.tokenizer
        clip_limit = int(tokenizer.model_max_length)
        clip_count = len(tokenizer(prompt, truncation=False)["input_ids"])  # with the start and end tokens
        if clip_count <= clip_limit:
            return None
        t5_tokenizer, t5_encoder = self.family.t5_attrs
        t5 = getattr(self.pipe, t5_tokenizer, None)
        if t5 is not None and getattr(self.pipe, t5_encoder, None) is not None:
            t5_count = len(t5(prompt, truncation=False)["input_ids"])
            if t5_count <= self.max_sequence_length:
                return (f"the {name} is {clip_count - 2} CLIP tokens long: the CLIP encoders read the first "
                        f"{clip_limit - 2}, T5 reads all of it")
            clip_count, clip_limit = t5_count, self.max_sequence_length
        raise ValueError(f"the {name} is {clip_count - 2} tokens long but this model reads at most {clip_limit - 2}; "
                         f"shorten it by about {clip_count - clip_limit} tokens (a token is a short word or part "
                         "of a longer one)")

    def default_params(self, use_tokens: bool) -> FlowEditParams:
        kind = self._attached.tokens.config.kind if self._attached is not None else self.kind
        return get_preset(default_preset_name(kind, use_tokens)).params

    def check_inputs(self, source_prompt: str, target_prompt: str, params: FlowEditParams, use_tokens: bool) -> None:
        """``ValueError`` before any work when the edit cannot run; the parameters through
        ``FlowEditParams.check`` (a ``ParameterError`` names the field), which callers do not repeat."""
        for name, prompt in (("source prompt", source_prompt), ("target prompt", target_prompt)):
            if not isinstance(prompt, str):
                raise ValueError(f"the {name} must be a string, got {type(prompt).__name__}")
            if not prompt.strip():
                raise ValueError(f"the {name} is empty: FlowEdit needs a description of the source image and of "
                                 "the wanted result")
            warning = self.check_prompt_length(prompt, name)
            if warning:
                logger.warning(warning)
        if not isinstance(params, FlowEditParams):
            raise ValueError(f"params must be a FlowEditParams, got {type(params).__name__}")
        params.check()
        self.family.check(params, self.pipe.transformer)  # e.g. FLUX.1: no negative prompt
        if use_tokens and self._attached is None:
            raise ValueError("use_tokens=True but this editor has no soft tokens (pass tokens= when creating it)")

    def edit(self, image: str | os.PathLike | bytes | Image.Image | PreparedImage, source_prompt: str,
             target_prompt: str, params: FlowEditParams | None = None, *, use_tokens: bool | None = None,
             max_side: int | None = None, mask: MaskLike | AutoMask | None = None,
             mask_options: MaskOptions | None = None, progress: ProgressCallback | None = None) -> EditResult:
        """Edit ``image`` from ``source_prompt`` to ``target_prompt``.

        params: defaults to the preset for this model and tokens state.
        use_tokens: None = on when the editor has tokens.
        max_side: this edit's long-side limit for the input (default and upper bound: the editor's).
        mask: None (the whole image may change), a mask drawn on ``image`` (file, bytes, PIL image or
            (H, W) array in [0, 1]; white / opaque / 1 = may change), or ``AutoMask()`` to find the
            region from the edit. See ``editing.masks``.
        mask_options: feathering and paste-back (default ``MaskOptions()``).
        progress: called with (steps done, total steps) during the edit; an exception raised there
            cancels the edit (the caches stay valid).
        Raises ``ImageInputError`` (bad image or mask: ``MaskError``) or ``ValueError`` (bad prompts or
        parameters).
        """
        return self.edit_candidates(image, source_prompt, target_prompt, params, use_tokens=use_tokens,
                                    max_side=max_side, mask=mask, mask_options=mask_options, progress=progress)[0]

    def edit_candidates(self, image: str | os.PathLike | bytes | Image.Image | PreparedImage, source_prompt: str,
                        target_prompt: str, params: FlowEditParams | None = None, *, seeds: Sequence[int] | None = None,
                        use_tokens: bool | None = None, max_side: int | None = None,
                        mask: MaskLike | AutoMask | None = None, mask_options: MaskOptions | None = None,
                        progress: ProgressCallback | None = None) -> list[EditResult]:
        """``edit`` for each seed of ``seeds`` (default: ``params.seed`` alone), in one batched run.

        The candidates share every transformer call (the batch dimension: 4N items per step instead
        of N runs of 4); candidate j equals ``edit`` with ``params.replace(seed=seeds[j])`` to
        batch-size rounding. Each seed's source velocities are kept (a table per seed): re-editing a
        candidate's seed alone reuses them; a run reuses them when every seed has them.
        ``EditResult.stats`` of each candidate describes the whole run.
        """
        use_tokens = self.has_tokens if use_tokens is None else bool(use_tokens)
        params = self.default_params(use_tokens) if params is None else params
        runs = [params] if seeds is None else [params.replace(seed=seed) for seed in seeds]
        if not runs:
            raise ValueError("seeds is empty: give at least one seed")
        return self.edit_runs(image, source_prompt, target_prompt, [(run, use_tokens) for run in runs],
                              max_side=max_side, mask=mask, mask_options=mask_options, progress=progress)

    def edit_runs(self, image: str | os.PathLike | bytes | Image.Image | PreparedImage, source_prompt: str,
                  target_prompt: str, runs: Sequence[tuple[FlowEditParams, bool]], *, max_side: int | None = None,
                  mask: MaskLike | AutoMask | None = None, mask_options: MaskOptions | None = None,
                  progress: ProgressCallback | None = None) -> list[EditResult]:
        """One batched run of edits (params, use_tokens) that may differ in n_max, tar_cfg, seed,
        noise_offset and tokens state (``editing.flowedit.flowedit_candidates``); the rest of their
        parameters must agree. Edit j equals ``edit`` with runs[j] to batch-size rounding; the
        auto-strength sweep (``editing.auto``) and variations are such runs."""
        runs = [(params, bool(use_tokens)) for params, use_tokens in runs]
        if not runs:
            raise ValueError("runs is empty: give at least one (params, use_tokens)")
        for params, use_tokens in runs:  # a ParameterError names the field
            self.check_inputs(source_prompt, target_prompt, params, use_tokens)
        _check_shared([params for params, _ in runs])
        options = mask_options or MaskOptions()
        options.check()
        prepared = self.prepare(image, max_side)
        given = None
        if mask is not None and not isinstance(mask, AutoMask):  # what the latents see: feathered in pixels
            given = feathered(prepare_mask(mask, prepared.report), float(options.feather_px))
        with self._lock:
            start = time.perf_counter()
            encoded = [0]
            source, latents_cached = self._source(prepared)
            branches = self._branches(source_prompt, target_prompt, runs, encoded)
            tables = self._velocity_tables(source, source_prompt, runs, [src.tokens for src, _ in branches])
            vae_factor = int(self.pipe.vae_scale_factor)
            latent = mask if given is None else latent_mask(given, vae_factor, float(options.feather_latent),
                                                             source.x_src.device)

            def run_flowedit():  # fresh generators each time: a compile that fails reruns the same edit eagerly
                # CPU generators: the same noise (hence the same edit) on every device
                candidates = [Candidate(src, tar, torch.Generator(device="cpu").manual_seed(int(params.seed)),
                                        params.n_max, params.noise_offset, None if tables is None else tables[j][1])
                              for j, ((params, _), (src, tar)) in enumerate(zip(runs, branches))]
                return flowedit_candidates(self.pipe.transformer, self.pipe.scheduler, source.x_src, runs[0][0],
                                           candidates, attached=self._attached, mask=latent, progress=progress)

            try:
                out = run_with_fallback(self.compile_info, self.pipe.transformer, run_flowedit)
            finally:  # kept, a cancelled edit's finished steps too
                self._keep(tables)
            finished = []  # (image, region, mask info) per candidate
            for j in range(len(runs)):
                found = None if out.mask is None else out.mask[j if out.mask.shape[0] > 1 else 0][None]  # (1, 1, h, w)
                edited = decode_latents(self.pipe.vae, out.latents[j:j + 1], source.x_src.device)
                finished.append(_restrict(edited, prepared, given, mask, found, vae_factor, options))
            stats = EditStats(seconds=time.perf_counter() - start, transformer_calls=out.transformer_calls,
                              prompts_encoded=encoded[0], source_latents_cached=latents_cached,
                              source_velocities_reused=out.source_velocities_reused, kind_assumed=self.kind_assumed)
        return [EditResult(image=edited, latents=out.latents[j:j + 1], source_image=prepared.image,
                           source_prompt=source_prompt, target_prompt=target_prompt, params=run, use_tokens=use_tokens,
                           input_report=prepared.report, stats=stats, model=self.model_name, kind=self.kind,
                           tokens_info=self.tokens_info, mask=region, mask_info=mask_info)
                for j, ((run, use_tokens), (region, mask_info, edited)) in enumerate(zip(runs, finished))]

    def _branches(self, source_prompt: str, target_prompt: str, runs: list[tuple[FlowEditParams, bool]],
                  encoded: list[int]) -> list[tuple[Branch, Branch]]:
        """(source, target) branches per run; runs with the same source (target) setting get the same
        object, which is how ``flowedit_candidates`` knows they may share a source velocity."""
        params = runs[0][0]
        distilled = self.family.distilled  # FLUX.1: no negative prompts to encode
        texts = (self._prompt(source_prompt, encoded),
                 None if distilled else self._prompt(params.src_negative_prompt, encoded),
                 self._prompt(target_prompt, encoded),
                 None if distilled else self._prompt(params.tar_negative_prompt, encoded))
        made: dict[tuple, Branch] = {}
        pairs = []
        for run, use_tokens in runs:
            src, tar = source_and_target(*texts, run, use_tokens, distilled=distilled)
            pairs.append((made.setdefault(("source", src.tokens, src.cfg), src),
                          made.setdefault(("target", tar.tokens, tar.cfg), tar)))
        return pairs

    def _velocity_tables(self, source: _Source, source_prompt: str, runs: list[tuple[FlowEditParams, bool]],
                         source_tokens: list[bool]) -> list[tuple[tuple, VelocityTable]] | None:
        """(key, the source-velocity table) per run, which the edit reads and fills; None when caching is
        off. A table is per seed and noise stream (``FlowEditParams.source_velocity_key``), so a variation's
        seed or a sweep's candidate re-edited alone finds its table; runs with one key share the table."""
        if not self.cache_source_velocities or self._sources.maxsize == 0 or self._velocities.maxsize == 0:
            return None
        held: dict[tuple, VelocityTable] = {}
        tables = []
        for (run, _), tokens in zip(runs, source_tokens):
            key = (source.key, source_prompt, run.source_velocity_key(),
                   self.tokens_info["content_sha256"] if tokens else None)
            tables.append((key, held.setdefault(key, self._velocities.get(key) or {})))
        return tables

    def _keep(self, tables: list[tuple[tuple, VelocityTable]] | None) -> None:
        """Put this edit's tables (back) in the velocity cache, measured now that they are filled and
        the most recently used: the budget drops the tables least recently used first."""
        for key, table in tables or ():
            if table:
                self._velocities.put(key, table)


def _check_shared(runs: list[FlowEditParams]) -> None:
    """``ValueError`` unless the runs of one batch agree on what they share (all but SWEPT)."""
    first = runs[0].to_dict()
    for run in runs[1:]:
        differ = [name for name, value in run.to_dict().items() if name not in SWEPT and value != first[name]]
        if differ:
            raise ValueError(f"the edits of one batched run differ in {', '.join(differ)}; only "
                             f"{', '.join(SWEPT)} and the tokens state may differ: run them separately")


def _restrict(edited: Image.Image, prepared: PreparedImage, given: PixelMask | None, requested: Any,
              latent: torch.Tensor | None, vae_factor: int, options: MaskOptions
              ) -> tuple[PixelMask | None, dict[str, Any] | None, Image.Image]:
    """(the region at image resolution, its metadata, the image with the source pasted back outside it)
    for one candidate, whose latent mask is ``latent`` (1, 1, h, w) or None.

    The region is the pixel mask the latents saw: a given mask after ``feather_px``, or the
    automatic latent mask repeated to pixels. Paste-back follows ``options`` (default: hard regions).
    """
    if latent is None:
        return None, None, edited
    if given is not None:
        region, mode, auto = given, "given", None
    else:
        region, mode, auto = pixel_mask_of_latent(latent, vae_factor), "auto", requested.to_dict()
    pasted = options.pastes_back(region.hard)
    if pasted:
        edited = paste_back(edited, prepared.image, region, int(options.paste_feather_px))
    info = {"mode": mode, "hard": region.hard, "coverage": round(region.coverage, 6), "pasted_back": pasted,
            "options": options.to_dict(), "auto": auto, "notes": list(region.notes)}
    return region, info, edited
