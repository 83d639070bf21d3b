"""Named FlowEdit settings (a registry), and which one a model kind uses by default.

The SD3 numbers come from FlowEdit (Kulikov et al., arXiv:2412.08629; github.com/fallenshock/FlowEdit)
and the SoftREPA paper (Tab. 5-6). SD3.5 (medium, large) has no published FlowEdit settings: its
presets start from the SD3 ones and are labelled not tuned. The paper's soft-token setting "n_max 30, tar CFG 9" was produced with the authors'
target guidance ``c + w (c - u)``; in the standard convention used everywhere else here that is
tar CFG 10. Two presets carry it: ``sd3-tokens`` (standard, 10) and ``sd3-tokens-paper`` (the
authors' convention, 9) for a literal reproduction. Both compute the same velocities.

FLUX.1-dev: ``flux`` is FlowEdit's published FLUX setting (its FLUX config and paper: T 28, n_max 24,
src guidance 1.5, tar guidance 5.5, n_min 0, n_avg 1); on FLUX the two scales are the model's
guidance input, not classifier-free guidance (``editing.flux``). Nothing is published for
FLUX.1-schnell (FlowEdit used dev) nor for soft tokens on FLUX: those presets take the dev
setting's steps and are labelled not tuned; schnell has no guidance input, so its scales are unused
(0 here, to say so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from editing.params import FlowEditParams
from softrepa.kinds import KINDS


@dataclass(frozen=True)
class Preset:
    params: FlowEditParams = field(default_factory=FlowEditParams)
    use_tokens: bool = False  # whether the preset is meant for an editor with soft tokens
    description: str = ""


PRESETS: dict[str, Preset] = {
    "sd3": Preset(FlowEditParams(steps=50, n_max=33, n_min=0, n_avg=1, src_cfg=3.5, tar_cfg=13.5, seed=42),
                  use_tokens=False, description="FlowEdit's SD3 defaults (T 50, n_max 33, src 3.5, tar 13.5)"),
    "sd3-tokens": Preset(FlowEditParams(steps=50, n_max=30, src_cfg=3.5, tar_cfg=10.0, seed=42),
                         use_tokens=True, description="SoftREPA tokens on SD3 (n_max 30, tar 10 standard = the "
                                                      "paper's 9 in the authors' convention)"),
    "sd3-tokens-paper": Preset(FlowEditParams(steps=50, n_max=30, src_cfg=3.5, tar_cfg=9.0, seed=42,
                                              guidance="authors"),
                               use_tokens=True, description="the paper's setting verbatim: n_max 30, tar 9 with "
                                                            "the authors' target guidance c + w (c - u)"),
    # SD3.5 (medium, large): nothing is published for FlowEdit on SD3.5 (FlowEdit gives SD3 and FLUX
    # settings; SoftREPA has no SD3.5 results), so these are FlowEdit's SD3 settings (and the SD3
    # tokens setting) as a starting point: NOT TUNED for SD3.5. Replace them once measured.
    "sd3.5-medium": Preset(FlowEditParams(steps=50, n_max=33, n_min=0, n_avg=1, src_cfg=3.5, tar_cfg=13.5, seed=42),
                           use_tokens=False, description="SD3.5 medium: FlowEdit's SD3 settings, not tuned for SD3.5"),
    "sd3.5-medium-tokens": Preset(FlowEditParams(steps=50, n_max=30, src_cfg=3.5, tar_cfg=10.0, seed=42),
                                  use_tokens=True, description="SD3.5 medium with tokens: the sd3-tokens settings, "
                                                               "not tuned for SD3.5"),
    "sd3.5-large": Preset(FlowEditParams(steps=50, n_max=33, n_min=0, n_avg=1, src_cfg=3.5, tar_cfg=13.5, seed=42),
                          use_tokens=False, description="SD3.5 large: FlowEdit's SD3 settings, not tuned for SD3.5"),
    "sd3.5-large-tokens": Preset(FlowEditParams(steps=50, n_max=30, src_cfg=3.5, tar_cfg=10.0, seed=42),
                                 use_tokens=True, description="SD3.5 large with tokens: the sd3-tokens settings, "
                                                              "not tuned for SD3.5"),
    # FLUX.1 (guidance-distilled: src / tar are the guidance embedding's values, one forward per branch)
    "flux": Preset(FlowEditParams(steps=28, n_max=24, n_min=0, n_avg=1, src_cfg=1.5, tar_cfg=5.5, seed=42),
                   use_tokens=False, description="FlowEdit's FLUX.1-dev defaults (T 28, n_max 24, src guidance 1.5, "
                                                 "tar guidance 5.5)"),
    "flux-tokens": Preset(FlowEditParams(steps=28, n_max=24, n_min=0, n_avg=1, src_cfg=1.5, tar_cfg=5.5, seed=42),
                          use_tokens=True, description="FLUX.1-dev with soft tokens: the flux settings, not tuned "
                                                       "(no FLUX tokens are published)"),
    "flux-schnell": Preset(FlowEditParams(steps=28, n_max=24, n_min=0, n_avg=1, src_cfg=0.0, tar_cfg=0.0, seed=42),
                           use_tokens=False, description="FLUX.1-schnell: the flux steps, not tuned (nothing "
                                                         "published); no guidance input, the scales are unused"),
    "flux-schnell-tokens": Preset(FlowEditParams(steps=28, n_max=24, n_min=0, n_avg=1, src_cfg=0.0, tar_cfg=0.0,
                                                 seed=42),
                                  use_tokens=True, description="FLUX.1-schnell with soft tokens: the flux-schnell "
                                                               "settings, not tuned"),
    # Bundled shapes model (assets/shapes-sd3, 64 px): settings from benchmarks/shapes_alignment.py
    # (48 held-out pairs): at n_max 20, success / preservation 0.52 / 0.965 at tar 5 and 0.63 / 0.958
    # at tar 7.5; at tar 7.5, n_max 14 edits too little (0.23) and n_max 24 keeps too little (0.896)
    "shapes": Preset(FlowEditParams(steps=28, n_max=20, src_cfg=2.0, tar_cfg=7.5, seed=42),
                     use_tokens=False, description="bundled shapes model, no tokens (T 28, n_max 20, src 2, tar 7.5)"),
    "shapes-tokens": Preset(FlowEditParams(steps=28, n_max=20, src_cfg=2.0, tar_cfg=7.5, seed=42),
                            use_tokens=True, description="bundled shapes model with its soft tokens"),
}

# (model kind, tokens on) -> preset used when the user names none
DEFAULT_PRESETS: dict[tuple[str, bool], str] = {
    ("sd3", False): "sd3",
    ("sd3", True): "sd3-tokens",
    ("sd3.5-medium", False): "sd3.5-medium",
    ("sd3.5-medium", True): "sd3.5-medium-tokens",
    ("sd3.5-large", False): "sd3.5-large",
    ("sd3.5-large", True): "sd3.5-large-tokens",
    ("flux-dev", False): "flux",
    ("flux-dev", True): "flux-tokens",
    ("flux-schnell", False): "flux-schnell",
    ("flux-schnell", True): "flux-schnell-tokens",
    ("shapes-sd3", False): "shapes",
    ("shapes-sd3", True): "shapes-tokens",
}


def register_preset(name: str, preset: Preset, *, default_for: tuple[str, bool] | None = None) -> None:
    """Add a preset (e.g. a bundled model's tuned settings); optionally make it a kind's default."""
    preset.params.check()
    PRESETS[name] = preset
    if default_for is not None:
        DEFAULT_PRESETS[default_for] = name


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    return dataclasses.replace(preset, params=dataclasses.replace(preset.params))  # callers may edit the copy


def default_preset_name(kind: str, use_tokens: bool) -> str:
    """The preset for a model kind with tokens on/off. A kind without its own (e.g. one added with
    ``register_kind``) takes its family's: FLUX kinds flux-dev's (flux-schnell's without a guidance
    embedding), every other kind SD3's."""
    if (kind, use_tokens) in DEFAULT_PRESETS:
        return DEFAULT_PRESETS[(kind, use_tokens)]
    spec = KINDS.get(kind)
    base = "sd3"
    if spec is not None and spec.arch == "flux":
        base = "flux-schnell" if spec.guidance_embeds is False else "flux-dev"
    return DEFAULT_PRESETS[(base, use_tokens)]
