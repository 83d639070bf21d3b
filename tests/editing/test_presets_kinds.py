"""Presets per model kind, and FlowEdit on tiny SD3.5-shaped pipelines (the editor and ``python -m editing``)."""

from __future__ import annotations

import pytest
import torch

from editing import cli
from editing.editor import FlowEditor, read_png_metadata
from editing.flowedit import FlowEditParams
from editing.presets import DEFAULT_PRESETS, PRESETS, default_preset_name, get_preset
from softrepa.models import KINDS
from softrepa.tiny import tiny_pipeline
from softrepa.tokens import new_tokens, save_tokens
from tests.editing.conftest import SMALL, picture

SD35 = ("sd3.5-medium", "sd3.5-large")


def test_every_mmdit_kind_has_its_own_default_presets():
    for kind, spec in KINDS.items():
        if spec.arch != "mmdit":
            continue
        for use_tokens in (False, True):
            name = DEFAULT_PRESETS[(kind, use_tokens)]  # no silent fallback to another model's settings
            assert PRESETS[name].use_tokens == use_tokens
            PRESETS[name].params.check()


@pytest.mark.parametrize("kind", SD35)
def test_sd35_presets_start_from_flowedit_sd3_and_say_so(kind):
    plain, with_tokens = get_preset(default_preset_name(kind, False)), get_preset(default_preset_name(kind, True))
    assert plain.params == get_preset("sd3").params and with_tokens.params == get_preset("sd3-tokens").params
    assert "not tuned" in plain.description and "not tuned" in with_tokens.description


def test_kind_help_lists_the_sd35_kinds(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "sd3.5-medium" in text and "sd3.5-large" in text


@pytest.mark.parametrize("kind", SD35)
def test_flowedit_on_tiny_sd35_tokens_on_and_off(kind):
    pipe = tiny_pipeline(kind)
    torch.manual_seed(5)
    tokens = new_tokens(pipe, kind, num_layers=2)
    with torch.no_grad():
        tokens.static.normal_(std=1.0)
    editor = FlowEditor(pipe, tokens)
    try:
        params = FlowEditParams(**SMALL)
        off = editor.edit(picture(), "a red circle", "a blue square", params, use_tokens=False)
        on = editor.edit(picture(), "a red circle", "a blue square", params, use_tokens=True)
        plain = FlowEditor(pipe).edit(picture(), "a red circle", "a blue square", params)  # no tokens attached
    finally:
        editor.close()
    off_px, on_px, plain_px = (torch.tensor(list(r.image.getdata()), dtype=torch.float32) for r in (off, on, plain))
    assert torch.equal(off_px, plain_px)  # tokens off == the pipeline without tokens
    assert (on_px - off_px).abs().max() > 0
    assert editor.default_params(True) == get_preset(f"{kind}-tokens").params


def test_cli_edits_with_a_tiny_sd35_folder(tmp_path):
    pipe = tiny_pipeline("sd3.5-medium")
    pipe.save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    token_path = save_tokens(new_tokens(pipe, "sd3.5-medium", num_layers=2), tmp_path / "tokens.safetensors")
    picture().save(tmp_path / "pic.png")
    out = tmp_path / "out"
    argv = ["--model", str(tmp_path / "model"), "--kind", "sd3.5-medium", "--image", str(tmp_path / "pic.png"),
            "--source", "a cat", "--target", "a dog", "--tokens", str(token_path), "--out", str(out),
            "--steps", "6", "--n-max", "3", "--device", "cpu", "--dtype", "float32"]
    assert cli.main(argv) == 0
    (written,) = out.glob("*.png")
    meta = read_png_metadata(written)
    assert meta["use_tokens"] and meta["model"] == str(tmp_path / "model")
    # the sd3.5-medium-tokens preset under the explicit flags
    assert FlowEditParams.from_dict(meta["params"]) == FlowEditParams(steps=6, n_max=3, src_cfg=3.5, tar_cfg=10.0)
