"""Attach soft tokens to unmodified diffusers denoisers (paper Algorithm 1), and the model kinds.

Nothing here copies a diffusers forward. Tokens enter through PyTorch module hooks:

* the denoiser's forward pre-hook captures the timestep of the call (0..1000 scale);
* MM-DiT (``SD3Transformer2DModel``): on each of the first L ``transformer_blocks`` a pre-hook
  prepends the m tokens to ``encoder_hidden_states`` (the text stream after ``context_embedder``,
  width ``caption_projection_dim``) and a forward hook drops the m token outputs, so each layer
  gets fresh tokens (Algorithm 1, lines 11-18);
* UNet (``UNet2DConditionModel``): a pre-hook on each cross-attention ``Transformer2DModel`` of
  the chosen block groups inserts the tokens after the BOS position of ``encoder_hidden_states``
  (77 -> 77 + m); its output is the image stream, so nothing needs dropping.

Hooks read one flag, so tokens switch on and off per call, and ``detach`` removes every hook
(the model is then exactly as before). Tokens reach both CFG branches because the pipelines run
both through the same denoiser call.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from softrepa.tokens import SoftTokens, SoftTokensConfig


# ----------------------------------------------------------------------------- architectures


class Architecture:
    """How soft tokens attach to one denoiser family."""

    name: str
    model_class_name: str  # for messages only
    drops_outputs: bool  # whether the hooked module returns the text stream (then the m outputs are dropped)

    def model_class(self) -> type: ...

    def width(self, model: nn.Module) -> int: ...

    def max_layers(self, model: nn.Module, config: SoftTokensConfig) -> int: ...

    def hook_points(self, model: nn.Module, config: SoftTokensConfig) -> list[tuple[nn.Module, int]]:
        """(module, token layer index) pairs that receive tokens."""
        ...

    def insert(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor: ...

    def drop(self, output: Any, num_tokens: int) -> Any: ...


class MMDiTArchitecture(Architecture):
    name = "mmdit"
    model_class_name = "SD3Transformer2DModel"
    drops_outputs = True

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


ARCHITECTURES: dict[str, Architecture] = {"mmdit": MMDiTArchitecture(), "unet": UNetArchitecture()}


# ----------------------------------------------------------------------------- model kinds


@dataclass(frozen=True)
class ModelKind:
    """Defaults for one model family (paper §4, Appendix B; REFERENCE.md §1-2, §6)."""

    arch: str
    hub_id: str
    pipeline_class: str  # a diffusers pipeline class name
    denoiser_attr: str  # the pipeline component the tokens hook
    num_tokens: int
    num_layers: int
    block_groups: tuple[str, ...] = ()
    init: str = "normal"
    use_null_prompt_init: bool = False
    dweight: float = 0.0  # denoising-loss weight in training
    steps: int = 28  # text-to-image defaults
    cfg: float = 4.0
    resolution: int = 1024
    max_sequence_length: int = 256  # SD3 pipelines: T5 tokens (zeros when there is no T5)
    without_t5: bool = False  # load SD3-family pipelines with text_encoder_3=None


KINDS: dict[str, ModelKind] = {
    "sd3": ModelKind(arch="mmdit", hub_id="stabilityai/stable-diffusion-3-medium-diffusers",
                     pipeline_class="StableDiffusion3Pipeline", denoiser_attr="transformer",
                     num_tokens=4, num_layers=5, dweight=0.0, steps=28, cfg=4.0, resolution=1024),
    "sd15": ModelKind(arch="unet", hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
                      pipeline_class="StableDiffusionPipeline", denoiser_attr="unet",
                      num_tokens=8, num_layers=1, block_groups=("down",), use_null_prompt_init=True,
                      dweight=10.0, steps=30, cfg=7.0, resolution=512),
    "sdxl": ModelKind(arch="unet", hub_id="stabilityai/stable-diffusion-xl-base-1.0",
                      pipeline_class="StableDiffusionXLPipeline", denoiser_attr="unet",
                      num_tokens=8, num_layers=1, block_groups=("down", "mid"),
                      dweight=10.0, steps=30, cfg=7.0, resolution=1024),
}


# The bundled shapes-world model (softrepa/shapes_model.py): SD3 architecture, no T5, 64 px.
SHAPES_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-sd3"
KINDS["shapes-sd3"] = ModelKind(arch="mmdit", hub_id=str(SHAPES_MODEL_DIR), pipeline_class="StableDiffusion3Pipeline",
                                denoiser_attr="transformer", num_tokens=4, num_layers=3, dweight=0.0, steps=28,
                                cfg=4.0, resolution=64, max_sequence_length=8, without_t5=True)


def register_kind(name: str, kind: ModelKind) -> None:
    """Add a model kind (e.g. the bundled shapes model registers its own defaults)."""
    if kind.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {kind.arch!r}; choose from {sorted(ARCHITECTURES)}")
    KINDS[name] = kind


def get_kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose one of {sorted(KINDS)}")
    return KINDS[name]


def _absent_components(source: str) -> dict[str, None]:
    """Components a local pipeline folder was saved without ([null, null] in model_index.json).

    diffusers only loads such a folder (e.g. SD3 without T5) when they are passed as None.
    """
    index = Path(source) / "model_index.json"
    if not index.is_file():
        return {}
    config = json.loads(index.read_text())
    return {name: None for name, value in config.items() if not name.startswith("_") and value in (None, [None, None])}


def load_pipeline(model: str | None, kind: str, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", without_t5: bool | None = None):
    """Load a diffusers pipeline of ``kind`` from a Hub id or local folder (default: the kind's model).

    The frozen model is cast to ``dtype``; soft tokens attached later stay float32.
    without_t5: SD3 family: skip the T5 encoder (None: the kind's default). Folders saved without
    a component load with it as None.
    """
    import diffusers

    spec = get_kind(kind)
    pipeline_class = getattr(diffusers, spec.pipeline_class)
    source = model or spec.hub_id
    skip_t5 = spec.without_t5 if without_t5 is None else without_t5
    kwargs = {"text_encoder_3": None, "tokenizer_3": None} if skip_t5 and spec.arch == "mmdit" else {}
    kwargs.update(_absent_components(source))
    try:
        pipe = pipeline_class.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"could not load a {spec.pipeline_class} from {source!r} ({exc}). Give a local diffusers "
                           "folder or a Hub id you have access to (run `huggingface-cli login` for gated models).") from exc
    return pipe.to(device)


def denoiser_of(model: nn.Module | Any, kind: str) -> nn.Module:
    """The denoiser of a pipeline (``pipe.transformer`` / ``pipe.unet`` by the kind), or the model itself."""
    spec = get_kind(kind)
    if isinstance(model, nn.Module):
        return model
    denoiser = getattr(model, spec.denoiser_attr, None)
    if not isinstance(denoiser, nn.Module):
        raise TypeError(f"{type(model).__name__} has no '{spec.denoiser_attr}' denoiser for kind {kind!r}")
    return denoiser


def tokens_config_for(model: nn.Module | Any, kind: str, **overrides) -> SoftTokensConfig:
    """A config with the kind's defaults and the width read off the model."""
    spec = get_kind(kind)
    arch = ARCHITECTURES[spec.arch]
    denoiser = denoiser_of(model, kind)
    values = dict(kind=kind, num_tokens=spec.num_tokens, num_layers=spec.num_layers,
                  width=arch.width(denoiser), block_groups=spec.block_groups, init=spec.init,
                  base_model=str(getattr(getattr(denoiser, "config", None), "_name_or_path", "") or spec.hub_id))
    values.update(overrides)
    config = SoftTokensConfig(**values)
    check_compatible(config, denoiser)
    return config


def check_compatible(config: SoftTokensConfig, model: nn.Module | Any, source: str = "tokens") -> None:
    """Raise a clear error when tokens do not fit the model (class, width, layer count)."""
    spec = get_kind(config.kind)
    arch = ARCHITECTURES[spec.arch]
    denoiser = denoiser_of(model, config.kind)
    if not isinstance(denoiser, arch.model_class()):
        raise ValueError(f"{source} are for kind {config.kind!r} ({arch.model_class_name}, width {config.width}, "
                         f"{config.num_layers} layers) but the model is a {type(denoiser).__name__}")
    width = arch.width(denoiser)
    if width != config.width:
        raise ValueError(f"{source} have width {config.width} (shape {(config.num_layers, config.num_tokens, config.width)}) "
                         f"but the model's text stream is {width} wide")
    available = arch.max_layers(denoiser, config)
    if spec.arch == "mmdit" and config.num_layers > available:
        raise ValueError(f"{source} have {config.num_layers} layers but the model has only {available} blocks")
    if spec.arch == "unet" and config.num_layers not in (1, available):
        raise ValueError(f"{source} have {config.num_layers} layers; this UNet has {available} cross-attention "
                         f"blocks in {config.block_groups} (expected 1 or {available})")


def new_tokens(model: nn.Module | Any, kind: str, **overrides) -> SoftTokens:
    """Fresh tokens for ``model`` (a denoiser or a pipeline) with the kind's defaults."""
    return SoftTokens(tokens_config_for(model, kind, **overrides))


# ----------------------------------------------------------------------------- hooks


def _argument(args: tuple, kwargs: dict, signature: inspect.Signature, name: str):
    """Read argument ``name`` of a call whether it was passed by position or keyword."""
    if name in kwargs:
        return kwargs[name]
    position = list(signature.parameters).index(name)
    return args[position] if position < len(args) else None


def _replace_argument(args: tuple, kwargs: dict, signature: inspect.Signature, name: str, value):
    if name in kwargs or list(signature.parameters).index(name) >= len(args):
        kwargs = {**kwargs, name: value}
    else:
        args = list(args)
        args[list(signature.parameters).index(name)] = value
        args = tuple(args)
    return args, kwargs


class AttachedTokens:
    """Soft tokens hooked into a denoiser. Switch with ``enabled`` / ``switch(on)``; ``detach()``.

    Also a context manager that detaches on exit::

        with attach_tokens(pipe, tokens):
            image = pipe(prompt).images[0]
    """

    def __init__(self, model: nn.Module | Any, tokens: SoftTokens, enabled: bool = True):
        config = tokens.config
        self.denoiser = denoiser_of(model, config.kind)
        check_compatible(config, self.denoiser)
        self.arch = ARCHITECTURES[get_kind(config.kind).arch]
        self.tokens = tokens
        self.enabled = enabled
        self._timestep: torch.Tensor | None = None
        # tokens live where the model lives; they stay float32 (cast per call to the stream's dtype)
        device = next(self.denoiser.parameters()).device
        tokens.to(device=device)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        model_signature = inspect.signature(self.denoiser.forward)
        self._handles.append(self.denoiser.register_forward_pre_hook(
            self._capture_timestep(model_signature), with_kwargs=True))
        for module, layer in self.arch.hook_points(self.denoiser, config):
            signature = inspect.signature(module.forward)
            self._handles.append(module.register_forward_pre_hook(
                self._insert_tokens(layer, signature), with_kwargs=True))
            if self.arch.drops_outputs:
                self._handles.append(module.register_forward_hook(self._drop_tokens()))

    # the hooks ---------------------------------------------------------------

    def _capture_timestep(self, signature: inspect.Signature) -> Callable:
        def hook(module, args, kwargs):
            # Kept after the call returns: gradient checkpointing re-runs blocks during backward.
            self._timestep = _argument(args, kwargs, signature, "timestep")
            return None

        return hook

    def _insert_tokens(self, layer: int, signature: inspect.Signature) -> Callable:
        def hook(module, args, kwargs):
            if not self.enabled:
                return None
            text = _argument(args, kwargs, signature, "encoder_hidden_states")  # (B, n, d)
            if text is None:
                raise RuntimeError("soft tokens: the hooked block got no encoder_hidden_states")
            if self._timestep is None:
                raise RuntimeError("soft tokens: no timestep captured; call the denoiser itself, not its blocks")
            tokens = self.tokens(layer, self._timestep, batch_size=text.shape[0]).to(text.dtype)  # (B, m, d)
            if kwargs.get("encoder_attention_mask") is not None:
                # the UNet hands blocks a precomputed bias; widening it is not supported (pipelines pass None)
                raise NotImplementedError("soft tokens with an encoder_attention_mask are not supported")
            return _replace_argument(args, kwargs, signature, "encoder_hidden_states", self.arch.insert(text, tokens))

        return hook

    def _drop_tokens(self) -> Callable:
        def hook(module, args, output):
            if not self.enabled:
                return None
            return self.arch.drop(output, self.tokens.config.num_tokens)

        return hook

    # switching ---------------------------------------------------------------

    @contextlib.contextmanager
    def switch(self, on: bool):
        """Temporarily set tokens on or off: ``with attached.switch(False): ...``."""
        previous, self.enabled = self.enabled, bool(on)
        try:
            yield self
        finally:
            self.enabled = previous

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._timestep = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "AttachedTokens":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_tokens(model: nn.Module | Any, tokens: SoftTokens, enabled: bool = True) -> AttachedTokens:
    """Hook ``tokens`` into ``model`` (a denoiser or a diffusers pipeline of the tokens' kind)."""
    return AttachedTokens(model, tokens, enabled=enabled)


@torch.no_grad()
def init_from_null_prompt(pipe: Any, tokens: SoftTokens) -> SoftTokens:
    """Set every static token to the empty prompt's BOS hidden state (the paper's SD1.5 init).

    The time part is zeroed, so at step 0 the tokens equal that BOS state at every timestep.
    """
    kind = tokens.config.kind
    arch = get_kind(kind).arch
    device = next(denoiser_of(pipe, kind).parameters()).device
    if arch == "unet":
        encoded = pipe.encode_prompt(prompt="", device=device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)
        bos = encoded[0][0, 0]  # (d,)
    elif arch == "mmdit":
        encoded = pipe.encode_prompt(prompt="", prompt_2=None, prompt_3=None, device=device,
                                     num_images_per_prompt=1, do_classifier_free_guidance=False)
        bos = pipe.transformer.context_embedder(encoded[0])[0, 0]  # stream width, after context_embedder
    else:
        raise ValueError(f"null-prompt init is not defined for architecture {arch!r}")
    if bos.shape[-1] != tokens.config.width:
        raise ValueError(f"null-prompt hidden state is {bos.shape[-1]} wide, tokens are {tokens.config.width}")
    tokens.static.copy_(bos.float().to(tokens.static.device).expand_as(tokens.static))
    if tokens.time is not None:
        tokens.time.weight.zero_()
    return tokens
