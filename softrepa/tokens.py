"""SoftREPA soft tokens (paper §3.2, Eq. 12) and their file format.

    s_psi(k, t) = Embedding(k, t) in R^{m x d}

implemented as a static part (L, m, d) plus a time part ``Embedding(bins, L * d)`` split per
layer, the same time vector added to all m tokens of a layer (as the authors' released code).
The time bin is computed *per batch element* from the 0..1000 timestep the denoiser receives and
clamped to 0..bins-1 (the authors' code shifted the whole batch when any entry hit 1000).

Token files are safetensors: tensors ``static`` (L, m, d) and, when the time part is on,
``time`` (bins, L*d); the config (and the base model id) as JSON in the metadata. Nothing here
ever unpickles: legacy ``.pth`` files from the authors go through ``convert`` with
``torch.load(weights_only=True)`` and an explicit allow-list.

Tokens for a given model (``new_tokens``, ``tokens_config_for``, ``init_from_null_prompt``) read
the model kind's defaults and the denoiser's width from ``softrepa.models``; ``softrepa.hooks``
attaches them.

CLI:
    python -m softrepa.tokens info FILE
    python -m softrepa.tokens convert --static dc_tokens.pth [--time dc_t_tokens.pth] --kind sd3 --out FILE
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softrepa.atomic import atomic_path
from softrepa.models import ARCHITECTURES, KINDS, check_compatible, denoiser_of, get_kind

FORMAT_VERSION = "1"
METADATA_KEY = "softrepa_tokens"
INITS = ("normal", "zeros")  # "null_prompt" is applied after construction: see init_from_null_prompt


@dataclass
class SoftTokensConfig:
    """What a set of soft tokens is and where it attaches.

    kind: a key of ``softrepa.models.KINDS`` (sd3, sd15, sdxl, shapes-sd3, ...).
    num_tokens: m, tokens per layer.
    num_layers: L. MM-DiT: the first L joint blocks. UNet: 1 = one token set shared by every
        hooked cross-attention (the authors' layout), or one set per hooked cross-attention.
    width: d, the text-stream width the tokens join (SD3: caption_projection_dim;
        UNet: cross_attention_dim).
    block_groups: UNet only: which of "down", "mid", "up" see the tokens.
    time_bins: number of time bins over the 0..1000 timestep range.
    use_time: whether the time-indexed part exists.
    init: "normal" (N(0, init_std)) or "zeros"; SD1.5 uses init_from_null_prompt afterwards.
    base_model: the Hub id or folder the tokens were trained on (informational).
    """

    kind: str
    num_tokens: int = 4
    num_layers: int = 5
    width: int = 1536
    block_groups: tuple[str, ...] = ()
    time_bins: int = 100
    use_time: bool = True
    init: str = "normal"
    init_std: float = 0.02
    base_model: str = ""

    def __post_init__(self) -> None:
        self.block_groups = tuple(self.block_groups)
        for name in ("num_tokens", "num_layers", "width", "time_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SoftTokensConfig.{name} must be a positive integer, got {value!r}")
        if self.init not in INITS:
            raise ValueError(f"SoftTokensConfig.init must be one of {INITS}, got {self.init!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SoftTokensConfig":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown soft-token config fields {sorted(unknown)}; file written by a newer version?")
        return cls(**data)


def timestep_bins(timestep: torch.Tensor, time_bins: int) -> torch.Tensor:
    """Per-element time bin of a 0..1000 timestep: floor(t) * bins // 1000, clamped to 0..bins-1.

    Integer arithmetic so bin edges are exact (t = 10.0 is bin 1 with 100 bins, as int(t) // 10).
    """
    whole = timestep.detach().double().floor().long()
    return torch.clamp(whole * time_bins // 1000, 0, time_bins - 1)


class SoftTokens(nn.Module):
    """The trainable parameters: static tokens (L, m, d) + time embedding (bins, L*d)."""

    def __init__(self, config: SoftTokensConfig):
        super().__init__()
        self.config = config
        L, m, d = config.num_layers, config.num_tokens, config.width
        self.static = nn.Parameter(torch.zeros(L, m, d, dtype=torch.float32))  # (L, m, d)
        self.time = nn.Embedding(config.time_bins, L * d, dtype=torch.float32) if config.use_time else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.config.init == "normal":
            nn.init.normal_(self.static, std=self.config.init_std)
            if self.time is not None:
                nn.init.normal_(self.time.weight, std=self.config.init_std)
        elif self.config.init == "zeros":
            nn.init.zeros_(self.static)
            if self.time is not None:
                nn.init.zeros_(self.time.weight)
        else:
            raise ValueError(f"unknown init {self.config.init!r}; expected one of {INITS}")

    def forward(self, layer: int, timestep: torch.Tensor | float, batch_size: int | None = None) -> torch.Tensor:
        """Tokens of ``layer`` for each batch element: (B, m, d), float32.

        ``timestep`` is on the 0..1000 scale the denoiser receives; a scalar (or one-element
        tensor) is broadcast to ``batch_size``.
        """
        if not 0 <= layer < self.config.num_layers:
            raise IndexError(f"layer {layer} out of range for {self.config.num_layers} token layers")
        timestep = torch.as_tensor(timestep, device=self.static.device).reshape(-1)  # (B,) or (1,)
        if batch_size is None:
            batch_size = timestep.numel()
        if timestep.numel() == 1:
            timestep = timestep.expand(batch_size)
        elif timestep.numel() != batch_size:
            raise ValueError(f"got {timestep.numel()} timesteps for a batch of {batch_size}")
        d = self.config.width
        tokens = self.static[layer].unsqueeze(0).expand(batch_size, -1, -1)  # (B, m, d)
        if self.time is not None:
            bins = timestep_bins(timestep, self.config.time_bins).to(self.static.device)  # (B,)
            time_vec = self.time(bins)[:, layer * d : (layer + 1) * d]  # (B, d)
            tokens = tokens + time_vec.unsqueeze(1)  # same time vector for all m tokens
        return tokens

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def count_parameters(config: SoftTokensConfig) -> int:
    """Trainable parameter count from the config alone (built on the meta device: no memory)."""
    with torch.device("meta"):
        return SoftTokens(dataclasses.replace(config, init="zeros")).num_parameters()


# ----------------------------------------------------------------------------- tokens for a model


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


def new_tokens(model: nn.Module | Any, kind: str, **overrides) -> SoftTokens:
    """Fresh tokens for ``model`` (a denoiser or a pipeline) with the kind's defaults."""
    return SoftTokens(tokens_config_for(model, kind, **overrides))


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


# ----------------------------------------------------------------------------- files


def _state_tensors(tokens: SoftTokens) -> dict[str, torch.Tensor]:
    # contiguous CPU copies: each file holds exactly these bytes, never a view of something larger
    tensors = {"static": tokens.static.detach().to("cpu", torch.float32).contiguous().clone()}
    if tokens.time is not None:
        tensors["time"] = tokens.time.weight.detach().to("cpu", torch.float32).contiguous().clone()
    return tensors


def save_tokens(tokens: SoftTokens, path: str | os.PathLike, base_model: str | None = None,
                extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``tokens`` to a safetensors file atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    config = tokens.config
    if base_model is not None:
        config = dataclasses.replace(config, base_model=base_model)
    metadata = {METADATA_KEY: config.to_json(), "format_version": FORMAT_VERSION}
    metadata.update(extra_metadata or {})
    with atomic_path(path) as temp:
        save_file(_state_tensors(tokens), str(temp), metadata=metadata)
    return path


def read_token_file(path: str | os.PathLike) -> tuple[SoftTokensConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Read and validate a token file: (config, tensors, metadata). Clear errors for bad files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist")
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        raise ValueError(f"{path} looks like a pickle; convert it first: python -m softrepa.tokens convert --static {path} ...")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        raise ValueError(f"{path} is not a readable safetensors soft-token file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not a softrepa token file "
                         "(authors' .pth files: use `python -m softrepa.tokens convert`)")
    config = SoftTokensConfig.from_json(metadata[METADATA_KEY])
    L, m, d = config.num_layers, config.num_tokens, config.width
    expected = {"static": (L, m, d)}
    if config.use_time:
        expected["time"] = (config.time_bins, L * d)
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{path} is missing tensor '{name}' (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{path}: tensor '{name}' has shape {tuple(tensors[name].shape)}, config says {shape}")
    extra = set(tensors) - set(expected)
    if extra:
        raise ValueError(f"{path} has unexpected tensors {sorted(extra)}")
    return config, tensors, metadata


def load_tokens(path: str | os.PathLike, model: nn.Module | None = None,
                device: torch.device | str | None = None) -> SoftTokens:
    """Load a token file; when ``model`` (a denoiser or a pipeline) is given, check that it fits."""
    config, tensors, _ = read_token_file(path)
    if model is not None:
        check_compatible(config, model, source=str(path))
    tokens = SoftTokens(dataclasses.replace(config, init="zeros"))
    tokens.config = config
    with torch.no_grad():
        tokens.static.copy_(tensors["static"])
        if tokens.time is not None:
            tokens.time.weight.copy_(tensors["time"])
    return tokens.to(device) if device is not None else tokens


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- legacy import


def _load_legacy(path: str | os.PathLike):
    """Load an authors' .pth with the weights-only unpickler.

    The time file is a whole pickled ``nn.Embedding``: the only class we allow beyond plain
    tensors and containers. Anything else in the pickle is refused by torch.
    """
    allow = [nn.Embedding]
    try:
        with torch.serialization.safe_globals(allow):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot import {path} with the weights-only loader (allowed classes: "
                         f"{[c.__name__ for c in allow]}): {exc}") from exc


def convert_legacy(static_path: str | os.PathLike, time_path: str | os.PathLike | None, kind: str,
                   base_model: str = "") -> SoftTokens:
    """Build SoftTokens from the authors' files: static (L, m, d) or (m, d); time Embedding or tensor."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(KINDS)}")
    static = _load_legacy(static_path)
    if isinstance(static, nn.Parameter):
        static = static.data
    if not isinstance(static, torch.Tensor):
        raise ValueError(f"{static_path} holds a {type(static).__name__}, expected a tensor of tokens")
    if static.dim() == 2:  # UNet files: one shared (m, d) set
        static = static.unsqueeze(0)
    if static.dim() != 3:
        raise ValueError(f"{static_path}: static tokens of shape {tuple(static.shape)}, expected (L, m, d) or (m, d)")
    L, m, d = static.shape
    time_weight = None
    if time_path is not None:
        time_obj = _load_legacy(time_path)
        if isinstance(time_obj, nn.Embedding):
            time_weight = time_obj.weight.data
        elif isinstance(time_obj, torch.Tensor):
            time_weight = time_obj
        elif isinstance(time_obj, dict) and "weight" in time_obj:
            time_weight = time_obj["weight"]
        else:
            raise ValueError(f"{time_path} holds a {type(time_obj).__name__}, expected an nn.Embedding or its weight")
        if time_weight.dim() != 2 or time_weight.shape[1] != L * d:
            raise ValueError(f"{time_path}: time embedding of shape {tuple(time_weight.shape)}, "
                             f"expected (bins, {L * d}) for static tokens {(L, m, d)}")
    spec = KINDS[kind]
    config = SoftTokensConfig(kind=kind, num_tokens=m, num_layers=L, width=d,
                              block_groups=spec.block_groups,
                              time_bins=time_weight.shape[0] if time_weight is not None else 100,
                              use_time=time_weight is not None, init="zeros",
                              base_model=base_model or spec.hub_id)
    tokens = SoftTokens(config)
    with torch.no_grad():
        tokens.static.copy_(static.float())
        if time_weight is not None:
            tokens.time.weight.copy_(time_weight.float())
    return tokens


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m softrepa.tokens", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a token file's config and parameter count")
    info.add_argument("file")
    conv = sub.add_parser("convert", help="import the authors' released .pth token files")
    conv.add_argument("--static", required=True, help="dc_tokens.pth: tensor (L, m, d)")
    conv.add_argument("--time", default=None, help="dc_t_tokens.pth: pickled nn.Embedding(bins, L*d)")
    conv.add_argument("--kind", required=True, help="model kind the tokens belong to (sd3, sd15, sdxl)")
    conv.add_argument("--base-model", default="", help="Hub id the tokens were trained on")
    conv.add_argument("--out", required=True, help="output .safetensors file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "info":
            config, tensors, metadata = read_token_file(args.file)
            print(f"file: {args.file}")
            for key, value in dataclasses.asdict(config).items():
                print(f"  {key}: {value}")
            print(f"  parameters: {sum(t.numel() for t in tensors.values()):,}")
            for key, value in sorted(metadata.items()):
                if key != METADATA_KEY:
                    print(f"  meta.{key}: {value}")
        elif args.command == "convert":
            tokens = convert_legacy(args.static, args.time, args.kind, args.base_model)
            out = save_tokens(tokens, args.out, extra_metadata={"converted_from": Path(args.static).name})
            print(f"wrote {out}: {tokens.num_parameters():,} parameters, config {tokens.config.to_json()}")
        else:
            raise ValueError(f"unknown command {args.command!r}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
