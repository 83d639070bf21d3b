"""FlowEdit (Kulikov et al. 2024) on SD3, SD3.5 and FLUX.1 pipelines, with optional SoftREPA soft tokens.

Inversion-free editing: the edited latent z_edit starts at the source latent x_src and follows the
*difference* of two guided velocities, the target's minus the source's, evaluated on noisy copies
that share the same noise. With sigma_i the scheduler's noise levels (sigma_T = 0) and T steps::

    z_edit = x_src
    for i = 0 .. T-1 with T - i <= n_max (the first T - n_max steps are skipped):
        if T - i > n_min:                                   # FlowEdit step
            v_delta = 0
            repeat n_avg times:
                noise  ~ N(0, I)                            # from the edit's generator
                z_src  = (1 - sigma_i) x_src + sigma_i noise
                z_tar  = z_edit + z_src - x_src
                v_src  = guide(u_src(z_src), c_src(z_src), src_cfg)
                v_tar  = guide(u_tar(z_tar), c_tar(z_tar), tar_cfg)
                v_delta += (v_tar - v_src) / n_avg
            z_edit = z_edit + (sigma_{i+1} - sigma_i) v_delta          (float32)
        else:                                               # the last n_min steps: plain sampling
            at the first such step: noise ~ N(0, I),
                x_tar = z_edit + (1 - sigma_i) x_src + sigma_i noise - x_src
            x_tar = x_tar + (sigma_{i+1} - sigma_i) guide(u_tar(x_tar), c_tar(x_tar), tar_cfg)
    result = x_tar if n_min > 0 else z_edit

Local edits: a mask m in [0, 1] on the latent grid (1 = may change; ``editing.masks`` brings a
person's mask there) restricts the two updates, and nothing else changes (same noise, same
transformer calls, same source velocities)::

    z_edit = z_edit + (sigma_{i+1} - sigma_i) (m * v_delta)          => z_edit = x_src where m = 0
    x_tar  = x_tar + (sigma_{i+1} - sigma_i) v_tar
    x_tar  = m x_tar + (1 - m) ((1 - sigma_{i+1}) x_src + sigma_{i+1} noise)   (plain steps: blend back
                                                                    to the source's noisy latent)

so where m = 0 the final latent is x_src exactly (sigma_T = 0), and m = 1 everywhere is the edit
above bit for bit (1 * v = v). With an automatic mask (``editing.masks.AutoMask``) m is not known at
the start: the first k FlowEdit steps run unmasked while their |v_delta| is recorded, m is found
from it, and those steps are masked after the fact, z_edit = x_src + m (z_edit - x_src), before the
k-th update; the rest runs as above.

u / c are the transformer's velocities with the negative / positive prompt. One loop serves every
model family; what differs (prompt encoding, the schedule, how one batched velocity is computed, the
latent layout) is an ``editing.family.ModelFamily`` in ``FAMILIES``, found from the transformer's
class: SD3 / SD3.5 (``editing.family.MMDiTFamily``) and FLUX.1 (``editing.flux.FluxFamily``). FLUX.1
is guidance-distilled: each branch is ONE prediction with its scale as a model input,
v_src = c_src(z_src; guidance = src_cfg) and v_tar = c_tar(z_tar; guidance = tar_cfg), one batched
call [c_src, c_tar] per step and sample (``Branch.distilled``). Classifier-free guidance (SD3):

* ``"standard"`` (default; the FlowEdit paper and code): ``guide(u, c, w) = u + w (c - u)``.
  w = 1 is the plain conditional velocity, so the unconditional branch is not computed at all.
* ``"authors"`` (SoftREPA's released ``edit_sd3.py``, for reproducing the paper's numbers): the
  *target* uses ``c + w (c - u)``, i.e. standard guidance with w + 1 (their "tar 9" is standard 10);
  the source keeps the standard form, as in their code. w = 0 then skips the unconditional branch.

Soft tokens (paper §3.2) are switched per transformer call by ``softrepa.hooks.AttachedTokens``;
they apply to every item of a call. ``Branch.tokens`` says which branch sees them: both branches
(the authors' setting, all four predictions) or the target only. Items that share the token state
go into one batched call, so the default is one call of [u_src, c_src, u_tar, c_tar] per step and
per n_avg sample; "target only" runs two calls of two (running source and target separately is
exact, where a per-item mask inside the hooks would need zero-length tokens per item).

Source velocities depend only on the source image, source prompts, src_cfg, the tokens state of the
source branch, T, n_avg and the noise (the seed, n_max and ``noise_offset``): never on the target. A
caller may give each candidate a table keyed by (step, sample) (``Candidate.velocities``); present
entries are reused (only the target half of the batch runs), missing ones are stored. Noise is
drawn identically either way, since z_tar needs it.

Several candidates run as one batch (``flowedit_candidates``): seeds (variations), strengths (n_max),
target scales and token states. A candidate of smaller n_max joins at its first step; candidates
whose noise and source branch agree at a step share one source velocity.

Differences from the public SD3 code (github.com/fallenshock/FlowEdit): n_min > 0 works (the public code crashes
on an undefined name; an older version turned those steps into no-ops); a CFG that needs no
unconditional branch skips it instead of breaking; the pipeline and its scheduler are never
mutated (the schedule comes from a fresh scheduler built from the pipeline's config).

Everything here is device- and dtype-neutral: latents, noise and the Euler update stay float32 on
the latent's device; the transformer gets its own dtype; noise comes from the caller's generator
(a CPU generator gives the same edit on every device).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, MutableMapping, Sequence

import numpy as np
import torch
from PIL import Image

from editing.family import MMDiTFamily, ModelFamily, PromptEmbeds, flowedit_schedule  # noqa: F401 (re-exported)
from editing.flux import FluxFamily
from editing.masks import AutoMask
from editing.params import GUIDANCE_MODES, TOKEN_BRANCHES, FlowEditParams, ParameterError  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (steps done, total steps)


# ----------------------------------------------------------------------------- parameters


class NonFiniteError(ValueError):
    """The edit's numbers overflowed (inf / NaN), with what to switch to: raised instead of returning
    the black picture an overflow would decode to."""


# ----------------------------------------------------------------------------- conditioning


# architecture name (softrepa.models.ARCHITECTURES) -> how FlowEdit drives that transformer family
FAMILIES: dict[str, ModelFamily] = {"mmdit": MMDiTFamily(), "flux": FluxFamily()}


def family_of(transformer: Any) -> ModelFamily:
    """The ``FAMILIES`` entry that drives ``transformer`` (by its class)."""
    for family in FAMILIES.values():
        if family.matches(transformer):
            return family
    names = ", ".join(f"{f.model_class_name} ({name})" for name, f in FAMILIES.items())
    raise ValueError(f"FlowEdit cannot drive a {type(transformer).__name__}; it edits with {names}")


@dataclass
class Branch:
    """One side (source or target) of the edit: its prompts, guidance and whether tokens apply.

    distilled: a guidance-distilled model (FLUX.1): one prediction per branch, ``cfg`` goes into the
    model as its guidance input (``_Request.guidance``); ``uncond`` is not used (may be None).
    """

    cond: PromptEmbeds
    uncond: PromptEmbeds | None
    cfg: float
    guidance: str = "standard"  # "standard": u + w (c - u); "authors": c + w (c - u)
    tokens: bool = False
    distilled: bool = False

    @property
    def needs_uncond(self) -> bool:
        # the scale at which guide() reduces to c: skip the unconditional prediction there
        return not self.distilled and self.cfg != (1.0 if self.guidance == "standard" else 0.0)

    def texts(self) -> list[PromptEmbeds]:
        """The prompts of this branch's batch items, in the order ``guide`` expects."""
        return [self.uncond, self.cond] if self.needs_uncond else [self.cond]

    def guide(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Guided velocity from the predictions of ``texts()`` (same order)."""
        if not self.needs_uncond:
            return outputs[0]
        u, c = outputs
        if self.guidance == "standard":
            return u + self.cfg * (c - u)
        return c + self.cfg * (c - u)  # SoftREPA's code: standard guidance at cfg + 1


def source_and_target(src_cond: PromptEmbeds, src_uncond: PromptEmbeds | None, tar_cond: PromptEmbeds,
                      tar_uncond: PromptEmbeds | None, params: FlowEditParams, use_tokens: bool,
                      distilled: bool = False) -> tuple[Branch, Branch]:
    """The two branches of an edit as ``params`` define them (guidance convention, token branches);
    ``distilled``: for a guidance-distilled family (``ModelFamily.distilled``; the unconds may be None)."""
    source = Branch(src_cond, src_uncond, float(params.src_cfg), "standard",
                    tokens=use_tokens and params.token_branches == "both", distilled=distilled)
    target = Branch(tar_cond, tar_uncond, float(params.tar_cfg), params.guidance, tokens=use_tokens,
                    distilled=distilled)
    return source, target


# ----------------------------------------------------------------------------- model pieces


def encode_prompt(pipe: Any, prompt: str, max_sequence_length: int = 256) -> PromptEmbeds:
    """Encode one prompt with the pipeline's public ``encode_prompt`` (all its text encoders), as its family does."""
    return family_of(pipe.transformer).encode_prompt(pipe, prompt, max_sequence_length)


def _vae_shift_scale(vae: Any) -> tuple[float, float]:
    shift = vae.config.shift_factor
    return (0.0 if shift is None else float(shift)), float(vae.config.scaling_factor)


@torch.no_grad()
def encode_image(vae: Any, image: Image.Image, device: torch.device | str | None = None) -> torch.Tensor:
    """RGB image (sides multiples of the model factor) -> x_src (1, C, H/f, W/f), float32.

    device: where the VAE runs (default: its weights' device; an offloaded pipeline's
    ``softrepa.models.execution_device``)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))  # (H, W, 3) in 0..255
    pixels = (pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) in [-1, 1]
    pixels = pixels.to(device=device or vae.device, dtype=vae.dtype)
    shift, scale = _vae_shift_scale(vae)
    latents = vae.encode(pixels).latent_dist.mode()  # the mode, not a sample: the source is deterministic
    return (latents.float() - shift) * scale


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor, device: torch.device | str | None = None) -> Image.Image:
    """Latents (1, C, h, w) -> RGB image; inverse of ``encode_image`` (``device`` as there).

    A VAE in float16 can overflow in its decoder (inf / NaN pixels, which a plain cast turns into a
    black picture). Then the latents are decoded once more by a float32 copy of the VAE (the
    pipeline's own VAE is left as it is); ``NonFiniteError`` if even that is not finite.
    """
    if not torch.isfinite(latents).all():
        raise NonFiniteError("the latents to decode are not finite (inf or NaN): nothing sensible can be decoded")
    shift, scale = _vae_shift_scale(vae)

    def decode(decoder: Any) -> torch.Tensor:
        z = (latents.float() / scale + shift).to(device=device or decoder.device, dtype=decoder.dtype)
        return decoder.decode(z).sample

    pixels = decode(vae)
    if not torch.isfinite(pixels).all() and vae.dtype != torch.float32:
        logger.warning("the VAE decode overflowed in %s; decoding again in float32", vae.dtype)
        pixels = decode(copy.deepcopy(vae).float().to(device or vae.device))
    if not torch.isfinite(pixels).all():
        raise NonFiniteError(f"the VAE decode gave inf or NaN pixels (VAE in {vae.dtype}, retried in float32): "
                             "the latents are out of the VAE's range; try another seed or lower the target CFG")
    pixels = ((pixels[0].float() + 1.0) * 127.5).round().clamp(0, 255)  # (3, H, W)
    return Image.fromarray(pixels.permute(1, 2, 0).to("cpu", torch.uint8).numpy(), mode="RGB")


# ----------------------------------------------------------------------------- the edit


@dataclass
class FlowEditOutput:
    latents: torch.Tensor  # (N, C, h, w) float32, one per candidate: z_edit, or x_tar when n_min > 0
    transformer_calls: int
    source_velocities_reused: int  # (step, sample) pairs whose v_src all came from the cache
    mask: torch.Tensor | None = None  # (1 or N, 1, h, w) float32: the latent mask used (given or found per candidate)


@dataclass
class Candidate:
    """One edit of a batched run: its own strength, branches and noise (``flowedit_candidates``).

    n_max: its editing steps; it joins the batch at its first one (T - i = n_max).
    source, target: its branches (guidance scales, tokens state; the prompts are the run's).
    generator: its noise; ``noise_offset`` draws are skipped before its first step.
    velocities: its v_src per (step, sample), (1, C, h, w), read and filled (None: not cached).
    """

    source: Branch
    target: Branch
    generator: torch.Generator
    n_max: int
    noise_offset: int = 0
    velocities: MutableMapping[tuple[int, int], torch.Tensor] | None = None


@dataclass
class _Request:
    latent: torch.Tensor  # (N, C, h, w) float32: one latent per candidate
    text: PromptEmbeds  # (1, n, D): the same prompt for every candidate
    tokens: bool
    guidance: float | None = None  # a distilled branch's scale, the model's guidance input


class _Denoiser:
    """Runs velocity requests on the transformer: one batched call per run of equal token state."""

    def __init__(self, transformer: Any, attached: Any | None, family: ModelFamily):
        self.transformer = transformer
        self.attached = attached
        self.family = family
        self.calls = 0

    def __call__(self, timestep: torch.Tensor, requests: list[_Request]) -> list[torch.Tensor]:
        """The predictions of ``requests``, in their order; requests are sent tokens-off first (a stable
        sort), so a run that mixes token states makes two calls whatever the order of its requests."""
        order = sorted(range(len(requests)), key=lambda q: requests[q].tokens)
        sent = [requests[q] for q in order]
        outputs: list[torch.Tensor] = []
        for _, group in itertools.groupby(sent, key=lambda r: r.tokens):  # consecutive runs, order kept
            outputs.extend(self._call(timestep, list(group)))
        answers: list[torch.Tensor] = [outputs[0]] * len(requests)
        for position, q in enumerate(order):
            answers[q] = outputs[position]
        return answers

    def _call(self, timestep: torch.Tensor, group: list[_Request]) -> list[torch.Tensor]:
        dtype, device = self.transformer.dtype, group[0].latent.device
        sizes = [r.latent.shape[0] for r in group]
        hidden = torch.cat([r.latent for r in group]).to(dtype)  # (B, C, h, w), B = sum of sizes
        text = torch.cat([r.text.embeds.expand(n, -1, -1) for r, n in zip(group, sizes)]).to(device, dtype)  # (B, n, D)
        pooled = torch.cat([r.text.pooled.expand(n, -1) for r, n in zip(group, sizes)]).to(device, dtype)  # (B, P)
        guidance = None
        if group[0].guidance is not None:  # distilled branches: each item's own scale, (B,) float32
            guidance = torch.cat([torch.full((n,), r.guidance, dtype=torch.float32) for r, n in zip(group, sizes)])
        switch = self.attached.switch(group[0].tokens) if self.attached is not None else contextlib.nullcontext()
        with switch:
            velocity = self.family.velocity(self.transformer, hidden, timestep, text, pooled, guidance)  # (B, C, h, w)
        self.calls += 1
        return list(velocity.float().split(sizes))


def _noise(generators: list[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w): one draw of ``like``'s shape (1, C, h, w) from each candidate's generator."""
    # drawn on the generator's device, so a CPU generator reproduces the same edit on any device
    return torch.cat([torch.randn(like.shape, generator=g, device=g.device, dtype=torch.float32)
                      for g in generators]).to(like.device)


def _check_mask(mask: torch.Tensor | AutoMask | None, x_src: torch.Tensor) -> torch.Tensor | AutoMask | None:
    """The latent mask as float32 on the latents' device, checked against ``x_src``'s grid."""
    if mask is None:
        return None
    if isinstance(mask, AutoMask):
        mask.check()
        return mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4 or mask.shape[:2] != (1, 1) \
            or mask.shape[2:] != x_src.shape[2:]:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"the latent mask must be (1, 1, {x_src.shape[2]}, {x_src.shape[3]}) to match x_src, got "
                         f"{shape} (editing.masks.latent_mask makes one from an image mask)")
    mask = mask.to(device=x_src.device, dtype=torch.float32)
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError("the latent mask must hold values in [0, 1] (1 = may change)")
    return mask


def flowedit_latents(transformer: Any, scheduler: Any, x_src: torch.Tensor, source: Branch, target: Branch,
                     params: FlowEditParams, generator: torch.Generator | Sequence[torch.Generator], *,
                     attached: Any | None = None, mask: torch.Tensor | AutoMask | None = None,
                     progress: ProgressCallback | None = None) -> FlowEditOutput:
    """Run FlowEdit from the source latents ``x_src`` (1, C, h, w); see the module docstring.

    transformer, scheduler: the pipeline's components (read only); the transformer's class picks the
        family (``family_of``): SD3 / SD3.5 or FLUX.1.
    generator: where the noise comes from; a list of N generators runs N candidates of the same edit
        in the batch dimension (one transformer call of 4N items per step and sample instead of N
        calls of 4): candidate j draws its noise from generator j exactly as a single edit would, so
        it equals the single edit with that generator (to batch-size rounding).
    attached: the ``AttachedTokens`` hooked into ``transformer``, required when a branch has tokens.
    mask: None (the whole image), a latent mask (1, 1, h, w) in [0, 1], or an ``AutoMask`` (one
        region per candidate).
    progress: called with (steps done, total) after each executed step; total = n_max.
    """
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    candidates = [Candidate(source, target, g, params.n_max, params.noise_offset) for g in generators]
    return flowedit_candidates(transformer, scheduler, x_src, params, candidates, attached=attached, mask=mask,
                               progress=progress)


def _check_candidates(family: ModelFamily, transformer: Any, params: FlowEditParams, candidates: list[Candidate],
                      attached: Any | None, x_src: torch.Tensor) -> None:
    if not candidates:
        raise ValueError("give one generator per candidate (got none)")
    for c in candidates:
        params.replace(n_max=c.n_max, noise_offset=c.noise_offset).check()  # a ParameterError names the field
        if c.source.distilled != family.distilled or c.target.distilled != family.distilled:
            raise ValueError(f"the branches were built for a {'' if c.source.distilled else 'non-'}guidance-distilled "
                             f"model but the transformer is a {type(transformer).__name__}: pass "
                             f"distilled={family.distilled} to source_and_target")
        if (c.source.tokens or c.target.tokens) and attached is None:
            raise ValueError("soft tokens requested for this edit but no tokens are attached to the transformer")
    if x_src.dim() != 4 or x_src.shape[0] != 1:
        raise ValueError(f"x_src must be one latent image (1, C, h, w), got shape {tuple(x_src.shape)}")


@torch.no_grad()
def flowedit_candidates(transformer: Any, scheduler: Any, x_src: torch.Tensor, params: FlowEditParams,
                        candidates: Sequence[Candidate], *, attached: Any | None = None,
                        mask: torch.Tensor | AutoMask | None = None,
                        progress: ProgressCallback | None = None) -> FlowEditOutput:
    """FlowEdit for several candidates in one batched run (``flowedit_latents`` is the case of one
    strength and one pair of branches). ``params`` gives T, n_min and n_avg (shared); each candidate
    its n_max, branches, noise and velocity table (``Candidate``). Candidate j equals the single edit
    with its settings (to batch-size rounding): it joins at its own first step and draws its noise as
    that edit would. Candidates whose noise at a step is the same (one seed, offsets lined up) and
    whose source branch is the same share one source velocity: the sweep of ``editing.auto`` costs
    the source half of the batch once. Returns latents in the candidates' order; progress counts the
    steps of the largest n_max.
    """
    params.check()
    family = family_of(transformer)
    family.check(params, transformer)
    candidates = list(candidates)
    _check_candidates(family, transformer, params, candidates, attached, x_src)
    T, n_min, n_avg = params.steps, params.n_min, params.n_avg
    x_src = x_src.float()
    mask = _check_mask(mask, x_src)
    finder = mask if isinstance(mask, AutoMask) else None
    if finder is not None and any(c.n_max == n_min for c in candidates):
        raise ValueError("the automatic mask is found from the FlowEdit steps, and n_min = n_max leaves none: "
                         "lower n_min")
    masks: list[torch.Tensor | None] = [None if finder is not None else mask] * len(candidates)
    for c in candidates:  # the stream each candidate's first step starts from
        for _ in range(c.noise_offset):
            torch.randn(x_src.shape, generator=c.generator, device=c.generator.device, dtype=torch.float32)
    timesteps, sigmas = family.schedule(scheduler, T, tuple(x_src.shape), device=x_src.device)
    denoise = _Denoiser(transformer, attached, family)
    state = _State(z_edit=x_src.repeat(len(candidates), 1, 1, 1), masks=masks, finder=finder,
                   evidence=[[] for _ in candidates])
    total, done = max(c.n_max for c in candidates), 0
    for i in range(T):
        active = [j for j, c in enumerate(candidates) if T - i <= c.n_max]
        if not active:
            continue
        t, sigma, sigma_next = timesteps[i], sigmas[i], sigmas[i + 1]
        if T - i > n_min:
            _flowedit_step(state, denoise, t, sigma, sigma_next, x_src, candidates, active, n_avg, i,
                           last=T - i - 1 == n_min)
        else:
            _plain_step(state, denoise, t, sigma, sigma_next, x_src, candidates)
        done += 1
        _check_finite(state.x_tar if state.x_tar is not None else state.z_edit, done, total, transformer.dtype)
        if progress is not None:
            progress(done, total)
    found = None if all(m is None for m in state.masks) else torch.cat(
        [m if m is not None else torch.ones_like(x_src[:, :1]) for m in state.masks])
    if found is not None and finder is None:
        found = mask
    return FlowEditOutput(latents=state.x_tar if state.x_tar is not None else state.z_edit,
                          transformer_calls=denoise.calls, source_velocities_reused=state.reused, mask=found)


@dataclass
class _State:
    z_edit: torch.Tensor  # (N, C, h, w) float32
    masks: list[torch.Tensor | None]  # per candidate (1, 1, h, w), None: unmasked (so far)
    finder: AutoMask | None
    evidence: list[list[torch.Tensor]]  # per candidate: its steps' AutoMask.score maps (1, 1, h, w)
    x_tar: torch.Tensor | None = None  # (N, C, h, w): set when the last n_min steps start
    noise_plain: torch.Tensor | None = None  # the noise of the plain-sampling steps
    reused: int = 0


def _masked(masks: list[torch.Tensor | None], rows: list[int], v: torch.Tensor) -> torch.Tensor:
    """``v`` (A, C, h, w) of candidates ``rows`` times their masks (unchanged where all are None)."""
    if all(masks[j] is None for j in rows):
        return v
    return torch.cat([masks[j] if masks[j] is not None else torch.ones_like(v[:1, :1]) for j in rows]) * v


def _flowedit_step(state: _State, denoise: _Denoiser, t: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                   x_src: torch.Tensor, candidates: list[Candidate], active: list[int], n_avg: int, i: int,
                   last: bool) -> None:
    """One FlowEdit step of the ``active`` candidates: z_edit += (sigma_next - sigma) m v_delta."""
    rows = torch.tensor(active)
    v_delta, hits = _velocity_difference(denoise, t, sigma, x_src, state.z_edit[rows], [candidates[j] for j in active],
                                         n_avg, i)
    state.reused += hits
    if state.finder is not None:
        for r, j in enumerate(active):
            if state.masks[j] is not None:
                continue
            state.evidence[j].append(state.finder.score(v_delta[r:r + 1]))
            if len(state.evidence[j]) == state.finder.steps or last:  # enough evidence, or the last such step
                state.masks[j] = state.finder.find(state.evidence[j])  # (1, 1, h, w)
                state.z_edit[j] = x_src[0] + state.masks[j][0] * (state.z_edit[j] - x_src[0])  # masked after the fact
    update = state.z_edit[rows] + (sigma_next - sigma) * _masked(state.masks, active, v_delta)
    if len(active) == len(candidates):
        state.z_edit = update
    else:
        state.z_edit[rows] = update


def _plain_step(state: _State, denoise: _Denoiser, t: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                x_src: torch.Tensor, candidates: list[Candidate]) -> None:
    """One of the last n_min steps (every candidate is active then): plain target sampling."""
    if state.x_tar is None:  # first plain-sampling step: put the edit at this noise level
        state.noise_plain = _noise([c.generator for c in candidates], x_src)  # (N, C, h, w)
        x_src_t = (1 - sigma) * x_src + sigma * state.noise_plain
        state.x_tar = state.z_edit + x_src_t - x_src
    v_tar = _guided_targets(denoise, t, state.x_tar, candidates)
    x_tar = state.x_tar + (sigma_next - sigma) * v_tar
    if any(m is not None for m in state.masks):  # outside the mask: the source, noised to the next level
        m = torch.cat([m if m is not None else torch.ones_like(x_src[:, :1]) for m in state.masks])
        x_tar = m * x_tar + (1 - m) * ((1 - sigma_next) * x_src + sigma_next * state.noise_plain)
    state.x_tar = x_tar


def _check_finite(z: torch.Tensor, done: int, n_max: int, dtype: torch.dtype) -> None:
    """Stop at the first step whose latents are not finite, saying which dtype overflowed."""
    if torch.isfinite(z).all():
        return
    if dtype in (torch.float16, torch.bfloat16):
        advice = ("float16 overflowed: load the model in bfloat16 (--dtype bfloat16) or float32"
                  if dtype == torch.float16 else "switch to float32 (--dtype float32)")
    else:
        advice = "the model itself produced them (check its weights, or lower the CFG scales)"
    raise NonFiniteError(f"the edit's latents became inf or NaN at editing step {done} of {n_max} with the "
                         f"transformer in {str(dtype).replace('torch.', '')}: {advice}. Stopped instead of "
                         "returning a black image.")


def _requests(branch: Branch, z: torch.Tensor) -> list[_Request]:
    guidance = branch.cfg if branch.distilled else None
    return [_Request(z, text, branch.tokens, guidance) for text in branch.texts()]


def _by_branch(branches: list[Branch]) -> list[tuple[Branch, list[int]]]:
    """(branch, the rows that use it) for each distinct branch object, in first-use order."""
    groups: dict[int, tuple[Branch, list[int]]] = {}
    for row, branch in enumerate(branches):
        groups.setdefault(id(branch), (branch, []))[1].append(row)
    return list(groups.values())


def _target_requests(z_tar: torch.Tensor, targets: list[Branch]) -> tuple[list[_Request], list]:
    """The requests of the target predictions of rows ``z_tar`` (A, C, h, w), one run per target branch,
    and how to guide their answers (``_guide_rows``)."""
    requests, plan = [], []
    for branch, rows in _by_branch(targets):
        branch_requests = _requests(branch, z_tar if len(rows) == len(targets) else z_tar[rows])
        plan.append((branch, rows, len(requests), len(branch_requests)))
        requests.extend(branch_requests)
    return requests, plan


def _guide_rows(outputs: list[torch.Tensor], plan: list, like: torch.Tensor) -> torch.Tensor:
    """The guided velocity per row (A, C, h, w) from the answers to ``_target_requests``' requests."""
    if len(plan) == 1:
        branch, _, first, count = plan[0]
        return branch.guide(outputs[first:first + count])
    guided = torch.empty_like(like)
    for branch, rows, first, count in plan:
        guided[rows] = branch.guide(outputs[first:first + count])
    return guided


def _guided_targets(denoise: _Denoiser, t: torch.Tensor, z_tar: torch.Tensor, candidates: list[Candidate]
                    ) -> torch.Tensor:
    requests, plan = _target_requests(z_tar, [c.target for c in candidates])
    return _guide_rows(denoise(t, requests), plan, z_tar)


def _shared_sources(noise: torch.Tensor, candidates: list[Candidate]) -> list[int]:
    """For each row, the first row with the same source branch and the same noise (itself if none)."""
    first: list[int] = []
    for row, c in enumerate(candidates):
        first.append(next((q for q in range(row) if first[q] == q and candidates[q].source is c.source
                           and torch.equal(noise[q], noise[row])), row))
    return first


def _velocity_difference(denoise: _Denoiser, t: torch.Tensor, sigma: torch.Tensor, x_src: torch.Tensor,
                         z_edit: torch.Tensor, candidates: list[Candidate], n_avg: int, i: int
                         ) -> tuple[torch.Tensor, int]:
    """(v_delta of step i for the rows ``z_edit`` (A, C, h, w) averaged over n_avg noise samples,
    samples whose v_src all came from the cache). Rows sharing a source (``_shared_sources``) compute
    it once; one transformer call per token state holds [u_src, c_src, u_tar, c_tar] of every row."""
    v_delta = torch.zeros_like(z_edit)  # (A, C, h, w)
    reused = 0
    for k in range(n_avg):
        noise = _noise([c.generator for c in candidates], x_src)
        z_src = (1 - sigma) * x_src + sigma * noise
        z_tar = z_edit + z_src - x_src
        shared = _shared_sources(noise, candidates)
        known = {q: c.velocities.get((i, k)) for q, c in enumerate(candidates)
                 if shared[q] == q and c.velocities is not None and (i, k) in c.velocities}
        computed = [q for q in range(len(candidates)) if shared[q] == q and q not in known]
        src_requests, src_plan = _target_requests(z_src[computed], [candidates[q].source for q in computed]) \
            if computed else ([], [])
        tar_requests, tar_plan = _target_requests(z_tar, [c.target for c in candidates])
        outputs = denoise(t, src_requests + tar_requests)  # [u_src, c_src, u_tar, c_tar] of each branch
        if computed:
            v_new = _guide_rows(outputs[:len(src_requests)], src_plan, z_src[computed])
            known.update({q: v_new[r:r + 1] for r, q in enumerate(computed)})
            for row, c in enumerate(candidates):  # a copy: never keep a view of the whole batch alive
                if c.velocities is not None and shared[row] in computed:
                    c.velocities[(i, k)] = known[shared[row]].clone()
        else:
            reused += 1
        v_src = v_new if computed and len(computed) == len(candidates) else \
            torch.cat([known[shared[q]] for q in range(len(candidates))])
        v_tar = _guide_rows(outputs[len(src_requests):], tar_plan, z_tar)
        v_delta += (v_tar - v_src) / n_avg
    return v_delta, reused
