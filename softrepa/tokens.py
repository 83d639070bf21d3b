"""SoftREPA soft tokens (paper §3.2, Eq. 12) and their file format.

    s_psi(k, t) = Embedding(k, t) in R^{m x d}

implemented as a static part (L, m, d) plus a time part ``Embedding(bins, L * d)`` split per
layer, the same time vector added to all m tokens of a layer (as the authors' released code).
The time bin is computed *per batch element* from the 0..1000 timestep the denoiser receives and
clamped to 0..bins-1 (the authors' code shifted the whole batch when any entry hit 1000).

Token files are safetensors: tensors ``static`` (L, m, d) and, when the time part is on,
``time`` (bins, L*d), finite floats; the config (and the base model id) as JSON in the metadata
(``softrepa.token_config``: ``SoftTokensConfig`` and the checks of a file's metadata). Nothing here
ever unpickles: legacy ``.pth`` files from the authors go through ``convert`` with
``torch.load(weights_only=True)`` and an explicit allow-list.

Tokens for a given model (``new_tokens``, ``tokens_config_for``, ``init_from_null_prompt``) read
the model kind's defaults and the denoiser's width from ``softrepa.models``; ``softrepa.hooks``
attaches them.

CLI:
    python -m softrepa.tokens info FILE
    python -m softrepa.tokens convert --static dc_tokens.pth [--time dc_t_tokens.pth] --kind sd3 --out FILE
    python -m softrepa.tokens push FILE user/repo [--revision BRANCH] [--private] [--figures JSON]

Token files on the Hugging Face Hub: ``resolve_tokens_path`` turns ``user/repo[@rev]`` or
``user/repo/file.safetensors[@rev]`` into a cached local file (``load_tokens`` and every
``--tokens`` flag go through it; a local path that exists wins); ``push_tokens`` uploads a file
with a model card (``model_card``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import reprlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softrepa.atomic import atomic_path, file_sha256  # noqa: F401 (file_sha256 re-exported)
from softrepa.models import ARCHITECTURES, KINDS, check_compatible, denoiser_of, get_kind
# the config and its checks; softrepa.tokens' names for them too (TokenConfigError re-exported)
from softrepa.token_config import (FORMAT_VERSION, INITS, METADATA_KEY, REPAIR, SoftTokensConfig,  # noqa: F401
                                   TokenConfigError, file_config)

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
    config = file_config(path, metadata)
    L, m, d = config.num_layers, config.num_tokens, config.width
    expected = {"static": ((L, m, d), "(num_layers, num_tokens, width)")}
    if config.use_time:
        expected["time"] = ((config.time_bins, L * d), "(time_bins, num_layers * width)")
    for name, (shape, fields) in expected.items():
        problem = _tensor_problem(tensors.get(name), shape)
        if problem is not None:
            raise ValueError(f"{path}: tensor '{name}' {problem}; the config (metadata '{METADATA_KEY}') asks for "
                             f"{fields} = {shape}. {REPAIR}")
    extra = set(tensors) - set(expected)
    if extra:
        raise ValueError(f"{path} has unexpected tensors {reprlib.repr(sorted(extra))}. {REPAIR}")
    return config, tensors, metadata


def _tensor_problem(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> str | None:
    """What is wrong with a token file's tensor ("is missing", "has shape ..."), None when nothing is."""
    if tensor is None:
        return "is missing"
    if tuple(tensor.shape) != shape:
        return f"has shape {tuple(tensor.shape)}"
    if not tensor.is_floating_point():
        return f"holds {str(tensor.dtype).replace('torch.', '')}, not floating-point numbers"
    if not torch.isfinite(tensor).all():
        return "holds NaN or infinite numbers (saved from a training that diverged?)"
    return None


def load_tokens(path: str | os.PathLike, model: nn.Module | None = None,
                device: torch.device | str | None = None, revision: str | None = None) -> SoftTokens:
    """Load a token file (a local path or a Hub reference, ``resolve_tokens_path``); when ``model``
    (a denoiser or a pipeline) is given, check that it fits."""
    path = resolve_tokens_path(path, revision=revision)
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


# ----------------------------------------------------------------------------- the Hub

_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # one part of a Hub repo id (user, repo)


def parse_hub_reference(ref: str, revision: str | None = None) -> tuple[str, str | None, str | None] | None:
    """(repo_id, file in the repo or None, revision) for ``user/repo[@rev]`` or
    ``user/repo/file.safetensors[@rev]``; None when ``ref`` does not have that shape."""
    parts = str(ref).split("/")
    if len(parts) < 2 or str(ref).startswith((".", "/", "~")) or "\\" in str(ref):
        return None
    name, _, rev = parts[1].partition("@")
    filename = "/".join(parts[2:]) or None
    if filename is not None and "@" in parts[-1]:
        if rev:
            raise ValueError(f"{ref!r}: give the revision once (user/repo@rev/file or user/repo/file@rev)")
        filename, _, rev = filename.rpartition("@")
    if not (_HUB_NAME.match(parts[0]) and _HUB_NAME.match(name)):
        return None
    if filename is not None and not filename.endswith(".safetensors"):
        return None
    if rev and revision and rev != revision:
        raise ValueError(f"{ref!r} names revision {rev!r} but revision={revision!r} was also given; give one")
    return f"{parts[0]}/{name}", filename, rev or revision


def _hub_token_files(repo_id: str, revision: str | None) -> list[str]:
    """The .safetensors files of a Hub repo: from the Hub, or from the local cache when offline."""
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download

    files = None
    if not is_offline_mode():
        from huggingface_hub.errors import HfHubHTTPError

        try:
            files = HfApi().list_repo_files(repo_id, revision=revision)
        except HfHubHTTPError:  # the Hub answered (no such repo, revision, access): say so
            raise
        except (OSError, ConnectionError):  # no network: the cache, as hf_hub_download does
            files = None
    if files is None:  # the cached snapshot of that revision (huggingface_hub resolves refs/<revision> itself)
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return sorted(f for f in files if f.endswith(".safetensors"))


def resolve_tokens_path(ref: str | os.PathLike, revision: str | None = None) -> Path:
    """The local file for a ``--tokens`` value: every entry point calls this before reading one.

    A path that exists is returned as is (a local file always wins). Otherwise a Hub reference
    ``user/repo`` (the repo's one .safetensors file), ``user/repo/file.safetensors``, with an
    optional revision (``user/repo@rev`` or ``revision=``), is fetched with ``hf_hub_download``
    into the huggingface_hub cache (``HF_HUB_CACHE``; with ``HF_HUB_OFFLINE=1`` only the cache is read).
    """
    path = Path(ref)
    if path.exists():
        return path
    hub = parse_hub_reference(str(ref), revision) if not isinstance(ref, Path) else None
    if hub is None:
        return path  # read_token_file says that it does not exist
    repo_id, filename, rev = hub
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    where = f"{repo_id}" + (f" at revision {rev}" if rev else "")
    try:
        if filename is None:
            files = _hub_token_files(repo_id, rev)
            if len(files) != 1:
                found = ", ".join(files) if files else "none"
                raise ValueError(f"tokens {ref!r}: the Hub repo {where} holds {len(files)} .safetensors files "
                                 f"({found}); name one: {repo_id}/<file>.safetensors")
            filename = files[0]
        return Path(hf_hub_download(repo_id, filename, revision=rev))
    except (EntryNotFoundError, HfHubHTTPError, OSError) as exc:  # LocalEntryNotFoundError: not in an offline cache
        raise FileNotFoundError(f"tokens {ref!r}: no local file of that name, and {filename or 'a token file'} of "
                                f"the Hub repo {where} could not be fetched ({type(exc).__name__}: {exc}). Check the "
                                "name (user/repo or user/repo/file.safetensors), log in for private repos "
                                "(`hf auth login`), or unset HF_HUB_OFFLINE to download.") from exc


def model_card(config: SoftTokensConfig, metadata: dict[str, str], repo_id: str, filename: str,
               figures: dict[str, Any] | None = None) -> str:
    """The README.md pushed beside a token file: what the tokens are, how to use them, and what was
    measured (``figures``), written only from the file's metadata and the figures given."""
    base = config.base_model or get_kind(config.kind).hub_id
    hub_base = "/" in base and not base.startswith((".", "/", "~"))  # a Hub id, not a local folder
    lines = ["---", "tags:", "- soft-tokens", "- softrepa", "- text-to-image",
             *([f"base_model: {base}"] if hub_base else []), "---", "",
             f"# SoftREPA soft tokens for `{base}`", "",
             f"{count_parameters(config):,} trainable parameters: m = {config.num_tokens} tokens on L = "
             f"{config.num_layers} layers, width {config.width}, model kind `{config.kind}`"
             + (f", {config.time_bins} time bins." if config.use_time else ", no time part."), "",
             "## Use", "", "```bash",
             f"python -m editing --kind {config.kind} --tokens {repo_id}/{filename} --image in.png --source ... --target ...",
             f"python -m softrepa.generate --model {config.kind} --tokens {repo_id}/{filename} --prompts prompts.txt",
             "```", "", "## Configuration", "", "| field | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in dataclasses.asdict(config).items()]
    extra = {k: v for k, v in sorted(metadata.items()) if k not in (METADATA_KEY, "format_version")}
    if extra:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in extra.items()]
    lines += ["", "## Measured", ""]
    if figures:
        lines += ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in figures.items()]
    else:
        lines += ["Nothing measured was given with this upload."]
    return "\n".join(lines) + "\n"


def push_tokens(path: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool = False,
                figures: dict[str, Any] | None = None, api: Any = None) -> str:
    """Upload a token file and its model card to ``repo_id`` (created if missing); returns the
    reference to load it by. ``api``: an ``HfApi`` (default: a new one, with the login's token)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    path = Path(path)
    config, _, metadata = read_token_file(path)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = model_card(config, metadata, repo_id, path.name, figures)
    message = f"soft tokens {path.name} ({config.kind}, m {config.num_tokens}, L {config.num_layers})"
    api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id, revision=revision,
                    commit_message=message)
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id, revision=revision,
                    commit_message=f"model card for {path.name}")
    return f"{repo_id}/{path.name}" + (f"@{revision}" if revision else "")


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
    conv.add_argument("--kind", required=True, help=f"model kind the tokens belong to ({', '.join(KINDS)})")
    conv.add_argument("--base-model", default="", help="Hub id the tokens were trained on")
    conv.add_argument("--out", required=True, help="output .safetensors file")
    push = sub.add_parser("push", help="upload a token file and a model card written from its metadata to the Hub")
    push.add_argument("file")
    push.add_argument("repo", help="Hub repo id, user/repo (created if missing)")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing; default: main)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--figures", default=None, help="measured figures for the card: a JSON object or a .json file")
    return parser.parse_args(argv)


def read_figures(value: str | None) -> dict[str, Any] | None:
    """``--figures``: a JSON object given inline or as a file."""
    if value is None:
        return None
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    try:
        figures = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--figures must be a JSON object or a .json file holding one ({exc})") from exc
    if not isinstance(figures, dict):
        raise ValueError(f"--figures must be a JSON object (name: value), got {type(figures).__name__}")
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "info":
            config, tensors, metadata = read_token_file(args.file)
            print(f"file: {args.file}")
            for key, value in dataclasses.asdict(config).items():
                print(f"  {key}: {value}")
            if config.kind in KINDS:
                arch = ARCHITECTURES[KINDS[config.kind].arch]
                print(f"  arch: {arch.name} ({arch.model_class_name}): {arch.placement}")
            print(f"  parameters: {sum(t.numel() for t in tensors.values()):,}")
            for key, value in sorted(metadata.items()):
                if key != METADATA_KEY:
                    print(f"  meta.{key}: {value}")
        elif args.command == "push":
            reference = push_tokens(args.file, args.repo, revision=args.revision, private=args.private,
                                    figures=read_figures(args.figures))
            print(f"pushed {args.file} with a model card; load it with --tokens {reference}")
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
