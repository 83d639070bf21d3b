"""The app follows the model kind (#17): FLUX.1 kinds start, the guidance sliders say what they mean
there (and do nothing on schnell), the preset menu holds the kind's family, an edit runs on tiny FLUX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.controls import GUIDANCE_INFO, NO_GUIDANCE_INFO, initial_controls, presets_for
from app.api import compare, edit
from app.service import EditorService
from app.settings import DEVICE_KINDS, SettingsError, parse_args, resolve_settings
from app.testing import fast_controls, tiny_loader, tiny_settings
from app.ui import build_demo
from editing.editor import read_png_metadata
from editing.presets import default_preset_name


def page_props(service: EditorService) -> dict[str, dict]:
    demo = build_demo(service)
    return {c["props"]["elem_id"]: c["props"] for c in demo.config["components"] if c["props"].get("elem_id")}


def test_flux_kinds_are_chosen_by_flag_or_by_their_hub_id(tmp_path):
    assert {"flux-dev", "flux-schnell"} <= set(DEVICE_KINDS)
    by_id = resolve_settings(parse_args(["--model", "black-forest-labs/FLUX.1-dev", "--no-tokens"]), {})
    assert by_id.kind == "flux-dev"
    by_flag = resolve_settings(parse_args(["--model", str(tmp_path), "--kind", "flux-schnell", "--no-tokens"]), {})
    assert by_flag.kind == "flux-schnell"
    with pytest.raises(SettingsError, match="sd15"):  # a UNet kind has no FlowEdit here
        resolve_settings(parse_args(["--model", str(tmp_path), "--kind", "sd15", "--no-tokens"]), {})


@pytest.mark.parametrize("kind", ["sd3", "flux-dev", "flux-schnell"])
def test_guidance_sliders_and_presets_follow_the_kind(tmp_path, kind):
    service = EditorService(tiny_settings(tmp_path, kind=kind), loader=tiny_loader(tokens=False))
    props = page_props(service)
    tar, src = props["tar-cfg"], props["src-cfg"]
    if kind == "flux-schnell":  # no guidance input at all: the sliders say so and cannot be moved
        assert tar["info"] == src["info"] == NO_GUIDANCE_INFO and tar["interactive"] is False
    else:
        arch = "flux" if kind.startswith("flux") else "mmdit"
        assert (tar["info"], src["info"]) == GUIDANCE_INFO[arch] and tar["interactive"] is not False
    offered = presets_for(kind)
    assert default_preset_name(kind, False) in offered
    assert all(name.startswith("flux") for name in offered) == kind.startswith("flux")
    assert props["preset"]["value"] == default_preset_name(kind, False)
    assert initial_controls(service).steps == {"sd3": 50, "flux-dev": 28, "flux-schnell": 28}[kind]


@pytest.fixture(scope="module")
def flux_service(tmp_path_factory) -> EditorService:
    service = EditorService(tiny_settings(tmp_path_factory.mktemp("flux"), kind="flux-dev"), loader=tiny_loader())
    service.load()
    return service


def test_an_edit_and_a_comparison_run_on_tiny_flux(flux_service, tmp_path):
    picture = tmp_path / "upload.png"
    Image.fromarray((np.random.RandomState(0).rand(32, 48, 3) * 255).astype(np.uint8)).save(picture)
    controls = fast_controls(tar_cfg=5.5, src_cfg=1.5)
    outcome = edit(flux_service, str(picture), controls, session="flux")
    metadata = read_png_metadata(Path(outcome.final.path))
    assert metadata["params"]["tar_cfg"] == 5.5 and metadata["use_tokens"] is True
    assert "guidance src 1.5 / tar 5.5" in outcome.summary
    pair = compare(flux_service, str(picture), controls, session="flux")
    off, on = (np.asarray(Image.open(image.path), dtype=np.float32) for image in pair.images)
    assert np.abs(off - on).max() > 0  # the FLUX tokens change the edit


def test_a_flux_folder_loads_and_tokens_of_another_kind_are_refused_naming_both(tmp_path):
    from app.testing import tiny_tokens
    from softrepa.tiny import save_tiny_pipeline, tiny_sd3_pipeline
    from softrepa.tokens import save_tokens

    folder = save_tiny_pipeline("flux-dev", tmp_path / "tiny-flux")
    sd3_tokens = tmp_path / "sd3-tokens.safetensors"
    save_tokens(tiny_tokens(tiny_sd3_pipeline()), sd3_tokens)
    settings = tiny_settings(tmp_path, model=str(folder), kind="flux-dev", tokens=str(sd3_tokens),
                             max_sequence_length=8)
    service = EditorService(settings)  # the app's own loader (app.loading.load_editor)
    service.load()
    status = service.status()
    assert status.state == "ready" and "editing without tokens" in status.message
    assert "sd3" in status.message and "flux-dev" in status.message
    assert service.editor().kind == "flux-dev" and not service.has_tokens
