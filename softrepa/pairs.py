"""All image x caption pairs of a batch through the denoiser: the error matrix of Eq. 13 and its
gradient, naive or in bounded-memory chunks.

Each image is noised once per step; every caption is then run against it, B_img x B_txt items.
By default one t and one eps are shared by the whole batch (the paper's note under Eq. 13: it
stabilises the comparison, since every logit of a row then differs only by the caption); per-image
t and eps are options.

Naive: one forward of all B_img * B_txt items, the loss, ``backward``. Activation memory grows as B^2.

Chunked (``pair_chunk`` items at most in memory): the loss depends on the tokens only through
err, so dL/dpsi = sum_p dL/derr_p * derr_p/dpsi. Hence

1. a no-grad pass computes the full err matrix, chunk by chunk; the last chunk runs with grad and
   keeps its graph (it would be recomputed first anyway: this saves one chunk forward);
2. the loss on a detached copy of err gives g = dL/derr for all pairs at once, so cross-terms
   (the softmax over every caption of a row) are all in g;
3. per chunk, a forward with grad and ``backward(sum(g_chunk * err_chunk))``: the vector-Jacobian
   product of that chunk. Summed over chunks it is exactly the naive gradient.

Cost: one extra forward of all but one chunk; memory: one chunk's graph.

Prompt tuning (``LossConfig.cweight`` 0): the loss is the denoising term alone, which depends on
each image's own caption only, so just the B_img positive pairs are run (same chunking), not
B_img x B_txt; the loss and gradient equal the full matrix path's. When all pairs fit in
one chunk the naive path runs. The denoiser must be deterministic (eval mode, no dropout) so the
recomputed err equals the first pass.

Conditioning per architecture:
* MM-DiT (SD3): ``encoder_hidden_states`` (B, n, D) and ``pooled_projections`` (B, P) per caption.
* UNet: ``encoder_hidden_states`` per caption; SDXL adds ``added_cond_kwargs`` with ``text_embeds``
  (the pooled caption embedding, per caption) and ``time_ids`` (size/crop micro-conditioning,
  per image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from softrepa.loss import DiffusionObjective, LossConfig, LossOutput, denoising_only_loss, softrepa_loss, tau_of_t

ARCHES = ("mmdit", "unet")


@dataclass
class PairBatch:
    """One step's images and captions.

    latents: x0 (B_img, C, H, W), already VAE-encoded and scaled.
    text: per-caption conditioning, each (B_txt, ...): "prompt_embeds" and, for SD3/SDXL,
        "pooled_prompt_embeds".
    image_cond: per-image conditioning, each (B_img, ...): "time_ids" for SDXL.
    positives: (B_img,) index of each image's own caption in ``text``; None = diagonal.
    """

    latents: torch.Tensor
    text: dict[str, torch.Tensor]
    image_cond: dict[str, torch.Tensor] = field(default_factory=dict)
    positives: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return int(self.latents.shape[0])

    @property
    def num_captions(self) -> int:
        return int(self.text["prompt_embeds"].shape[0])


@dataclass
class NoiseDraw:
    """t (B_img,) on the 0..1000 scale and eps (B_img, C, H, W) for one step."""

    timesteps: torch.Tensor
    eps: torch.Tensor


def draw_noise(latents: torch.Tensor, objective: DiffusionObjective, generator: torch.Generator | None = None,
               per_sample_t: bool = False, per_sample_noise: bool = False) -> NoiseDraw:
    """One step's (t, eps). Drawn on the CPU generator (reproducible on any device), then moved.

    Default: a single t and a single eps for the whole batch (Eq. 13 note, authors' code).
    """
    n = latents.shape[0]
    timesteps = objective.sample_timesteps(n if per_sample_t else 1, generator)  # (n,) or (1,)
    shape = (n if per_sample_noise else 1, *latents.shape[1:])
    eps = torch.randn(shape, generator=generator, dtype=torch.float32)
    return NoiseDraw(timesteps=timesteps.expand(n).clone(),
                     eps=eps.to(device=latents.device, dtype=latents.dtype).expand_as(latents))


def call_denoiser(denoiser: nn.Module, arch: str, x_t: torch.Tensor, timesteps: torch.Tensor,
                  text: dict[str, torch.Tensor], image_cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """One batched denoiser call with the diffusers keyword API; returns the prediction (B, C, H, W)."""
    if arch == "mmdit":
        return denoiser(hidden_states=x_t, timestep=timesteps, encoder_hidden_states=text["prompt_embeds"],
                        pooled_projections=text["pooled_prompt_embeds"], return_dict=False)[0]
    if arch == "unet":
        added = None
        if "pooled_prompt_embeds" in text:  # SDXL text-time conditioning
            if "time_ids" not in image_cond:
                raise ValueError("SDXL-style UNet needs image_cond['time_ids'] (B, 6) beside pooled text embeddings")
            added = {"text_embeds": text["pooled_prompt_embeds"], "time_ids": image_cond["time_ids"]}
        return denoiser(x_t, timesteps, encoder_hidden_states=text["prompt_embeds"], added_cond_kwargs=added,
                        return_dict=False)[0]
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHES}")


class PairScorer:
    """Computes err[i, j] for any subset of the B_img x B_txt pairs of one noised batch.

    Pairs are numbered row-major: p = i * B_txt + j (image i, caption j).
    """

    def __init__(self, denoiser: nn.Module, arch: str, objective: DiffusionObjective, batch: PairBatch,
                 noise: NoiseDraw):
        if arch not in ARCHES:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHES}")
        self.denoiser, self.arch, self.batch = denoiser, arch, batch
        param = next(denoiser.parameters())
        self.model_dtype, self.device = param.dtype, param.device
        # inputs are constants of the token optimisation: detach so a caller's graph (e.g. a text
        # encoder run with grad enabled) is never backpropagated or freed here
        self.err_dtype = torch.promote_types(param.dtype, torch.float32)  # float32, or float64 for a float64 model
        x0 = batch.latents.detach().to(self.device, self.err_dtype)
        eps = noise.eps.to(self.device, x0.dtype)
        # x_t and target in full precision; x_t is cast to the model dtype per call
        self.x_t = objective.noisy(x0, eps, noise.timesteps)  # (B_img, C, H, W)
        self.target = objective.target(x0, eps, noise.timesteps)  # (B_img, C, H, W)
        self.timesteps = objective.model_timesteps(noise.timesteps, self.device)  # (B_img,)
        self.text = {k: v.detach().to(self.device, self.model_dtype) for k, v in batch.text.items()}
        self.image_cond = {k: v.detach().to(self.device, self.model_dtype) for k, v in batch.image_cond.items()}
        self.num_images, self.num_captions = batch.num_images, batch.num_captions

    @property
    def num_pairs(self) -> int:
        return self.num_images * self.num_captions

    def errors(self, pairs: torch.Tensor) -> torch.Tensor:
        """err of the given flat pair indices: (n,) in ``err_dtype``."""
        pairs = pairs.to(self.device)
        img, txt = pairs // self.num_captions, pairs % self.num_captions  # (n,), (n,)
        pred = call_denoiser(self.denoiser, self.arch, self.x_t[img].to(self.model_dtype), self.timesteps[img],
                             {k: v[txt] for k, v in self.text.items()},
                             {k: v[img] for k, v in self.image_cond.items()})  # (n, C, H, W)
        target = self.target[img]
        # the squared error in at least float32: bf16 differences of near-equal errors would tie
        diff = pred.to(target.dtype) - target
        return diff.pow(2).flatten(1).mean(dim=1)  # (n,)

    def chunks(self, pair_chunk: int) -> list[torch.Tensor]:
        return list(torch.arange(self.num_pairs).split(pair_chunk if pair_chunk > 0 else self.num_pairs))

    @torch.no_grad()
    def error_matrix(self, pair_chunk: int = 0) -> torch.Tensor:
        """The full err matrix without gradients: (B_img, B_txt)."""
        err = torch.cat([self.errors(chunk) for chunk in self.chunks(pair_chunk)])
        return err.view(self.num_images, self.num_captions)


class PairLoss:
    """err (B_img, B_txt) -> LossOutput with tau(t_i) per row (``softrepa_loss``).

    ``positives_only`` (cweight 0, prompt tuning): the loss depends only on each image's own
    caption, so ``pair_loss_backward`` scores just those B_img pairs and calls ``positive_loss``."""

    def __init__(self, config: LossConfig, noise: NoiseDraw, positives: torch.Tensor | None):
        self.config, self.positives = config, positives
        self.tau = tau_of_t(noise.timesteps, config)  # (B_img,)
        self.positives_only = config.cweight == 0

    def __call__(self, err: torch.Tensor) -> LossOutput:
        pos = self.positives.to(err.device) if self.positives is not None else None
        return softrepa_loss(err, self.tau.to(err.device, err.dtype), scale=self.config.scale,
                             dweight=self.config.dweight, positives=pos, cweight=self.config.cweight)

    def positive_pairs(self, num_images: int, num_captions: int) -> torch.Tensor:
        """Flat pair index of each image's own caption: (B_img,)."""
        pos = self.positives.cpu() if self.positives is not None else torch.arange(num_images)
        return torch.arange(num_images) * num_captions + pos

    def positive_loss(self, positive_err: torch.Tensor) -> LossOutput:
        return denoising_only_loss(positive_err, self.config.dweight)


def make_loss_fn(config: LossConfig, noise: NoiseDraw, positives: torch.Tensor | None) -> PairLoss:
    """err (B_img, B_txt) -> LossOutput with tau(t_i) per row."""
    return PairLoss(config, noise, positives)


def default_backward(loss: torch.Tensor) -> None:
    loss.backward()


def pair_loss_backward(scorer: PairScorer, loss_fn: Callable[[torch.Tensor], LossOutput], pair_chunk: int = 0,
                       backward: Callable[[torch.Tensor], None] = default_backward) -> LossOutput:
    """Loss of all pairs and its gradient accumulated into the tokens' ``.grad``; returns the
    detached ``LossOutput``.

    pair_chunk: most pair items in one forward; 0 (or >= B_img * B_txt) runs the naive path.
    backward: how to backpropagate a scalar (e.g. ``lambda x: scaler.scale(x).backward()`` for fp16).
    A non-finite loss is returned without any backward, so the caller can skip the step.
    """
    if getattr(loss_fn, "positives_only", False):  # prompt tuning: only the positives matter
        pairs = loss_fn.positive_pairs(scorer.num_images, scorer.num_captions)  # (B_img,)
        loss_of = loss_fn.positive_loss
    else:
        pairs = torch.arange(scorer.num_pairs)  # (B_img * B_txt,)

        def loss_of(err: torch.Tensor) -> LossOutput:
            return loss_fn(err.view(scorer.num_images, scorer.num_captions))  # (B_img, B_txt)
    return _chunked_loss_backward(scorer, pairs, loss_of, pair_chunk, backward)


def _chunked_loss_backward(scorer: PairScorer, pairs: torch.Tensor, loss_of: Callable[[torch.Tensor], LossOutput],
                           pair_chunk: int, backward: Callable[[torch.Tensor], None]) -> LossOutput:
    """``loss_of(err of pairs)`` and its gradient, by the two passes of the module docstring."""
    if pair_chunk <= 0 or len(pairs) <= pair_chunk:  # naive: everything fits in one chunk
        out = loss_of(scorer.errors(pairs))
        if torch.isfinite(out.loss):
            backward(out.loss)
        return out.detach()

    chunks = list(pairs.split(pair_chunk))
    with torch.no_grad():  # pass 1: err of every pair, no activations kept
        first = [scorer.errors(chunk) for chunk in chunks[:-1]]
    last_err = scorer.errors(chunks[-1])  # with grad; its graph is used below instead of a recompute
    err_leaf = torch.cat([*first, last_err.detach()]).requires_grad_(True)  # (len(pairs),)
    out = loss_of(err_leaf)
    if not torch.isfinite(out.loss):
        return out.detach()
    (grad_err,) = torch.autograd.grad(out.loss, err_leaf)  # dL/derr: every cross-term of the softmax
    grads = grad_err.split([len(chunk) for chunk in chunks])

    # pass 2: sum_p dL/derr_p * derr_p/dpsi, one chunk's graph at a time
    backward((grads[-1] * last_err).sum())
    del last_err
    for grad_chunk, chunk in zip(grads[:-1], chunks[:-1]):
        backward((grad_chunk * scorer.errors(chunk)).sum())
    return out.detach()
