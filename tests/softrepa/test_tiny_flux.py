"""The tiny FLUX.1 pipelines and the offline T5 tokenizer of ``softrepa.tiny``: saved as diffusers
folders they load with ``FluxPipeline.from_pretrained`` and generate; the tokenizer keeps T5's format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from softrepa.tiny import FLUX_TINY_VARIANTS, T5_VOCAB_SIZE, save_tiny_pipeline, t5_tokenizer


def test_t5_tokenizer_has_t5s_layout_and_reads_any_ascii_prompt():
    tokenizer = t5_tokenizer()
    assert len(tokenizer) == 32100 <= T5_VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == 32099  # sentinels last, in reverse
    prompt = "A photo of a Cat sitting on the sofa, 2 dogs! (#42) ~ x_y"
    ids = tokenizer(prompt).input_ids
    assert ids[-1] == 1 and 2 not in ids  # ends with </s>; no <unk>
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt
    assert tokenizer.convert_ids_to_tokens(tokenizer("a photo of a dog").input_ids)[:-1] == \
        ["\u2581a", "\u2581photo", "\u2581of", "\u2581a", "\u2581dog"]  # whole words, as SentencePiece would
    padded = tokenizer("a cat", padding="max_length", max_length=8, truncation=True).input_ids
    assert len(padded) == 8 and padded[-1] == 0


@pytest.mark.parametrize("variant", sorted(FLUX_TINY_VARIANTS))
def test_saved_tiny_flux_loads_with_fluxpipeline_and_generates(tmp_path, variant):
    folder = save_tiny_pipeline(variant, tmp_path / variant)
    pipe = FluxPipeline.from_pretrained(folder)
    assert pipe.transformer.config.guidance_embeds == (variant == "flux-dev")
    assert pipe.scheduler.config.use_dynamic_shifting == (variant == "flux-dev")
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor, pipe.vae.config.latent_channels) == \
        (0.3611, 0.1159, 16)
    assert pipe.tokenizer_2("a red circle").input_ids == t5_tokenizer()("a red circle").input_ids
    images = pipe("a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=3.5,
                  max_sequence_length=32, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
