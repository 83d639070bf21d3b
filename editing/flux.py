"""FlowEdit on FLUX.1 (dev and schnell): the FLUX family of ``editing.family.ModelFamily``.

FLUX.1 differs from SD3 in four places; the FlowEdit loop (``editing.flowedit``) is the same:

* **Guidance.** FLUX.1-dev is guidance-distilled: the scale enters the transformer as an embedding
  (``guidance=``), so each branch is ONE forward, with no negative prompt and no unconditional
  prediction. With z_src, z_tar as in FlowEdit::

      v_src = v(z_src, t, c_src, guidance = src_cfg)
      v_tar = v(z_tar, t, c_tar, guidance = tar_cfg)

  Both go into one batched forward [z_src, z_tar] with the per-item guidance (src_cfg, tar_cfg):
  the guidance embedding is computed per item, so this equals two forwards (tested).
  FLUX.1-schnell (timestep-distilled) has no guidance input: ``src_cfg`` / ``tar_cfg`` are not
  used, and v_delta is the plain difference of the two conditional velocities.
* **Packed latents.** The transformer reads 2x2 patches of the 16-channel latent grid as tokens:
  (B, C, h, w) -> (B, (h/2)(w/2), 4C), with position ids (0, row, column) per patch and zeros for
  the text tokens (``txt_ids``); ``softrepa.flux.pack_latents`` / ``unpack_latents`` (shared with
  the tokens' training) are inverse permutations; the loop stays on
  the (B, C, h, w) grid, so noise, masks and caches are as on SD3. The input image is cropped to a
  multiple of VAE factor x 2 (16 px on FLUX).
* **Timesteps.** FluxPipeline's schedule: sigmas linspace(1, 1/T, T), shifted by the scheduler with
  mu = calculate_shift(image_seq_len, base_image_seq_len, max_image_seq_len, base_shift, max_shift)
  from the scheduler's config (dev: a resolution-dependent shift; schnell's scheduler ignores mu),
  then sigma_T = 0. The transformer receives t / 1000 (sigma), as in FluxPipeline.
* **Latents**: ``(vae.encode(x).mode() - shift_factor) * scaling_factor`` (0.1159, 0.3611), as SD3's
  with FLUX's numbers (``editing.flowedit.encode_image`` reads them from the VAE config).

FlowEdit's published FLUX settings (Kulikov et al., arXiv:2412.08629, github.com/fallenshock/FlowEdit,
its FLUX config): T 28, n_max 24, src guidance 1.5, tar guidance 5.5, n_min 0, n_avg 1 (the
``flux`` preset). Differences from that code: the noise is drawn on the (1, C, h, w) grid from the
edit's own generator (the public code draws packed noise from the global generator), masks (not
in the public code) and the velocity cache work as on SD3, the branches share one batched forward,
and the pipeline's scheduler is never mutated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from editing.family import ModelFamily, PromptEmbeds, checked_schedule
from editing.params import FlowEditParams, ParameterError
from softrepa.flux import call_flux
from softrepa.models import execution_device


def flux_schedule(scheduler: Any, steps: int, image_seq_len: int, device: torch.device | str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (T,) on the 0..1000 scale, sigmas (T+1,) ending at 0) as FluxPipeline computes them
    for an image of ``image_seq_len`` packed tokens, from a fresh copy of ``scheduler``."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    fresh = type(scheduler).from_config(scheduler.config)
    config = fresh.config
    sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    if sigmas is None:
        fresh.set_timesteps(steps, device=device, mu=mu)
    else:
        fresh.set_timesteps(sigmas=sigmas, device=device, mu=mu)
    return checked_schedule(scheduler, steps, fresh.timesteps.float(), fresh.sigmas.float())


class FluxFamily(ModelFamily):
    """FLUX.1 (``FluxTransformer2DModel``): guidance-distilled, packed latents, shifted schedule."""

    name = "flux"
    model_class_name = "FluxTransformer2DModel"
    distilled = True
    t5_attrs = ("tokenizer_2", "text_encoder_2")

    def pixel_multiple(self, pipe):
        return int(pipe.vae_scale_factor) * 2  # VAE 8 x the 2x2 packing = 16 on FLUX

    @torch.no_grad()
    def encode_prompt(self, pipe, prompt, max_sequence_length):
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=execution_device(pipe),
                                               num_images_per_prompt=1, max_sequence_length=max_sequence_length)
        return PromptEmbeds(embeds=embeds, pooled=pooled)  # (1, n, 4096) T5, (1, 768) CLIP pooled

    def schedule(self, scheduler, steps, latent_shape, device=None):
        height, width = latent_shape[-2:]
        return flux_schedule(scheduler, steps, (height // 2) * (width // 2), device)

    def velocity(self, transformer, latents, timestep, embeds, pooled, guidance):
        if not transformer.config.guidance_embeds:
            guidance = None  # FLUX.1-schnell: no guidance input
        elif guidance is None:
            raise ValueError("this FLUX transformer is guidance-distilled: give each item its guidance scale")
        sigma = timestep.expand(latents.shape[0]).to(device=latents.device, dtype=latents.dtype) / 1000  # (B,)
        return call_flux(transformer, latents, sigma, embeds, pooled, guidance)  # (B, C, h, w)

    def check(self, params: FlowEditParams, transformer: Any) -> None:
        if params.guidance != "standard":
            raise ParameterError("guidance", "FLUX.1 is guidance-distilled: its guidance is an input of the model, "
                                             "so there is no 'authors' classifier-free formula to choose (use standard)")
        for name in ("src_negative_prompt", "tar_negative_prompt"):
            if getattr(params, name):
                raise ParameterError(name, f"FLUX.1 takes no negative prompt (guidance-distilled: one prediction per "
                                           f"branch); leave {name} empty")
