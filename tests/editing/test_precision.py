"""No black images: an overflow in the transformer stops the edit with a message naming the dtype,
and a VAE decode that overflows in low precision is redone in float32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from editing.editor import FlowEditor
from editing.flowedit import FlowEditParams, NonFiniteError, decode_latents, encode_image
from tests.editing.conftest import SMALL, picture


def overflow_after(module: torch.nn.Module, calls: int):
    """Make ``module``'s output inf from its ``calls``-th forward on, as an overflow would."""
    seen = [0]

    def hook(_module, _inputs, output):
        seen[0] += 1
        if seen[0] < calls:
            return output
        if isinstance(output, tuple):
            return (torch.full_like(output[0], float("inf")),) + tuple(output[1:])
        return torch.full_like(output, float("inf"))

    return module.register_forward_hook(hook)


@pytest.mark.parametrize("dtype, advice", [(torch.float16, "float16 overflowed: load the model in bfloat16"),
                                           (torch.float32, "the model itself produced them")])
def test_transformer_overflow_stops_the_edit_and_names_the_dtype(pipe, dtype, advice):
    half = copy.deepcopy(pipe)  # the shared pipeline stays float32 and hook-free
    half.transformer.to(dtype)
    handle = overflow_after(half.transformer, calls=3)
    steps = []
    try:
        with pytest.raises(NonFiniteError, match=f"editing step 3 of 5 with the transformer in "
                                                 f"{str(dtype).replace('torch.', '')}: {advice}"):
            FlowEditor(half).edit(picture(), "a red circle", "a blue square", FlowEditParams(**SMALL),
                                  progress=lambda done, total: steps.append(done))
    finally:
        handle.remove()
    assert steps == [1, 2]  # stopped at the first bad step, before reporting it as done


def test_vae_decode_overflow_is_redone_in_float32(pipe):
    latents = encode_image(pipe.vae, picture(4))
    vae_half = copy.deepcopy(pipe.vae).half()

    def overflow_in_half(_module, _inputs, output):  # what a float16 decoder does on bright latents
        return torch.full_like(output, float("inf")) if output.dtype == torch.float16 else output

    handle = vae_half.decoder.register_forward_hook(overflow_in_half)
    try:
        image = decode_latents(vae_half, latents)
        reference = copy.deepcopy(vae_half).float()  # carries the hook, which passes float32 through
        expected = decode_latents(reference, latents)
    finally:
        handle.remove()
    pixels = np.asarray(image)
    assert pixels.std() > 1.0  # not a black (or flat) picture
    assert np.array_equal(pixels, np.asarray(expected))
    assert vae_half.dtype == torch.float16  # the pipeline's VAE was not converted
    with pytest.raises(NonFiniteError, match="not finite"):
        decode_latents(pipe.vae, torch.full_like(latents, float("nan")))
