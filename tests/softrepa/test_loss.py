"""SoftREPA loss (Eq. 9-14) and the pair machinery: hand-computed values, objectives, and the
chunked gradient against the naive one on tiny SD3 / SD1.5 / SDXL in float64."""

import math

import pytest
import torch

from softrepa.cache import encode_prompts
from softrepa.hooks import attach_tokens
from softrepa.loss import DiffusionObjective, LossConfig, softrepa_loss, tau_of_t
from softrepa.models import get_kind
from softrepa.pairs import PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward
from softrepa.tiny import tiny_pipeline
from softrepa.tokens import new_tokens

# ----------------------------------------------------------------------------- the loss itself


def test_loss_matches_hand_computation():
    err = torch.tensor([[0.10, 0.30, 0.20],
                        [0.25, 0.05, 0.40],
                        [0.50, 0.20, 0.30]], dtype=torch.float64)
    scale, tau, dweight = 4.0, 0.07, 10.0
    out = softrepa_loss(err, tau, scale=scale, dweight=dweight)

    contrastive = 0.0
    for i in range(3):
        logits = [scale * math.exp(-err[i, j].item() / tau) for j in range(3)]
        contrastive += -(logits[i] - math.log(sum(math.exp(l) for l in logits))) / 3
    denoising = (0.10 + 0.05 + 0.30) / 3
    assert out.contrastive.item() == pytest.approx(contrastive, rel=1e-12)
    assert out.denoising.item() == pytest.approx(denoising, rel=1e-12)
    assert out.loss.item() == pytest.approx(contrastive + dweight * denoising, rel=1e-12)
    assert out.accuracy.item() == pytest.approx(2 / 3)  # row 2: caption 1 (0.20) beats its own (0.30)
    assert out.logits[0, 1].item() == pytest.approx(scale * math.exp(-0.30 / tau), rel=1e-12)


def test_loss_with_gathered_captions_uses_positives():
    # 2 local images against 4 gathered captions; this process's captions are columns 2 and 3
    err = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.6, 0.9, 0.8, 0.2]], dtype=torch.float64)
    out = softrepa_loss(err, 0.5, scale=2.0, positives=torch.tensor([2, 3]))
    expected = 0.0
    for i, pos in enumerate((2, 3)):
        logits = [2.0 * math.exp(-e / 0.5) for e in err[i].tolist()]
        expected -= (logits[pos] - math.log(sum(math.exp(l) for l in logits))) / 2
    assert out.contrastive.item() == pytest.approx(expected, rel=1e-12)
    assert out.denoising.item() == pytest.approx((0.1 + 0.2) / 2)
    assert out.accuracy.item() == 1.0
    with pytest.raises(ValueError, match="positives"):
        softrepa_loss(err.T, 0.5)  # 4 images, 2 captions, no positives: ambiguous


def test_accuracy_survives_underflow_and_ties():
    # err / tau = 100+: every logit underflows to 0, yet the diagonal still wins on err
    err = torch.tensor([[7.0, 7.5], [7.5, 7.0]])
    assert softrepa_loss(err, 0.07).accuracy.item() == 1.0
    # identical captions tie: a miss, not a lucky argmax
    assert softrepa_loss(torch.ones(2, 2), 0.07).accuracy.item() == 0.0


def test_time_dependent_tau():
    config = LossConfig(tau=0.05, tau_schedule="linear", tau_end=0.25)
    tau = tau_of_t(torch.tensor([0, 500, 1000]), config)
    assert tau.tolist() == pytest.approx([0.05, 0.15, 0.25])
    assert tau_of_t(torch.tensor([3, 999]), LossConfig()).tolist() == [0.07, 0.07]
    err = torch.tensor([[0.1, 0.2], [0.3, 0.1]], dtype=torch.float64)
    out = softrepa_loss(err, torch.tensor([0.1, 0.4], dtype=torch.float64))
    row0 = [4 * math.exp(-0.1 / 0.1), 4 * math.exp(-0.2 / 0.1)]
    row1 = [4 * math.exp(-0.3 / 0.4), 4 * math.exp(-0.1 / 0.4)]
    expected = -((row0[0] - math.log(sum(map(math.exp, row0)))) + (row1[1] - math.log(sum(map(math.exp, row1))))) / 2
    assert out.contrastive.item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="tau_end"):
        LossConfig(tau_schedule="linear")
    with pytest.raises(ValueError, match="tau_schedule"):
        LossConfig(tau_schedule="cosine")


def test_objectives_flow_epsilon_v():
    from diffusers import DDPMScheduler

    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([250, 750])
    flow = DiffusionObjective("flow")
    sigma = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    assert torch.allclose(flow.noisy(x0, eps, t), (1 - sigma) * x0 + sigma * eps)
    assert torch.equal(flow.target(x0, eps, t), eps - x0)  # Eq. 11

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="v_prediction")
    v = DiffusionObjective("v_prediction", scheduler)
    assert torch.equal(v.target(x0, eps, t), scheduler.get_velocity(x0, eps, t))
    assert torch.equal(v.noisy(x0, eps, t), scheduler.add_noise(x0, eps, t))
    assert torch.equal(DiffusionObjective("epsilon", scheduler).target(x0, eps, t), eps)  # Eq. 10
    with pytest.raises(ValueError, match="unsupported prediction type"):
        DiffusionObjective("velocity", scheduler)

    sd15 = tiny_pipeline("sd15")
    assert DiffusionObjective.for_pipeline(sd15, "unet").prediction_type == "epsilon"
    sd15.scheduler.register_to_config(prediction_type="v_prediction")
    assert DiffusionObjective.for_pipeline(sd15, "unet").prediction_type == "v_prediction"


def test_shared_noise_by_default():
    objective = DiffusionObjective("flow")
    latents = torch.zeros(3, 4, 2, 2)
    shared = draw_noise(latents, objective, torch.Generator().manual_seed(0))
    assert shared.timesteps.unique().numel() == 1
    assert torch.equal(shared.eps[0], shared.eps[2])
    own = draw_noise(latents, objective, torch.Generator().manual_seed(0), per_sample_t=True, per_sample_noise=True)
    assert not torch.equal(own.eps[0], own.eps[2])


# ----------------------------------------------------------------------------- chunked == naive


def _pair_setup(kind: str, n_img: int, n_txt: int):
    """A float64 tiny pipeline with tokens attached, and a batch of n_img latents x n_txt captions."""
    pipe = tiny_pipeline(kind)
    arch = get_kind(kind).arch
    captions = ["a red image", "a blue square", "two green dogs", "a yellow house"][:n_txt]
    text = encode_prompts(pipe, captions, "cpu", max_sequence_length=8)
    text = {k: v.double() for k, v in text.items() if k in ("prompt_embeds", "pooled_prompt_embeds")}
    denoiser = pipe.transformer if arch == "mmdit" else pipe.unet
    denoiser.double().requires_grad_(False)
    tokens = new_tokens(pipe, kind, num_layers=2) if arch == "mmdit" else new_tokens(pipe, kind)
    with torch.no_grad():  # visible tokens: larger than the N(0, 0.02) init
        tokens.static.normal_(std=0.5)
    tokens.double()
    attach_tokens(pipe, tokens)
    latents = torch.randn(n_img, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    image_cond = {}
    if getattr(denoiser.config, "addition_embed_type", None) == "text_time":
        image_cond["time_ids"] = torch.tensor([[16, 16, 0, 0, 16, 16]] * n_img, dtype=torch.float64)
    return pipe, arch, denoiser, tokens, PairBatch(latents, text, image_cond)


def _gradients(denoiser, arch, tokens, objective, batch, noise, config, chunk, positives=None):
    tokens.zero_grad(set_to_none=True)
    scorer = PairScorer(denoiser, arch, objective, batch, noise)
    out = pair_loss_backward(scorer, make_loss_fn(config, noise, positives), chunk)
    return out, torch.cat([p.grad.flatten() for p in tokens.parameters() if p.grad is not None])


@pytest.mark.parametrize("kind", ["sd3", "sd15"])
def test_chunked_gradient_equals_naive(kind):
    pipe, arch, denoiser, tokens, batch = _pair_setup(kind, 3, 3)
    objective = DiffusionObjective.for_pipeline(pipe, arch)
    noise = draw_noise(batch.latents, objective, torch.Generator().manual_seed(1))
    config = LossConfig(tau=0.5, dweight=2.0)  # a tau where the logits are not flat, plus the diag term
    naive_out, naive = _gradients(denoiser, arch, tokens, objective, batch, noise, config, chunk=0)
    assert naive.norm() > 0
    # chunks 2, 4, 5 cut rows apart (B_txt = 3): equality shows no softmax cross-term is lost
    for chunk in (2, 4, 5, 9):  # 9 = all pairs: takes the naive path
        out, grad = _gradients(denoiser, arch, tokens, objective, batch, noise, config, chunk)
        assert out.loss.item() == pytest.approx(naive_out.loss.item(), rel=1e-12)
        rel = ((grad - naive).norm() / naive.norm()).item()
        assert rel <= 1e-6, f"chunk {chunk}: relative gradient difference {rel}"


def test_chunked_gradient_sdxl_gathered_per_sample_t():
    """SDXL (added_cond_kwargs), 2 local images against 3 captions (gathered layout), per-image t."""
    pipe, arch, denoiser, tokens, batch = _pair_setup("sdxl", 2, 3)
    batch.positives = torch.tensor([1, 2])
    objective = DiffusionObjective.for_pipeline(pipe, arch)
    noise = draw_noise(batch.latents, objective, torch.Generator().manual_seed(2), per_sample_t=True,
                       per_sample_noise=True)
    config = LossConfig(tau=0.5, tau_schedule="linear", tau_end=1.0, dweight=10.0)
    naive_out, naive = _gradients(denoiser, arch, tokens, objective, batch, noise, config, 0, batch.positives)
    for chunk in (4, 5):
        out, grad = _gradients(denoiser, arch, tokens, objective, batch, noise, config, chunk, batch.positives)
        assert out.loss.item() == pytest.approx(naive_out.loss.item(), rel=1e-12)
        assert ((grad - naive).norm() / naive.norm()).item() <= 1e-6


def test_nonfinite_loss_skips_backward():
    pipe, arch, denoiser, tokens, batch = _pair_setup("sd15", 2, 2)
    batch.latents[0, 0, 0, 0] = float("nan")
    objective = DiffusionObjective.for_pipeline(pipe, arch)
    noise = draw_noise(batch.latents, objective, torch.Generator().manual_seed(0))
    for chunk in (0, 2):
        tokens.zero_grad(set_to_none=True)
        out = pair_loss_backward(PairScorer(denoiser, arch, objective, batch, noise),
                                 make_loss_fn(LossConfig(), noise, None), chunk)
        assert not torch.isfinite(out.loss)
        assert all(p.grad is None for p in tokens.parameters())


# ----------------------------------------------------------------------------- prompt tuning (cweight 0)


def test_cweight_weights_the_contrastive_term():
    err = torch.tensor([[0.10, 0.30, 0.20], [0.25, 0.15, 0.40]], dtype=torch.float64)
    full = softrepa_loss(err, 0.2, dweight=3.0)
    half = softrepa_loss(err, 0.2, dweight=3.0, cweight=0.5)
    assert half.loss.item() == pytest.approx(0.5 * full.contrastive.item() + 3.0 * full.denoising.item(), rel=1e-12)
    tuning = softrepa_loss(err, 0.2, dweight=3.0, cweight=0.0)
    assert tuning.loss.item() == pytest.approx(3.0 * (0.10 + 0.15) / 2, rel=1e-12)  # plain denoising loss
    with pytest.raises(ValueError, match="cweight must be >= 0"):
        LossConfig(cweight=-1.0)
    with pytest.raises(ValueError, match="needs dweight > 0"):
        LossConfig(cweight=0.0, dweight=0.0)


@pytest.mark.parametrize("chunk", [0, 1])
def test_prompt_tuning_runs_positives_only_and_equals_plain_denoising(chunk):
    """cweight 0: the loss is dweight * mean_i ||model(x_t_i, y_i) - target_i||^2 (written out here
    with one denoiser call per image), its gradient equals the full B x 2B matrix path's, and only
    the B_img positive pairs are forwarded."""
    pipe, arch, denoiser, tokens, batch = _pair_setup("sd3", 2, 4)
    batch.positives = torch.tensor([1, 3])
    objective = DiffusionObjective.for_pipeline(pipe, arch)
    noise = draw_noise(batch.latents, objective, torch.Generator().manual_seed(5), per_sample_t=True,
                       per_sample_noise=True)
    config = LossConfig(tau=0.5, dweight=10.0, cweight=0.0)
    reference = 0.0
    for i, j in enumerate(batch.positives.tolist()):
        x0, eps, t = batch.latents[i:i + 1], noise.eps[i:i + 1], noise.timesteps[i:i + 1]
        sigma = t.double().view(1, 1, 1, 1) / 1000
        pred = denoiser(hidden_states=(1 - sigma) * x0 + sigma * eps, timestep=t.float(),
                        encoder_hidden_states=batch.text["prompt_embeds"][j:j + 1],
                        pooled_projections=batch.text["pooled_prompt_embeds"][j:j + 1]).sample
        reference += 10.0 * ((pred - (eps - x0)) ** 2).mean().item() / 2

    calls = []
    hook = denoiser.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    fast_out, fast = _gradients(denoiser, arch, tokens, objective, batch, noise, config, chunk, batch.positives)
    hook.remove()
    assert fast_out.loss.item() == pytest.approx(reference, rel=1e-10)
    assert math.isnan(fast_out.contrastive.item()) and math.isnan(fast_out.accuracy.item())

    tokens.zero_grad(set_to_none=True)  # the full matrix path with the same loss
    loss_fn = make_loss_fn(config, noise, batch.positives)
    loss_fn.positives_only = False
    full_out = pair_loss_backward(PairScorer(denoiser, arch, objective, batch, noise), loss_fn, chunk)
    full = torch.cat([p.grad.flatten() for p in tokens.parameters() if p.grad is not None])
    assert full_out.loss.item() == pytest.approx(reference, rel=1e-10)
    assert full.norm() > 0 and ((fast - full).norm() / full.norm()).item() <= 1e-8
    # chunk 0: one forward of the 2 positives (not 8 pairs); chunk 1: the chunked path's two passes, a
    # no-grad forward of the first positive, the last one's with its graph (reused), the first's again
    assert len(calls) == (1 if chunk == 0 else 3)
