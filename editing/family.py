"""What FlowEdit needs from a model family: the ``ModelFamily`` interface and its MM-DiT (SD3, SD3.5)
implementation. FLUX.1's is ``editing.flux``; ``editing.flowedit.FAMILIES`` registers both.

FlowEdit's loop (``editing.flowedit``) is the same for every flow-matching model. Per family only
these differ::

    encode_prompt(pipe, prompt)        -> PromptEmbeds (embeds (1, n, D), pooled (1, P))
    schedule(scheduler, T, (1, C, h, w)) -> timesteps (T,), sigmas (T + 1,) ending at 0
    velocity(transformer, z (B, C, h, w), t, embeds (B, n, D), pooled (B, P), guidance (B,) or None)
                                       -> v (B, C, h, w)
    pixel_multiple(pipe)               -> the side multiple an input image is cropped to

The loop always works on the VAE's latent grid (B, C, h, w): noise, z_src, z_tar, z_edit, masks
and the velocity cache never see a family's own layout. ``velocity`` maps to and from it (FLUX
packs 2x2 patches; a permutation, so the loop's element-wise updates are the same numbers either
way).

Guidance: ``distilled = False`` (SD3): classifier-free guidance, two predictions per branch
(negative and positive prompt) combined by ``editing.flowedit.Branch.guide``; ``guidance`` is then
always None. ``distilled = True`` (FLUX.1): one prediction per branch, the branch's scale is an
input of the model (``guidance``, one value per batch item), or unused by a model without that
input (FLUX.1-schnell).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from editing.inputs import model_factor
from editing.params import FlowEditParams
from softrepa.models import execution_device


@dataclass
class PromptEmbeds:
    """Text conditioning of one prompt: embeds (1, n, D) (the transformer's text stream input), pooled (1, P)."""

    embeds: torch.Tensor
    pooled: torch.Tensor


class ModelFamily:
    """How FlowEdit encodes prompts, schedules, and computes velocities for one transformer family."""

    name: str  # the architecture name (``softrepa.models.ARCHITECTURES``)
    model_class_name: str  # the diffusers transformer class this family drives
    distilled: bool = False  # guidance-distilled: one prediction per branch (see the module docstring)
    t5_attrs: tuple[str, str] = ("", "")  # (tokenizer, encoder) pipeline attributes of its T5, for prompt lengths

    def matches(self, transformer: Any) -> bool:
        return any(cls.__name__ == self.model_class_name for cls in type(transformer).__mro__)

    def pixel_multiple(self, pipe: Any) -> int: ...

    def encode_prompt(self, pipe: Any, prompt: str, max_sequence_length: int) -> PromptEmbeds: ...

    def schedule(self, scheduler: Any, steps: int, latent_shape: tuple[int, ...],
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def velocity(self, transformer: Any, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
                 pooled: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor: ...

    def check(self, params: FlowEditParams, transformer: Any) -> None:
        """Raise ``ParameterError`` for parameters this family cannot run (beyond ``params.check``)."""


def flowedit_schedule(scheduler: Any, steps: int, device: torch.device | str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(timesteps (T,) on the 0..1000 scale, sigmas (T+1,) ending at 0) from a copy of a fixed-shift
    ``scheduler`` (SD3's). A fresh scheduler from the config: the pipeline's own is never touched.
    """
    fresh = type(scheduler).from_config(scheduler.config)
    if fresh.config.get("use_dynamic_shifting", False):
        raise ValueError("FlowEdit's SD3 settings assume a fixed-shift scheduler; this scheduler uses "
                         "resolution-dependent shifting (use_dynamic_shifting=True), which is not supported")
    fresh.set_timesteps(steps, device=device)
    return checked_schedule(scheduler, steps, fresh.timesteps.float(), fresh.sigmas.float())


def checked_schedule(scheduler: Any, steps: int, timesteps: torch.Tensor, sigmas: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(timesteps, sigmas)`` when they are T and T + 1 long and the last sigma is 0, else ``ValueError``."""
    if timesteps.shape[0] != steps or sigmas.shape[0] != steps + 1 or float(sigmas[-1]) != 0.0:
        raise ValueError(f"scheduler {type(scheduler).__name__} gave {timesteps.shape[0]} timesteps and "
                         f"{sigmas.shape[0]} sigmas (last {float(sigmas[-1])}); FlowEdit needs T and T+1 ending at 0")
    return timesteps, sigmas


class MMDiTFamily(ModelFamily):
    """SD3 and SD3.5 (``SD3Transformer2DModel``): classifier-free guidance, latents as (B, C, h, w),
    timesteps on the 0..1000 scale, a fixed-shift scheduler, text from CLIP-L + CLIP-G (+ T5)."""

    name = "mmdit"
    model_class_name = "SD3Transformer2DModel"
    distilled = False
    t5_attrs = ("tokenizer_3", "text_encoder_3")

    def pixel_multiple(self, pipe):
        return model_factor(pipe)  # VAE 8 x patch 2 = 16 on SD3

    @torch.no_grad()
    def encode_prompt(self, pipe, prompt, max_sequence_length):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None,
                                                  device=execution_device(pipe), num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False,
                                                  max_sequence_length=max_sequence_length)
        return PromptEmbeds(embeds=embeds, pooled=pooled)

    def schedule(self, scheduler, steps, latent_shape, device=None):
        return flowedit_schedule(scheduler, steps, device)

    def velocity(self, transformer, latents, timestep, embeds, pooled, guidance):
        if guidance is not None:
            raise ValueError("SD3 takes classifier-free guidance, not a guidance input")
        return transformer(hidden_states=latents, timestep=timestep.expand(latents.shape[0]).to(latents.device),
                           encoder_hidden_states=embeds, pooled_projections=pooled,
                           return_dict=False)[0]  # (B, C, h, w)
