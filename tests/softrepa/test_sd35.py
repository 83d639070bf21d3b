"""SD3.5 kinds: tokens attach by the same hooks to SD3.5's block variants (QK RMS-norm, dual
attention) on tiny SD3.5-shaped transformers, a short training run, and the real sizes' token counts."""

from __future__ import annotations

import pytest
import torch

from softrepa.hooks import attach_tokens
from softrepa.models import KINDS, check_compatible
from softrepa.tiny import SD35_TINY_VARIANTS, tiny_pipeline
from softrepa.tokens import count_parameters, tokens_config_for
from tests.softrepa.test_tokens import (assert_off_and_detached_are_bitwise_vanilla, random_tokens, sd3_inputs,
                                        sd3_reference)
from tests.softrepa.test_train import base_config, write_colour_folder

SD35 = ("sd3.5-medium", "sd3.5-large")


@pytest.fixture(scope="module")
def pipes():
    return {kind: tiny_pipeline(kind) for kind in SD35}


def test_tiny_pipelines_have_the_sd35_block_variants(pipes):
    medium, large = pipes["sd3.5-medium"].transformer, pipes["sd3.5-large"].transformer
    assert [block.attn2 is not None for block in medium.transformer_blocks] == [True, True, False]
    assert all(getattr(block, "attn2", None) is None for block in large.transformer_blocks)
    for model in (medium, large):
        assert model.config.qk_norm == "rms_norm"
        assert type(model.transformer_blocks[0].attn.norm_q).__name__ == "RMSNorm"
    assert tuple(medium.config.dual_attention_layers) == SD35_TINY_VARIANTS["sd3.5-medium"]["dual_attention_layers"]


@pytest.mark.parametrize("kind", SD35)
def test_off_and_detached_are_bitwise_vanilla(pipes, kind):
    assert_off_and_detached_are_bitwise_vanilla(pipes[kind].transformer, kind)


@pytest.mark.parametrize("kind", SD35)
@pytest.mark.parametrize("num_layers", [2, 3])  # 3 = every block, the last one returning no text stream
def test_tokens_on_match_the_plain_reference_forward(pipes, kind, num_layers):
    model = pipes[kind].transformer
    tokens = random_tokens(model, kind, num_layers=num_layers)
    inputs = sd3_inputs(batch=3, timestep=torch.tensor([0.0, 512.3, 1000.0]))
    with torch.no_grad():
        with attach_tokens(model, tokens):
            hooked = model(**inputs).sample
        reference = sd3_reference(model, tokens, **inputs)  # Algorithm 1 written out, on the bare model
        vanilla = model(**inputs).sample
    torch.testing.assert_close(hooked, reference, rtol=1e-5, atol=1e-5)
    assert (hooked - vanilla).abs().max() > 1e-3  # the tokens do reach the dual-attention / rms-norm blocks


@pytest.mark.parametrize("kind", SD35)
def test_pipeline_call_tokens_on_and_off(pipes, kind):
    pipe = pipes[kind]

    def run():
        return pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="pt", height=32, width=32, guidance_scale=3.0).images

    vanilla = run()
    with attach_tokens(pipe, random_tokens(pipe, kind, num_layers=2)) as attached:
        on = run()
        with attached.switch(False):
            off = run()
    assert torch.equal(off, vanilla)
    assert (on - vanilla).abs().max() > 1e-4


def test_a_few_training_steps_on_tiny_sd35(tmp_path):
    from softrepa.train import train

    data = write_colour_folder(tmp_path / "colours")
    pipe = tiny_pipeline("sd3.5-medium")
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    config = base_config(tmp_path, data, model="tiny-sd3.5", kind="sd3.5-medium", max_steps=3,
                         checkpoint_every=100, validate_every=100)
    result = train(config, pipe=pipe)
    assert result.step == 3 and result.final_path.is_file()
    assert result.tokens.config.kind == "sd3.5-medium" and result.tokens.config.width == 32
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(result.tokens.static, torch.zeros_like(result.tokens.static))
    for key, value in pipe.transformer.state_dict().items():  # the model stays frozen
        assert torch.equal(value, before[key]), key


def _real_size(kind: str):
    """The published transformer config of ``kind`` (docs/REFERENCE section 8), built on the meta device."""
    from diffusers import SD3Transformer2DModel

    common = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048, qk_norm="rms_norm")
    sizes = {"sd3.5-medium": dict(num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                                  pos_embed_max_size=384, dual_attention_layers=tuple(range(13))),
             "sd3.5-large": dict(num_layers=38, num_attention_heads=38, caption_projection_dim=2432,
                                 pos_embed_max_size=192)}
    with torch.device("meta"):
        return SD3Transformer2DModel(**common, **sizes[kind])


@pytest.mark.parametrize("kind, width", [("sd3.5-medium", 1536), ("sd3.5-large", 2432)])
def test_real_sizes_token_config_and_count(kind, width):
    model = _real_size(kind)
    config = tokens_config_for(model, kind)
    assert (config.num_tokens, config.num_layers, config.width) == (KINDS[kind].num_tokens, 5, width)
    assert config.base_model == KINDS[kind].hub_id
    assert count_parameters(config) == 5 * 4 * width + 100 * 5 * width
    check_compatible(config, model)
    other, other_width = ("sd3.5-medium", 1536) if width == 2432 else ("sd3.5-large", 2432)
    with pytest.raises(ValueError, match=f"width {other_width}.*stream is {width} wide"):
        check_compatible(tokens_config_for(_real_size(other), kind), model)  # the other SD3.5's tokens
