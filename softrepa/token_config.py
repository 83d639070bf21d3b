"""What a soft-token file's metadata holds: ``SoftTokensConfig`` (the one home of the rules its
values obey) and ``file_config``, which reads it from a file's metadata and says which field of
which file is wrong. The tokens themselves and the file's tensors: ``softrepa.tokens``.

A file's metadata is untrusted input, checked like a typed value: missing, not JSON, a field of
the wrong type or out of range (a layer count below 1, a kind that does not exist, a block group
UNets do not have), an unknown field or another format version is a ``ValueError`` naming the file
and the field and saying what to do, never a ``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path

from softrepa.models import ARCHITECTURES, KINDS

FORMAT_VERSION = "1"
METADATA_KEY = "softrepa_tokens"
INITS = ("normal", "zeros")  # "null_prompt" is applied after construction: see init_from_null_prompt
# what a reader of a file that fails a check can do
REPAIR = ("The file is damaged, was edited, or comes from another version: save the tokens again "
          "(softrepa.tokens.save_tokens; training writes its files so), or use a file that "
          "`python -m softrepa.tokens info` reads")


class TokenConfigError(ValueError):
    """A ``SoftTokensConfig`` value that cannot be; ``field`` names it (None: the config as a whole),
    so that a file's reader can say which field of which file is wrong."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class SoftTokensConfig:
    """What a set of soft tokens is and where it attaches.

    kind: a key of ``softrepa.models.KINDS`` (sd3, sd3.5-*, flux-dev, flux-schnell, sd15, sdxl,
        shapes-sd3, ...); token files are for one kind and refused on a model of another.
    num_tokens: m, tokens per layer.
    num_layers: L. MM-DiT: the first L joint blocks; FLUX: the first L double-stream blocks.
        UNet: 1 = one token set shared by every hooked cross-attention (the authors' layout), or
        one set per hooked cross-attention.
    width: d, the text-stream width the tokens join (SD3: caption_projection_dim; FLUX:
        heads x head_dim, 3072; UNet: cross_attention_dim).
    block_groups: UNet only: which of "down", "mid", "up" see the tokens.
    time_bins: number of time bins over the 0..1000 timestep range (FLUX's sigma x 1000).
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
        """Every field's type and range (``TokenConfigError``): a file's config passes here too."""
        groups, std = ARCHITECTURES["unet"].GROUPS, self.init_std  # type(x) is int: True is no count
        rules = [("kind", isinstance(self.kind, str) and bool(self.kind), "a model kind's name"),
                 *((name, type(getattr(self, name)) is int and getattr(self, name) >= 1, "a whole number >= 1")
                   for name in ("num_tokens", "num_layers", "width", "time_bins")),
                 ("block_groups", isinstance(self.block_groups, (list, tuple))
                  and all(isinstance(g, str) and g in groups for g in self.block_groups), f"a list of {groups}"),
                 ("use_time", isinstance(self.use_time, bool), "true or false"),
                 ("init", isinstance(self.init, str) and self.init in INITS, f"one of {INITS}"),
                 ("init_std", type(std) in (int, float) and math.isfinite(std) and std >= 0, "a finite number >= 0"),
                 ("base_model", isinstance(self.base_model, str), "text")]
        for name, ok, what in rules:
            if not ok:
                raise TokenConfigError(name, f"{name} must be {what}, got {reprlib.repr(getattr(self, name))}")
        self.block_groups = tuple(self.block_groups)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SoftTokensConfig":
        """The config a file's metadata holds; ``TokenConfigError`` naming the field that is wrong."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, a number of over 4,300 digits, deep nesting
            raise TokenConfigError(None, f"is not JSON ({type(exc).__name__}: {reprlib.repr(str(exc))})") from None
        if not isinstance(data, dict):
            raise TokenConfigError(None, f"must be a JSON object of the config's fields, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TokenConfigError(unknown[0], f"unknown fields {reprlib.repr(unknown)} (a newer version's file)")
        if "kind" not in data:
            raise TokenConfigError("kind", "kind is missing: the model kind the tokens were made for")
        return cls(**data)


def file_config(path: Path, metadata: dict[str, str]) -> SoftTokensConfig:
    """A token file's config, every field checked; ``ValueError`` naming the file and the field."""
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not a softrepa token file "
                         "(authors' .pth files: use `python -m softrepa.tokens convert`)")
    if metadata.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ValueError(f"{path}: metadata 'format_version' is {reprlib.repr(metadata['format_version'])}, this "
                         f"version reads {FORMAT_VERSION}: update softrepa-edit, or save the tokens again with this one")
    try:
        config = SoftTokensConfig.from_json(metadata[METADATA_KEY])
        if config.kind not in KINDS:  # register_kind adds one before its files are read
            raise TokenConfigError("kind", f"kind {reprlib.repr(config.kind)} is not a model kind "
                                           f"({', '.join(KINDS)})")
    except TokenConfigError as exc:
        field = f", field '{exc.field}'" if exc.field else ""
        raise ValueError(f"{path}: metadata '{METADATA_KEY}'{field}: {exc}. {REPAIR}") from None
    return config
