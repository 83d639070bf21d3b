"""What one FlowEdit run is told: ``FlowEditParams`` (the one home of the rules its values obey)
and ``ParameterError`` (a refused value, naming its field). The algorithm is ``editing.flowedit``.

This module imports neither torch nor diffusers, so the web page (``app``) builds its controls
from it before the model and its libraries load (docs/benchmarks.md, App start-up).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass
from typing import Any

import numpy as np

GUIDANCE_MODES = ("standard", "authors")
TOKEN_BRANCHES = ("both", "target")
# Prompts (negative ones and the batch files' too) longer than this many characters are refused
# before they are tokenized: no model reads more than a few hundred tokens, a few thousand
# characters, and a huge one would only cost time
MAX_PROMPT_CHARS = 4000


def lone_surrogate(text: str) -> str | None:
    """The first character of ``text`` that is half of a UTF-16 pair (JSON's ``\\ud800`` escapes make
    strings Python holds but no file, hash or tokenizer can encode), or None when it is all text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


SHOWN_CHARS = 60  # how much of a refused value a message quotes: a huge one must not make a huge message


# lists and mappings go through reprlib, which never builds the whole repr: in a YAML batch file
# aliases can put one large string thousands of times into a small row (editing.batch)
_CONTAINERS = reprlib.Repr()
_CONTAINERS.maxlevel, _CONTAINERS.maxstring, _CONTAINERS.maxother = 3, SHOWN_CHARS, SHOWN_CHARS


def shown(value: Any) -> str:
    """``repr(value)`` for a message, cut to ``SHOWN_CHARS`` characters (a value may come from a file)."""
    text = _CONTAINERS.repr(value) if isinstance(value, (list, tuple, dict, set, frozenset)) else repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS - 5]}...{text[-2:]}"


class ParameterError(ValueError):
    """A FlowEdit parameter that cannot run, with a message for a person.

    ``field`` is the ``FlowEditParams`` field the message is about, so a caller can point at its own
    control for it (the app shows the message on the slider with that field's label).
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class FlowEditParams:
    """Parameters of one FlowEdit run (defaults: FlowEdit's SD3 settings, arXiv:2412.08629 and its code).

    steps: T, the number of scheduler steps the [0, 1] noise range is split into.
    n_max: how many of the last steps edit (the edit strength), 1..T; T starts from pure noise.
        Steps with T - i > n_max are skipped. 0 is refused (library, CLI and app alike): with no
        editing step the result is the source itself after a VAE round trip, which a person, or a
        batch writing PNGs named as edits, would take for an edit that silently failed. The VAE
        reconstruction, where wanted, is ``decode_latents(vae, encode_image(vae, image))``.
    n_min: the last n_min of those steps sample the target plainly (no source term), which adds
        target detail at low noise; 0 = pure FlowEdit.
    n_avg: noise samples averaged per step for v_delta (each one transformer call).
    src_cfg, tar_cfg: guidance scales of the source and target velocities (see ``guidance``).
    seed: seed of the generator all noise comes from.
    src_negative_prompt, tar_negative_prompt: the unconditional prompts.
    guidance: "standard" u + w (c - u), or "authors" (target c + w (c - u), SoftREPA's code).
    token_branches: with tokens on, "both" (all four predictions, the authors' setting) or
        "target" (the source velocities are computed without tokens).
    noise_offset: noise draws skipped before the first editing step (0: FlowEdit's own stream). The
        auto-strength sweep (``editing.auto``) gives a candidate of smaller n_max the offset that lines
        its noise up with the strongest candidate's, so they share source velocities; a replay needs it.

    ``ranges`` and ``check`` are the one home of the rules these values obey: the editor, the CLI
    and the app call them and restate no bound of their own.
    """

    steps: int = 50
    n_max: int = 33
    n_min: int = 0
    n_avg: int = 1
    src_cfg: float = 3.5
    tar_cfg: float = 13.5
    seed: int = 42
    src_negative_prompt: str = ""
    tar_negative_prompt: str = ""
    guidance: str = "standard"
    token_branches: str = "both"
    noise_offset: int = 0

    def ranges(self) -> dict[str, tuple[int, int | None]]:
        """(lowest, highest) each whole-number field may take given the others (None: no upper bound).

        n_max counts editing steps out of T and n_min the last of those, so their ranges follow
        ``steps`` and ``n_max``. ``check`` enforces these ranges; the app's sliders follow them.
        """
        # noise_offset: aligning to the strongest possible candidate (n_max = T) skips fewer than T * n_avg
        # draws; the bound keeps a replayed file from asking for billions
        return {"steps": (1, None), "n_max": (1, self.steps), "n_min": (0, self.n_max), "n_avg": (1, None),
                "seed": (0, 2**63 - 1), "noise_offset": (0, self.steps * self.n_avg)}

    def check(self) -> None:
        """Raise ``ParameterError`` (a ``ValueError`` naming the field) when the parameters cannot run."""
        ranges = self.ranges()
        for name in ranges:  # types first: the ranges of n_max and n_min are made of steps and n_max
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ParameterError(name, f"{name} must be a whole number, got {shown(value)}")
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                raise ParameterError(name, self._out_of_range(name, low, high))
        for name in ("src_cfg", "tar_cfg"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ParameterError(name, f"{name} must be a finite number >= 0, got {shown(value)}")
        for name in ("src_negative_prompt", "tar_negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ParameterError(name, f"{name} must be a string (use \"\" for none), got "
                                           f"{shown(getattr(self, name))}")
            if len(getattr(self, name)) > MAX_PROMPT_CHARS:
                raise ParameterError(name, f"{name} is {len(getattr(self, name)):,} characters long, over the limit of "
                                           f"{MAX_PROMPT_CHARS:,}: a few words say what to avoid")
        for name, choices in (("guidance", GUIDANCE_MODES), ("token_branches", TOKEN_BRANCHES)):
            if getattr(self, name) not in choices:
                raise ParameterError(name, f"{name} must be one of {', '.join(choices)}, got "
                                           f"{shown(getattr(self, name))}")

    def _out_of_range(self, name: str, low: int, high: int | None) -> str:
        """Why ``name`` is outside ``ranges()``, in the words of what it counts."""
        value = getattr(self, name)
        if name == "n_max" and value > high:
            return (f"n_max is {value} but there are only {self.steps} steps (T): it counts how many of the T steps "
                    f"edit, so it can be at most {high}")
        if name == "n_max":
            return (f"n_max must be at least {low}, got {value}: with no editing step FlowEdit returns the input "
                    "unchanged")
        if name == "n_min" and value > high:
            return (f"n_min ({value}) cannot be larger than n_max ({high}): it counts the last editing steps, which "
                    "switch to plain target sampling")
        # steps, n_avg, seed, and n_min below 0: the plain range says it all
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        return f"{name} must be {bounds}, got {value}"

    def replace(self, **changes: Any) -> "FlowEditParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlowEditParams":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FlowEdit parameters {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def source_velocity_key(self) -> tuple:
        """The parameters the source velocities depend on (besides image, prompt and tokens).

        Sample k of step i uses noise draw ``noise_start + i * n_avg + k`` of the seed's stream, so the
        velocities depend on n_max and noise_offset only through ``noise_start``: a sweep's candidates
        lined up on one stream share a table. n_min is not among them: the noise of step i is the same
        whatever n_min is, so the velocities of a smaller n_min are a prefix of the same table. The
        guidance mode is not either: both modes guide the source the standard way.
        """
        return (self.steps, self.noise_start, self.n_avg, self.seed, float(self.src_cfg), self.src_negative_prompt)

    @property
    def noise_start(self) -> int:
        """The draw of the seed's noise stream that step 0 would use (negative: before the stream starts)."""
        return self.noise_offset - (self.steps - self.n_max) * self.n_avg
