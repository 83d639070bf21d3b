"""The SoftREPA contrastive loss (paper §3.1, Eq. 9-14) and the diffusion objectives it scores.

For B_img images x0 and B_txt captions y, one noise draw (t, eps) per image gives the error
matrix (single Monte-Carlo sample, Eq. 13)

    err[i, j] = mean over C,H,W of (model(x_t^(i), t_i, y^(j)) - target^(i))^2      # (B_img, B_txt)

with target = eps - x0 for flow matching (SD3, Eq. 11) and the scheduler's target for
diffusion UNets (eps, Eq. 10; or v / x0 for v- / sample-prediction models). Then

    logits[i, j] = scale * exp(-err[i, j] / tau(t_i))                                   (Eq. 10/11)
    L = cweight * CE over captions for each image, positives on the diagonal            (Eq. 9/14)
        + dweight * mean_i err[i, pos(i)]                                               (denoising term)

cweight is 1 in SoftREPA. cweight = 0 is plain *prompt tuning*: the same soft tokens trained on
the same pairs with the denoising loss only, L = dweight * mean_i err[i, pos(i)], the control the
paper does not run; only the positive pairs then matter, and ``softrepa.pairs`` runs only those
(B_img forwards instead of B_img x B_txt). ``denoising_only_loss`` is that case on the positives'
errors; it reports the contrastive loss and the in-batch accuracy as NaN (not computed).

The exponential bounds the logits to (0, scale], which the paper reports is what makes training
stable (a raw -err logit is unbounded). Defaults follow the authors' code: scale 4.0, a constant
tau 0.07 (the paper writes tau(t); ``TauConfig`` offers a linear schedule in t as an option).
Only one direction (image -> captions) is used, as the authors do.

``DiffusionObjective`` makes x_t and the target. SD3: t uniform integer in [0, 999],
sigma = t / 1000, x_t = (1 - sigma) x0 + sigma eps (the authors' noising, without the sampling
scheduler's shift). UNets: a ``DDPMScheduler`` built from the pipeline scheduler's config
(``add_noise`` / ``get_velocity`` are its public API), as the diffusers training scripts do, so an
Euler or DDIM *sampling* scheduler still trains on the model's alphas_cumprod.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

TAU_SCHEDULES = ("constant", "linear")
PREDICTION_TYPES = ("flow", "epsilon", "v_prediction", "sample")


# ----------------------------------------------------------------------------- loss


@dataclass
class LossConfig:
    """Hyper-parameters of Eq. 9-14.

    scale: multiplies exp(-err / tau) (authors: 4.0).
    tau: temperature; with ``tau_schedule="linear"`` it is tau at t = 0.
    tau_schedule: "constant" (authors) or "linear" in t: tau(t) = tau + (tau_end - tau) * t / 1000.
    tau_end: tau at t = 1000 for the linear schedule.
    dweight: weight of the denoising term mean(diag err) (authors: 0 for SD3, 10 for SD1.5/SDXL).
    cweight: weight of the contrastive term (SoftREPA: 1; 0: prompt tuning, denoising loss only).
    """

    scale: float = 4.0
    tau: float = 0.07
    tau_schedule: str = "constant"
    tau_end: float | None = None
    dweight: float = 0.0
    cweight: float = 1.0

    def __post_init__(self) -> None:
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"tau_schedule must be one of {TAU_SCHEDULES}, got {self.tau_schedule!r}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.tau_schedule == "linear" and (self.tau_end is None or self.tau_end <= 0):
            raise ValueError("tau_schedule 'linear' needs tau_end > 0 (tau at t = 1000)")
        if self.dweight < 0:
            raise ValueError(f"dweight must be >= 0, got {self.dweight}")
        if self.cweight < 0:
            raise ValueError(f"cweight must be >= 0, got {self.cweight}")
        if self.cweight == 0 and self.dweight == 0:
            raise ValueError("cweight 0 (prompt tuning) needs dweight > 0: otherwise the loss is zero")


def tau_of_t(timesteps: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """tau(t) for each image's timestep (0..1000 scale): (B_img,) float64."""
    t = timesteps.detach().to(torch.float64).reshape(-1) / 1000.0
    if config.tau_schedule == "constant":
        return torch.full_like(t, config.tau)
    if config.tau_schedule == "linear":
        return config.tau + (config.tau_end - config.tau) * t
    raise ValueError(f"unknown tau_schedule {config.tau_schedule!r}; choose one of {TAU_SCHEDULES}")


@dataclass
class LossOutput:
    """The loss and its split. Tensors are scalars except ``logits`` (B_img, B_txt)."""

    loss: torch.Tensor
    contrastive: torch.Tensor
    denoising: torch.Tensor
    accuracy: torch.Tensor  # fraction of images whose own caption has the largest logit
    logits: torch.Tensor

    def detach(self) -> "LossOutput":
        return LossOutput(*(v.detach() for v in (self.loss, self.contrastive, self.denoising,
                                                 self.accuracy, self.logits)))

    def floats(self) -> dict[str, float]:
        return {"loss": float(self.loss), "contrastive": float(self.contrastive),
                "denoising": float(self.denoising), "accuracy": float(self.accuracy)}


def softrepa_loss(err: torch.Tensor, tau: torch.Tensor | float, scale: float = 4.0, dweight: float = 0.0,
                  positives: torch.Tensor | None = None, cweight: float = 1.0) -> LossOutput:
    """Eq. 9-14 on an error matrix ``err`` (B_img, B_txt), the contrastive term weighted by
    ``cweight`` (module docstring).

    tau: a float or one value per image (B_img,) (tau(t_i) when images have their own t).
    positives: (B_img,) column of each image's own caption; default the diagonal (0..B_img-1).
        With captions gathered from several processes it is ``rank * B_img + arange(B_img)``.
    """
    if err.dim() != 2:
        raise ValueError(f"err must be a (B_img, B_txt) matrix, got shape {tuple(err.shape)}")
    n_img, n_txt = err.shape
    if positives is None:
        if n_txt < n_img:
            raise ValueError(f"{n_img} images but only {n_txt} captions: pass positives explicitly")
        positives = torch.arange(n_img, device=err.device)
    tau = torch.as_tensor(tau, dtype=err.dtype, device=err.device)
    if tau.dim() == 1:
        tau = tau.unsqueeze(1)  # (B_img, 1): tau(t_i) for row i
    logits = scale * torch.exp(-err / tau)  # (B_img, B_txt), in (0, scale]
    contrastive = F.cross_entropy(logits, positives)
    positive_err = err.gather(1, positives.unsqueeze(1)).squeeze(1)  # (B_img,)
    denoising = positive_err.mean()
    loss = cweight * contrastive + dweight * denoising
    # judged on err, not logits: exp(-err / tau) underflows to a tie of zeros when err >> tau.
    # The positive must win strictly (identical captions are a miss, not a lucky argmax).
    others = err.detach().scatter(1, positives.unsqueeze(1), float("inf"))  # (B_img, B_txt)
    wins = positive_err.detach() < others.min(dim=1).values  # (B_img,)
    accuracy = wins.to(err.dtype).mean()
    return LossOutput(loss=loss, contrastive=contrastive, denoising=denoising, accuracy=accuracy, logits=logits)


def denoising_only_loss(positive_err: torch.Tensor, dweight: float) -> LossOutput:
    """Prompt tuning's loss (cweight 0) from the positive pairs' errors alone (B_img,): equal to
    ``softrepa_loss(err, ..., dweight=dweight, cweight=0).loss`` on the full matrix. The contrastive
    loss and accuracy are NaN (not computed); ``logits`` is an empty (B_img, 0) matrix."""
    if positive_err.dim() != 1:
        raise ValueError(f"positive_err must be (B_img,), got shape {tuple(positive_err.shape)}")
    denoising = positive_err.mean()
    nan = torch.full((), float("nan"), dtype=positive_err.dtype, device=positive_err.device)
    return LossOutput(loss=dweight * denoising, contrastive=nan, denoising=denoising, accuracy=nan.clone(),
                      logits=positive_err.new_zeros((positive_err.shape[0], 0)))


# ----------------------------------------------------------------------------- objectives


class DiffusionObjective:
    """How x_t and the regression target are made for one model (Eq. 10 vs Eq. 11).

    prediction_type: "flow" (target eps - x0), "epsilon" (eps), "v_prediction" (the scheduler's
    ``get_velocity``) or "sample" (x0). ``noise_scheduler`` (UNets) provides ``add_noise`` and
    ``get_velocity``; flow matching needs none.
    """

    def __init__(self, prediction_type: str, noise_scheduler: Any = None, num_train_timesteps: int = 1000):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction type {prediction_type!r}; supported: {PREDICTION_TYPES}")
        if prediction_type != "flow" and noise_scheduler is None:
            raise ValueError(f"prediction type {prediction_type!r} needs a noise scheduler with add_noise")
        if prediction_type == "v_prediction" and not hasattr(noise_scheduler, "get_velocity"):
            raise ValueError(f"{type(noise_scheduler).__name__} has no get_velocity for v-prediction")
        self.prediction_type = prediction_type
        self.noise_scheduler = noise_scheduler
        self.num_train_timesteps = int(num_train_timesteps)

    @classmethod
    def for_pipeline(cls, pipe: Any, arch: str) -> "DiffusionObjective":
        """The objective of a diffusers pipeline: flow matching for MM-DiT, the scheduler's
        ``config.prediction_type`` for UNets."""
        config = pipe.scheduler.config
        steps = int(config.get("num_train_timesteps", 1000))
        if arch == "mmdit":
            return cls("flow", num_train_timesteps=steps)
        if arch == "unet":
            from diffusers import DDPMScheduler

            # a training-time scheduler on the model's own betas: add_noise and get_velocity use
            # alphas_cumprod whatever sampler (DDIM, Euler, ...) the pipeline ships with
            noise_scheduler = DDPMScheduler.from_config(config)
            return cls(config.get("prediction_type", "epsilon"), noise_scheduler, steps)
        raise ValueError(f"no diffusion objective for architecture {arch!r}; expected 'mmdit' or 'unet'")

    def sample_timesteps(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n integer timesteps uniform in [0, num_train_timesteps - 1] (CPU, int64)."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator)

    def _scheduler_timesteps(self, timesteps: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        # the scheduler indexes alphas_cumprod with these: integers on the sample's device
        return timesteps.to(device=x0.device, dtype=torch.long)

    def noisy(self, x0: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t for each image: x0, eps (B, C, H, W); timesteps (B,)."""
        if self.prediction_type == "flow":
            sigma = (timesteps.to(device=x0.device, dtype=torch.float64) / self.num_train_timesteps)
            sigma = sigma.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
            return (1.0 - sigma) * x0 + sigma * eps
        return self.noise_scheduler.add_noise(x0, eps, self._scheduler_timesteps(timesteps, x0))

    def target(self, x0: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output at x_t."""
        if self.prediction_type == "flow":
            return eps - x0  # Eq. 11
        if self.prediction_type == "epsilon":
            return eps  # Eq. 10
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, eps, self._scheduler_timesteps(timesteps, x0))
        if self.prediction_type == "sample":
            return x0
        raise ValueError(f"unknown prediction type {self.prediction_type!r}")

    def model_timesteps(self, timesteps: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The timestep the denoiser receives, on the 0..1000 scale the soft tokens' time bins expect.

        SD3 pipelines pass float32 sigma * 1000 (= t here), never the model dtype: in bf16 999
        would round to 1000. UNets take the integer t.
        """
        if self.prediction_type == "flow":
            return timesteps.to(device=device, dtype=torch.float32)
        return timesteps.to(device=device, dtype=torch.long)
