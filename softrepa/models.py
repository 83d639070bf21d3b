"""Model kinds and how soft tokens fit each denoiser family; the one pipeline loader.

* ``Architecture``: where soft tokens attach in a denoiser family and how they enter and leave
  the text stream (MM-DiT: prepended, dropped after each block; UNet: inserted after BOS;
  FLUX: prepended in the double-stream blocks with identity rotary rows, dropped after each;
  the FLUX design is in ``softrepa.flux``).
  ``softrepa.hooks`` applies them (Algorithm 1).
* ``ModelKind`` / ``KINDS`` / ``get_kind`` live in ``softrepa.kinds`` (no torch import) and are
  re-exported here; ``register_kind`` adds one after checking its architecture.
* ``load_pipeline``: every diffusers pipeline of the project is loaded here.
* ``denoiser_of`` / ``check_compatible``: the denoiser of a pipeline, and whether a token config
  fits it (class, width, layer count).

This module knows nothing of the tokens' parameters: it reads a ``SoftTokensConfig`` (typed
only), so ``softrepa.tokens`` can build on it without an import cycle.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from softrepa.kinds import KINDS, SHAPES_MODEL_DIR, ModelKind, get_kind, kind_of_hub_id  # noqa: F401 (re-exported: the kinds' home)
from softrepa.known_warnings import quiet_known_warnings

if TYPE_CHECKING:  # configs are only read here; softrepa.tokens imports this module
    from softrepa.tokens import SoftTokensConfig


# ----------------------------------------------------------------------------- architectures


class Architecture:
    """How soft tokens attach to one denoiser family."""

    name: str
    model_class_name: str  # for messages only
    drops_outputs: bool  # whether the hooked module returns the text stream (then the m outputs are dropped)
    per_block: bool = True  # L counts hooked blocks (at most the model's); UNet: 1 shared set or one per block
    timestep_scale: float = 1.0  # the denoiser's timestep argument times this = the tokens' 0..1000 scale
    block_inputs: tuple[str, ...] = ()  # other block arguments ``widen`` reads (and may replace)
    placement: str  # where the tokens go, in words (``python -m softrepa.tokens info``)

    def model_class(self) -> type: ...

    def width(self, model: nn.Module) -> int: ...

    def max_layers(self, model: nn.Module, config: SoftTokensConfig) -> int: ...

    def hook_points(self, model: nn.Module, config: SoftTokensConfig) -> list[tuple[nn.Module, int]]:
        """(module, token layer index) pairs that receive tokens."""
        ...

    def insert(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor: ...

    def drop(self, output: Any, num_tokens: int) -> Any: ...

    def widen(self, denoiser: nn.Module, inputs: dict[str, Any], num_tokens: int) -> dict[str, Any]:
        """Block arguments (of ``block_inputs``) to replace when m tokens join the text stream."""
        return {}

    def kind_mismatch(self, spec: "ModelKind", denoiser: nn.Module) -> str | None:
        """Why ``denoiser`` is not a model of kind ``spec`` beyond class and width (None: it may be)."""
        return None


class MMDiTArchitecture(Architecture):
    name = "mmdit"
    model_class_name = "SD3Transformer2DModel"
    drops_outputs = True
    placement = "prepended to the text stream of the first L joint blocks, dropped after each"

    def model_class(self) -> type:
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel

    def width(self, model: nn.Module) -> int:
        return int(model.config.caption_projection_dim)

    def max_layers(self, model: nn.Module, config: SoftTokensConfig) -> int:
        return len(model.transformer_blocks)

    def hook_points(self, model, config):
        return [(model.transformer_blocks[k], k) for k in range(config.num_layers)]

    def insert(self, text, tokens):
        return torch.cat([tokens, text], dim=1)  # (B, m + n, d): prepend

    def drop(self, output, num_tokens):
        text_out, image_out = output  # JointTransformerBlock returns (encoder_hidden_states, hidden_states)
        if text_out is None:  # the last block (context_pre_only) returns no text stream
            return output
        return text_out[:, num_tokens:], image_out


class UNetArchitecture(Architecture):
    name = "unet"
    model_class_name = "UNet2DConditionModel"
    drops_outputs = False
    per_block = False
    placement = "inserted after BOS in the text of the cross-attention blocks of block_groups"
    GROUPS = ("down", "mid", "up")

    def model_class(self) -> type:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel

    def width(self, model):
        return int(model.config.cross_attention_dim)

    def _cross_attentions(self, model, groups) -> list[nn.Module]:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        blocks: list[nn.Module] = []
        for group in groups:
            if group == "down":
                blocks.extend(model.down_blocks)
            elif group == "mid":
                blocks.extend([model.mid_block] if model.mid_block is not None else [])
            elif group == "up":
                blocks.extend(model.up_blocks)
            else:
                raise ValueError(f"unknown UNet block group {group!r}; choose from {self.GROUPS}")
        return [m for block in blocks for m in block.modules() if isinstance(m, Transformer2DModel)]

    def max_layers(self, model, config):
        return len(self._cross_attentions(model, config.block_groups))

    def hook_points(self, model, config):
        modules = self._cross_attentions(model, config.block_groups)
        if not modules:
            raise ValueError(f"no cross-attention blocks in groups {config.block_groups} of this UNet")
        if config.num_layers == 1:  # one token set shared by every hooked cross-attention
            return [(m, 0) for m in modules]
        if config.num_layers != len(modules):
            raise ValueError(f"{config.num_layers} token layers for {len(modules)} cross-attention blocks in "
                             f"{config.block_groups}: use num_layers 1 (shared) or {len(modules)}")
        return [(m, k) for k, m in enumerate(modules)]

    def insert(self, text, tokens):
        return torch.cat([text[:, :1], tokens, text[:, 1:]], dim=1)  # (B, 1 + m + n-1, d): after BOS

    def drop(self, output, num_tokens):
        return output  # cross-attention output is the image stream


class FluxArchitecture(MMDiTArchitecture):
    """FLUX.1 (``FluxTransformer2DModel``): tokens join the text stream of the first L of the 19
    double-stream blocks like SD3's (prepended, outputs dropped), with m identity rotary rows
    (position ids 0, as FLUX's text ids) in front of the shared ``image_rotary_emb``; the
    single-stream blocks never see them. The design and its reasons: ``softrepa.flux``.
    An attention mask in ``joint_attention_kwargs`` is refused (FluxPipeline passes none)."""

    name = "flux"
    model_class_name = "FluxTransformer2DModel"
    placement = ("prepended to the text stream of the first L double-stream blocks (rotary position ids 0), "
                 "dropped after each")
    timestep_scale = 1000.0  # FluxPipeline passes sigma (0..1); the model itself multiplies by 1000
    block_inputs = ("image_rotary_emb", "joint_attention_kwargs")

    def model_class(self) -> type:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def width(self, model: nn.Module) -> int:
        return int(model.config.num_attention_heads * model.config.attention_head_dim)  # inner_dim

    def widen(self, denoiser, inputs, num_tokens):
        if (inputs.get("joint_attention_kwargs") or {}).get("attention_mask") is not None:
            raise NotImplementedError("soft tokens with an attention_mask in joint_attention_kwargs are not supported")
        rotary = inputs.get("image_rotary_emb")
        if rotary is None:
            raise RuntimeError("soft tokens: a FLUX double-stream block got no image_rotary_emb")
        return {"image_rotary_emb": self.widen_rotary(denoiser, rotary, num_tokens)}

    @staticmethod
    def widen_rotary(denoiser: nn.Module, rotary: tuple[torch.Tensor, torch.Tensor],
                     num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (n + N, head_dim) for cat(txt_ids, img_ids) -> (m + n + N, head_dim): the
        tokens' rows first, from the model's own ``pos_embed`` at position ids 0 (FluxPipeline's
        text ids are zeros: cos 1, sin 0, the identity rotation)."""
        cos, sin = rotary
        ids = torch.zeros(num_tokens, len(denoiser.config.axes_dims_rope), device=cos.device)  # (m, axes)
        token_cos, token_sin = denoiser.pos_embed(ids)  # (m, head_dim) each
        return (torch.cat([token_cos.to(cos.dtype), cos], dim=0),
                torch.cat([token_sin.to(sin.dtype), sin], dim=0))

    def kind_mismatch(self, spec, denoiser):
        has = bool(denoiser.config.guidance_embeds)
        if spec.guidance_embeds is None or spec.guidance_embeds == has:
            return None
        if has:
            return "a guidance embedding (guidance-distilled, as FLUX.1-dev)"
        return "no guidance embedding (as FLUX.1-schnell)"


ARCHITECTURES: dict[str, Architecture] = {"mmdit": MMDiTArchitecture(), "unet": UNetArchitecture(),
                                          "flux": FluxArchitecture()}


# ----------------------------------------------------------------------------- model kinds


def register_kind(name: str, kind: ModelKind) -> None:
    """Add a model kind (e.g. the bundled shapes model registers its own defaults)."""
    if kind.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind.arch!r}; choose from {sorted(ARCHITECTURES)}")
    KINDS[name] = kind


def _absent_components(source: str) -> dict[str, None]:
    """Components a local pipeline folder was saved without ([null, null] in model_index.json).

    diffusers only loads such a folder (e.g. SD3 without T5) when they are passed as None.
    """
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    config = json.loads(index.read_text())
    return {name: None for name, value in config.items() if not name.startswith("_") and value in (None, [None, None])}


OFFLOAD_MODES = ("none", "model", "sequential")


@dataclass(frozen=True)
class MemoryOptions:
    """Ways to fit a model in less accelerator memory (diffusers' own switches; docs/benchmarks.md).

    offload: "model" keeps each component on the CPU and moves it to ``device`` while it runs
        (``enable_model_cpu_offload``: about the size of the largest component on the device, a
        little slower); "sequential" does it per layer (``enable_sequential_cpu_offload``: the
        least memory, much slower).
    vae_tiling: encode / decode large images in overlapping tiles (``AutoencoderKL.enable_tiling``).
    The T5 encoder is dropped with ``load_pipeline(without_t5=True)``.
    """

    offload: str = "none"
    vae_tiling: bool = False

    def check(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, got {self.offload!r}")


def execution_device(pipe: Any) -> torch.device:
    """Where ``pipe``'s models run: their device, or the accelerator an offloaded pipeline moves
    them to while the weights rest on the CPU (diffusers' ``_execution_device``)."""
    device = getattr(pipe, "_execution_device", None)
    return torch.device(device) if device is not None else denoiser_of(pipe, kind_of_pipeline(pipe)).device


def load_pipeline(model: str | None, kind: str, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", without_t5: bool | None = None, progress_bar: bool = True,
                  memory: MemoryOptions | None = None):
    """Load a diffusers pipeline of ``kind`` from a Hub id or local folder (default: the kind's model).

    The frozen model is cast to ``dtype``; soft tokens attached later stay float32.
    without_t5: SD3 family: skip the T5 encoder (None: the kind's default; FLUX refuses True, its
    text stream is T5's). Folders saved without
    a component load with it as None. progress_bar: False silences the pipeline's own per-call
    bars (callers that draw their own). memory: offloading and VAE tiling (``MemoryOptions``).
    """
    memory = memory or MemoryOptions()
    memory.check()
    quiet_known_warnings()  # before diffusers imports the pipeline's module, which logs them
    import diffusers

    spec = get_kind(kind)
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    source = model or spec.hub_id
    skip_t5 = spec.without_t5 if without_t5 is None else without_t5
    if skip_t5 and spec.arch == "flux":
        raise ValueError(f"kind {kind!r} cannot be loaded without T5: FLUX's text stream is the T5 encoder's "
                         "(text_encoder_2); only the SD3 family has an optional T5 (text_encoder_3)")
    kwargs = {"text_encoder_3": None, "tokenizer_3": None} if skip_t5 and spec.arch == "mmdit" else {}
    kwargs.update(_absent_components(source))
    try:
        pipe = pipeline_class.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"could not load a {spec.pipeline_class} from {source!r} ({exc}). Give a local diffusers "
                           "folder or a Hub id you have access to (run `huggingface-cli login` for gated models).") from exc
    setattr(pipe, LOADED_KIND_ATTR, kind)  # the kind travels with the pipeline (pipeline_kind)
    pipe.set_progress_bar_config(disable=not progress_bar)
    if memory.vae_tiling:
        pipe.vae.enable_tiling()
    if memory.offload == "model":
        pipe.enable_model_cpu_offload(device=device)  # the weights stay on the CPU between uses
    elif memory.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    return pipe


def resolve_model(model: str, kind: str | None = None) -> tuple[str, str]:
    """(path or Hub id, kind) for ``--model``: a kind name (its Hub id / bundled folder), or an id or
    folder with ``kind``.

    A local diffusers folder without ``kind``: the kind it names (``kind_of_source``: its marker, or
    the kind whose model lives there), else the first
    registered kind using the folder's pipeline class (e.g. any StableDiffusion3Pipeline -> sd3)
    whose denoiser config fits (a FluxPipeline with a guidance embedding -> flux-dev, without ->
    flux-schnell).
    """
    if kind is not None:
        get_kind(kind)  # clear error for unknown kinds
    if model in KINDS:
        return KINDS[model].hub_id, kind or model
    if kind is not None:
        return model, kind
    index = Path(model) / "model_index.json"
    if index.is_file():
        named = kind_of_source(model)  # the folder's marker, or a kind's own folder
        if named is not None:
            return model, named
        class_name = json.loads(index.read_text()).get("_class_name")
        matches = [name for name, spec in KINDS.items()
                   if spec.pipeline_class == class_name and _folder_fits(Path(model), spec)]
        if matches:
            return model, matches[0]
        raise ValueError(f"{model} holds a {class_name}, which no model kind uses; known kinds: {sorted(KINDS)}")
    raise ValueError(f"model {model!r} is not a known kind ({sorted(KINDS)}) nor a local diffusers folder; "
                     "pass --kind for a Hub id")


def model_label(model: str) -> str:
    """A one-word name for ``model`` in reports: the kind whose own folder or Hub id it is (the bundled
    folder is ``shapes-sd3``), else ``model`` with its spaces removed."""
    for name, spec in KINDS.items():
        if model == spec.hub_id or (Path(spec.hub_id).exists() and Path(spec.hub_id).resolve() == Path(model).resolve()):
            return name
    return "".join(model.split())


def _folder_fits(folder: Path, spec: ModelKind) -> bool:
    """Whether the denoiser config saved in a pipeline folder can be ``spec``'s (FLUX: dev / schnell)."""
    config_file = folder / spec.denoiser_attr / "config.json"
    if spec.guidance_embeds is None or not config_file.is_file():
        return True
    return bool(json.loads(config_file.read_text()).get("guidance_embeds", False)) == spec.guidance_embeds


KIND_MARKER = "softrepa_kind.json"  # in a model folder, beside model_index.json: {"kind": ...}; diffusers ignores it
LOADED_KIND_ATTR = "softrepa_kind"  # the kind ``load_pipeline`` loaded, recorded on the pipeline


def write_kind_marker(folder: str | os.PathLike, kind: str) -> Path:
    """Record in a model folder which kind it is (``KIND_MARKER``), so a pipeline loaded from it by
    any means (``load_pipeline``, diffusers' own ``from_pretrained``) is known as that kind."""
    get_kind(kind)
    path = Path(folder) / KIND_MARKER
    path.write_text(json.dumps({"kind": kind}) + "\n")
    return path


def kind_of_folder(folder: str | os.PathLike) -> str | None:
    """The kind a model folder says it is (``KIND_MARKER``), or None (no marker, or not a kind)."""
    try:
        kind = json.loads((Path(folder) / KIND_MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):  # no marker, not JSON, not an object
        return None
    return kind if kind in KINDS else None


def kind_of_source(source: str) -> str | None:
    """The kind a pipeline's source names: a kind's Hub id or own folder, or a folder's marker."""
    named = kind_of_hub_id(source) if source else None
    folder = Path(source)
    if named is not None or not source or not folder.is_dir():
        return named
    same = [name for name, spec in KINDS.items() if Path(spec.hub_id).resolve() == folder.resolve()]
    return kind_of_folder(folder) or (same[0] if same else None)


@dataclass(frozen=True)
class PipelineKind:
    """The kind of a pipeline, and, when several kinds fit and nothing said which, the note saying
    which was assumed and how to choose another (None: the kind is known)."""

    kind: str
    assumed: str | None = None


def pipeline_kind(pipe: Any) -> PipelineKind:
    """The kind of ``pipe``: the one ``load_pipeline`` recorded, else the one its source folder or Hub
    id names (``kind_of_source``), else the only kind whose pipeline class and architecture fit; of
    several (SD3, SD3.5 and the shapes model share StableDiffusion3Pipeline), the first, with a note.
    The kind decides the text length, presets, dtype and limits, so it is never guessed silently."""
    fitting = [name for name, spec in KINDS.items() if type(pipe).__name__ == spec.pipeline_class
               and _denoiser_fits(pipe, spec)]
    if not fitting:
        raise ValueError(f"no model kind uses {type(pipe).__name__}; pass kind=... (known: {sorted(KINDS)})")
    for said in (getattr(pipe, LOADED_KIND_ATTR, None), kind_of_source(str(getattr(pipe, "name_or_path", "") or ""))):
        if said in fitting:
            return PipelineKind(said)
    if len(fitting) == 1:
        return PipelineKind(fitting[0])
    return PipelineKind(fitting[0], f"the pipeline does not say which model kind it is ({', '.join(fitting)} all "
                                    f"use {type(pipe).__name__}), so {fitting[0]} was assumed (its text length, "
                                    "presets and dtype); pass kind=... (FlowEditor(pipe, kind=...), --kind) to "
                                    "choose another, or load it with softrepa.models.load_pipeline(model, kind)")


def _denoiser_fits(pipe: Any, spec: ModelKind) -> bool:
    denoiser = getattr(pipe, spec.denoiser_attr, None)
    return not isinstance(denoiser, nn.Module) or ARCHITECTURES[spec.arch].kind_mismatch(spec, denoiser) is None


def kind_of_pipeline(pipe: Any) -> str:
    """``pipeline_kind(pipe).kind``, for callers that report the assumption themselves or need none."""
    return pipeline_kind(pipe).kind


def known_kind(pipe: Any, who: str) -> str:
    """``pipe``'s kind for an entry point (``who``: generate, train, ...); an assumed one is said in the
    log, once per call, with how to choose another."""
    resolved = pipeline_kind(pipe)
    if resolved.assumed:
        logging.getLogger(f"softrepa.{who}").warning("%s: %s", who, resolved.assumed)
    return resolved.kind


def denoiser_of(model: nn.Module | Any, kind: str) -> nn.Module:
    """The denoiser of a pipeline (``pipe.transformer`` / ``pipe.unet`` by the kind), or the model itself."""
    spec = get_kind(kind)
    if isinstance(model, nn.Module):
        return model
    denoiser = getattr(model, spec.denoiser_attr, None)
    if not isinstance(denoiser, nn.Module):
        raise TypeError(f"{type(model).__name__} has no '{spec.denoiser_attr}' denoiser for kind {kind!r}")
    return denoiser


def kinds_of_denoiser(denoiser: nn.Module) -> list[str]:
    """The registered kinds ``denoiser`` can be (class and architecture checks; width is not a
    kind's property: tiny test models share the class)."""
    return [name for name, spec in KINDS.items()
            if isinstance(denoiser, ARCHITECTURES[spec.arch].model_class())
            and ARCHITECTURES[spec.arch].kind_mismatch(spec, denoiser) is None]


def check_compatible(config: SoftTokensConfig, model: nn.Module | Any, source: str = "tokens") -> None:
    """Raise a clear error when tokens do not fit the model (kind, class, width, layer count).

    Messages name the tokens' kind and the kinds the model can be (``kinds_of_denoiser``)."""
    spec = get_kind(config.kind)
    arch = ARCHITECTURES[spec.arch]
    denoiser = model if isinstance(model, nn.Module) else getattr(model, spec.denoiser_attr, None)
    if not isinstance(denoiser, nn.Module):  # a pipeline of another family: find its denoiser
        denoiser = next((getattr(model, attr) for attr in ("transformer", "unet")
                         if isinstance(getattr(model, attr, None), nn.Module)), None)
    if denoiser is None:
        raise TypeError(f"{type(model).__name__} has no '{spec.denoiser_attr}' denoiser for kind {config.kind!r}")
    model_kinds = " / ".join(kinds_of_denoiser(denoiser)) or "no registered kind"
    what = f"kind {config.kind!r} ({arch.model_class_name}, width {config.width}, {config.num_layers} layers)"
    if not isinstance(denoiser, arch.model_class()):
        raise ValueError(f"{source} are for {what} but the model is a {type(denoiser).__name__} "
                         f"(kind {model_kinds}): token files do not carry across model kinds")
    mismatch = arch.kind_mismatch(spec, denoiser)
    if mismatch is not None:
        raise ValueError(f"{source} are for {what} but the model has {mismatch} (kind {model_kinds}): "
                         "token files do not carry across model kinds")
    width = arch.width(denoiser)
    if width != config.width:
        raise ValueError(f"{source} are for {what} (shape {(config.num_layers, config.num_tokens, config.width)}) "
                         f"but the model's text stream is {width} wide (kind {model_kinds} at that width)")
    available = arch.max_layers(denoiser, config)
    if arch.per_block and config.num_layers > available:
        raise ValueError(f"{source} have {config.num_layers} layers but the model has only {available} blocks")
    if not arch.per_block and config.num_layers not in (1, available):
        raise ValueError(f"{source} have {config.num_layers} layers; this UNet has {available} cross-attention "
                         f"blocks in {config.block_groups} (expected 1 or {available})")
