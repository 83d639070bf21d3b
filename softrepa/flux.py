"""SoftREPA soft tokens for FLUX.1 (dev, schnell): the design, and what training needs of FLUX.

No paper or public code defines SoftREPA tokens for FLUX. This is the design, kept as close to
the paper's SD3 recipe (Algorithm 1, §3.2) as FLUX's architecture allows. It is a starting point:
m, L and the training guidance are not tuned.

Where the tokens go
    FLUX.1's ``FluxTransformer2DModel`` has 19 double-stream blocks (``transformer_blocks``:
    separate text and image weights, joint attention, each returns (text, image) like SD3's
    joint blocks) and then 38 single-stream blocks (one concatenated sequence, shared weights).
    The double-stream blocks are FLUX's counterpart of SD3's MM-DiT blocks, so the tokens go
    there: on each of the first L double-stream blocks a pre-hook prepends that layer's m tokens
    (B, m, 3072) to ``encoder_hidden_states`` (the text stream after ``context_embedder``) and a
    forward hook drops the m token outputs, so every hooked layer gets fresh tokens and the
    next block sees the original n text positions (as for SD3). The single-stream blocks never
    see the tokens. Defaults m 4, L 5 (the first 5 of 19) are SD3's, not tuned. Switched off or
    detached, the hooks change nothing: the outputs are bitwise the vanilla model's.

Rotary position ids
    FLUX has no learned positions: every block gets one shared rotary table ``image_rotary_emb``
    = ``pos_embed(cat(txt_ids, img_ids))``, (cos, sin) each (n + N, 128), and attention runs over
    cat(text, image). FluxPipeline's text ids are all zeros (the identity rotation: cos 1, sin 0),
    so the tokens get position ids 0 like the text: the hook puts m rows from the model's own
    ``pos_embed`` at ids 0 in front of the table (``FluxArchitecture.widen_rotary`` in
    ``softrepa.models``). An attention mask in ``joint_attention_kwargs`` is refused (FluxPipeline
    passes none).

Time bins
    FluxPipeline passes the timestep as sigma in 0..1 (the model multiplies by 1000 itself); the
    hooks scale the captured value by 1000 in float64 and round it to 1e-3, so the per-time bins
    use the same 0..1000 scale as SD3 tokens (sigma = t / 1000 round-trips exactly to t's bin).

Training objective (a guidance-distilled flow model)
    FLUX.1 is a rectified-flow model like SD3: x_t = (1 - sigma) x0 + sigma eps, the model
    predicts the velocity eps - x0 (FlowMatchEulerDiscreteScheduler steps x by
    (sigma_next - sigma) * prediction). The trainer keeps the SD3 objective
    (``DiffusionObjective("flow")``: t uniform in 0..999, sigma = t / 1000, no sampling shift) on
    the unpacked 16-channel latents ((mode - shift_factor) * scaling_factor, as cached for SD3);
    ``FluxDenoiser`` packs them into FLUX's 2x2 patches (B, h/2 * w/2, 64), builds ``img_ids`` /
    ``txt_ids`` as FluxPipeline does, and unpacks the prediction, so ``softrepa.pairs`` scores
    FLUX pairs with its SD3 call convention.
    dev is guidance-distilled: one forward at guidance g imitates CFG at scale g. The trainer
    feeds the guidance embedding the kind's sampling default (flux-dev 3.5, FluxPipeline's and
    the model card's): the tokens are then trained on the same function of the text stream they
    are used with when sampling or editing at that guidance, and this is what diffusers' own
    FLUX fine-tuning scripts do (guidance_scale 3.5 with the plain flow-matching target). The
    alternative, g = 1 (the distilled conditional prediction, closer to the error's ELBO reading),
    is not tried. schnell has no guidance embedding: none is fed.

Text features for the cache
    ``FluxEncoding`` gives ``softrepa.cache`` the SD3-style ``encode_prompt`` it calls (keyword
    ``do_classifier_free_guidance``, four return values) over FluxPipeline's own ``encode_prompt``
    ((T5 embeds (B, n, 4096), CLIP pooled (B, 768), text_ids)): FLUX has no negative branch
    (true CFG is off by default), so none is encoded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from softrepa.loss import DiffusionObjective
from softrepa.models import get_kind

PAIR_CALL = "mmdit"  # the softrepa.pairs call convention FluxDenoiser speaks (SD3's keywords)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> FLUX's 2x2 patches (B, h/2 * w/2, 4C), as ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX latents need an even height and width, got {h} x {w}")
    patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w) for latent size h x w (``FluxPipeline._unpack_latents``)."""
    b, _, channels = packed.shape
    patches = packed.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids of the packed image tokens, (h/2 * w/2, 3): (0, row, column) as FluxPipeline."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, device, dtype)


def call_flux(transformer: nn.Module, latents: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor,
              pooled: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
    """One FLUX forward on unpacked latents (B, C, h, w), as FluxPipeline calls it: the 2x2 packing,
    text ids 0 and image ids (row, column), ``sigma`` (B,) in 0..1, ``guidance`` (B,) or None
    (schnell); returns the prediction unpacked, (B, C, h, w)."""
    _, _, h, w = latents.shape
    device, dtype = latents.device, latents.dtype
    packed = transformer(hidden_states=pack_latents(latents),  # (B, h/2 * w/2, 4C)
                         timestep=sigma, guidance=None if guidance is None else guidance.to(device),
                         pooled_projections=pooled, encoder_hidden_states=embeds,
                         txt_ids=torch.zeros(embeds.shape[1], 3, device=device, dtype=dtype),  # (n, 3)
                         img_ids=image_ids(h, w, device, dtype), return_dict=False)[0]  # (B, h/2 * w/2, 4C)
    return unpack_latents(packed, h, w)


def training_guidance(kind: str, denoiser: nn.Module) -> float | None:
    """The guidance fed to a guidance-distilled denoiser in training: the kind's sampling default
    (module docstring); None without a guidance embedding (schnell)."""
    if not denoiser.config.guidance_embeds:
        return None
    return float(get_kind(kind).cfg)


class FluxDenoiser(nn.Module):
    """A FLUX transformer called with SD3's keywords on unpacked latents (B, C, h, w).

    timestep: the 0..1000 scale of ``DiffusionObjective``; FLUX gets sigma = t / 1000. Soft
    tokens hooked on ``transformer`` see every call (the adapter adds no module of its own).
    """

    def __init__(self, transformer: nn.Module, guidance: float | None):
        super().__init__()
        if guidance is not None and not transformer.config.guidance_embeds:
            raise ValueError("guidance given for a FLUX transformer without a guidance embedding (schnell)")
        if guidance is None and transformer.config.guidance_embeds:
            raise ValueError("this FLUX transformer is guidance-distilled (dev): give the training guidance")
        self.transformer = transformer
        self.guidance = guidance

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        guidance = None  # x_t: hidden_states (B, C, h, w)
        if self.guidance is not None:
            guidance = torch.full((hidden_states.shape[0],), self.guidance, device=hidden_states.device,
                                  dtype=torch.float32)  # (B,)
        return (call_flux(self.transformer, hidden_states, timestep.to(torch.float32) / 1000, encoder_hidden_states,
                          pooled_projections, guidance),)  # (B, C, h, w)


def flux_objective() -> DiffusionObjective:
    """FLUX's training objective: flow matching as SD3 (module docstring)."""
    return DiffusionObjective("flow", num_train_timesteps=1000)


class FluxEncoding:
    """A FluxPipeline seen through the SD3-style text encoding ``softrepa.cache`` calls.

    ``vae`` and the text encoders are the pipeline's (the cache fingerprints and uses them);
    ``encode_prompt`` returns (T5 embeds (B, n, 4096), None, CLIP pooled (B, 768), None).
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe

    @property
    def vae(self) -> nn.Module:
        return self.pipe.vae

    @property
    def text_encoder(self) -> nn.Module | None:
        return self.pipe.text_encoder

    @property
    def text_encoder_2(self) -> nn.Module | None:
        return self.pipe.text_encoder_2

    def encode_prompt(self, prompt: list[str], device: torch.device | str | None = None, num_images_per_prompt: int = 1,
                      do_classifier_free_guidance: bool = False, negative_prompt: Any = None,
                      max_sequence_length: int = 512):
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                    num_images_per_prompt=num_images_per_prompt,
                                                    max_sequence_length=max_sequence_length)
        return embeds, None, pooled, None  # FLUX has no negative branch (true CFG off)


def encoding_view(pipe: Any, arch: str) -> Any:
    """What ``softrepa.cache`` encodes with: the pipeline itself, or ``FluxEncoding`` for FLUX."""
    if arch == "flux":
        return FluxEncoding(pipe)
    if arch in ("mmdit", "unet"):
        return pipe
    raise ValueError(f"unknown architecture {arch!r}; expected 'mmdit', 'unet' or 'flux'")
