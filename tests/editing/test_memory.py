"""Low-memory loading (``softrepa.models.MemoryOptions``) under the editor: model offload gives the same
edit, soft tokens included. On this CPU-only machine the "accelerator" offloaded to is the CPU itself:
the hooks that move the weights and the inputs run, the memory saving cannot be shown here."""

from __future__ import annotations

import pytest
import torch

from editing.editor import FlowEditor
from editing.flowedit import FlowEditParams
from softrepa.models import MemoryOptions, execution_device, load_pipeline
from softrepa.tiny import save_tiny_pipeline
from tests.editing.conftest import SMALL, picture


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(save_tiny_pipeline("sd3", tmp_path_factory.mktemp("tiny-sd3") / "model"))


def test_model_offload_gives_the_same_edit_with_tokens(folder, tokens):
    plain = load_pipeline(folder, "sd3", progress_bar=False)
    offloaded = load_pipeline(folder, "sd3", progress_bar=False, memory=MemoryOptions(offload="model"))
    assert hasattr(offloaded.transformer, "_hf_hook")  # accelerate's offload hook is in place
    assert execution_device(offloaded).type == "cpu"
    params = FlowEditParams(**SMALL)
    edits = []
    for pipe in (plain, offloaded):
        editor = FlowEditor(pipe, tokens)
        edits.append(editor.edit(picture(), "a red circle", "a blue square", params, use_tokens=True).latents)
        editor.close()
    assert torch.equal(edits[0], edits[1])


def test_vae_tiling_and_bad_modes(folder):
    tiled = load_pipeline(folder, "sd3", progress_bar=False, memory=MemoryOptions(vae_tiling=True))
    assert tiled.vae.use_tiling
    with pytest.raises(ValueError, match="offload must be one of none, model, sequential"):
        load_pipeline(folder, "sd3", memory=MemoryOptions(offload="all"))
