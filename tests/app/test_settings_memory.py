"""The app's low-memory settings: --offload / SOFTREPA_OFFLOAD and --vae-tiling / SOFTREPA_VAE_TILING reach
the model loader, with the command lines' rules (softrepa.runtime.memory_from_args)."""

from __future__ import annotations

import pytest

from app.loading import load_editor
from app.settings import OFFLOAD_CHOICES, SettingsError, parse_settings
from softrepa.models import OFFLOAD_MODES


def test_memory_flags_and_variables():
    assert OFFLOAD_CHOICES == OFFLOAD_MODES  # restated in settings so that it imports no torch
    settings = parse_settings(["--offload", "model", "--vae-tiling"], env={})
    assert (settings.offload, settings.vae_tiling) == ("model", True)
    settings = parse_settings([], env={"SOFTREPA_OFFLOAD": "sequential", "SOFTREPA_VAE_TILING": "1"})
    assert (settings.offload, settings.vae_tiling) == ("sequential", True)
    assert parse_settings([], env={}).offload == "none"
    with pytest.raises(SettingsError, match="SOFTREPA_OFFLOAD 'all': choose one of none, model, sequential"):
        parse_settings([], env={"SOFTREPA_OFFLOAD": "all"})
    assert parse_settings(["--kind", "sd3.5-large", "--model", "x", "--no-tokens"], env={}).kind == "sd3.5-large"


def test_offload_on_the_cpu_is_refused_with_advice():
    settings = parse_settings(["--offload", "model", "--device", "cpu"], env={})
    with pytest.raises(RuntimeError, match="Cannot start the model: --offload model moves weights between the CPU "
                                           "and a GPU"):
        load_editor(settings)
