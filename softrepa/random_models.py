"""Random-weight pipelines at the published sizes (or tiny widths), a seconds / peak-memory meter and one
timed SoftREPA training step: what the real-size benchmarks build and measure with
(``benchmarks/real_scale.py``, ``benchmarks/gpu_suite.py``).

Nothing is downloaded. Each pipeline is built from the published configs (docs: REFERENCE.md section
8): the transformer (SD3-medium, SD3.5-large, FLUX.1-dev), CLIP-L/14 (and OpenCLIP bigG/14 for SD3),
the T5 v1.1 XXL encoder, the 16-channel VAE. Random weights cost what the real ones cost; they do not
make the same images. SD3's three encoders read CLIP's tokenizer (built offline; T5's embedding table
is widened to CLIP's 49,408 entries, 0.3 % more T5 weights than the real 32,128); FLUX's T5 reads the
T5-format tokenizer of ``softrepa.tiny`` (32,128 entries, as the real one).

``build_pipeline(..., device=, dtype=)`` creates every weight where it will run and in its dtype (a
12 B FLUX transformer is never held in float32 or on the CPU), one component at a time.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from softrepa.known_warnings import quiet_known_warnings
from softrepa.models import LOADED_KIND_ATTR, execution_device, get_kind


@dataclass(frozen=True)
class Widths:
    """The encoder and VAE sizes of one scale."""

    clip_l: tuple[int, int, int]  # hidden, layers, heads
    clip_g: tuple[int, int, int]
    t5: tuple[int, int, int, int]  # d_model, layers, heads, d_ff
    vae_blocks: tuple[int, ...]
    vae_sample_size: int  # the VAE's tile size when tiling is on (the published 1024)
    head_dim: int  # SD3's attention head width


REAL = Widths(clip_l=(768, 12, 12), clip_g=(1280, 32, 20), t5=(4096, 24, 64, 10240), vae_blocks=(128, 256, 512, 512),
              vae_sample_size=1024, head_dim=64)
SMALL = Widths(clip_l=(32, 1, 2), clip_g=(32, 1, 2), t5=(64, 1, 2, 128), vae_blocks=(8, 8, 8, 8), vae_sample_size=32,
               head_dim=16)
SCALES = {"real": REAL, "tiny": SMALL}


@dataclass(frozen=True)
class PublishedModel:
    """One model: its name in tables, its kind (``softrepa.kinds.KINDS``), and its transformer's config
    at the published size and at tiny size (what the widths above do not give)."""

    label: str
    kind: str
    arch: str  # "mmdit" (SD3 family) or "flux"
    real: dict = field(default_factory=dict)
    tiny: dict = field(default_factory=dict)

    def transformer_config(self, scale: str) -> dict:
        return dict(self.real if scale == "real" else self.tiny)


MODELS: dict[str, PublishedModel] = {
    "sd3-medium": PublishedModel("SD3-medium", "sd3", "mmdit",
                                 real=dict(num_layers=24, num_attention_heads=24, pos_embed_max_size=192),
                                 tiny=dict(num_layers=2, num_attention_heads=2, pos_embed_max_size=32)),
    "sd3.5-large": PublishedModel("SD3.5-large", "sd3.5-large", "mmdit",
                                  real=dict(num_layers=38, num_attention_heads=38, pos_embed_max_size=192,
                                            qk_norm="rms_norm"),
                                  tiny=dict(num_layers=2, num_attention_heads=2, pos_embed_max_size=32,
                                            qk_norm="rms_norm")),
    "flux-dev": PublishedModel("FLUX.1-dev", "flux-dev", "flux",
                               real=dict(num_layers=19, num_single_layers=38, num_attention_heads=24,
                                         attention_head_dim=128, axes_dims_rope=(16, 56, 56)),
                               tiny=dict(num_layers=2, num_single_layers=2, num_attention_heads=2,
                                         attention_head_dim=16, axes_dims_rope=(4, 6, 6))),
}


@contextlib.contextmanager
def creating(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """New tensors are made on ``device`` in ``dtype`` (then put back as they were)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Buffers made in float32 follow the weights' dtype; frozen, as in editing and training. (torch's own
    ``to``: diffusers' warns about modules to keep in float32, which only ``from_pretrained`` knows.)"""
    return torch.nn.Module.to(module, dtype).eval().requires_grad_(False)


def _clip(widths: tuple[int, int, int], projection: bool) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from softrepa.tiny import CLIP_VOCAB_SIZE

    hidden, layers, heads = widths
    config = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=4 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, projection_dim=hidden,
                            max_position_embeddings=77, hidden_act="gelu")
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(widths: Widths, vocab_size: int) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    d_model, layers, heads, d_ff = widths.t5
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, num_layers=layers, num_heads=heads,
                                   d_ff=d_ff, d_kv=d_model // heads, feed_forward_proj="gated-gelu"))


def _vae(widths: Widths, shift: float, scaling: float) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=widths.vae_blocks,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=2, norm_num_groups=min(32, widths.vae_blocks[0]), shift_factor=shift,
                         scaling_factor=scaling, sample_size=widths.vae_sample_size, use_quant_conv=False,
                         use_post_quant_conv=False)


def _sd3_components(widths: Widths, shape: dict, with_t5: bool) -> dict[str, Callable]:
    from diffusers import SD3Transformer2DModel

    from softrepa.tiny import CLIP_VOCAB_SIZE

    width = shape["num_attention_heads"] * widths.head_dim
    return {
        "transformer": lambda: SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=widths.head_dim,
            joint_attention_dim=widths.t5[0], caption_projection_dim=width,
            pooled_projection_dim=widths.clip_l[0] + widths.clip_g[0], **shape),
        "text_encoder": lambda: _clip(widths.clip_l, projection=True),
        "text_encoder_2": lambda: _clip(widths.clip_g, projection=True),
        "text_encoder_3": (lambda: _t5(widths, CLIP_VOCAB_SIZE)) if with_t5 else (lambda: None),
        "vae": lambda: _vae(widths, shift=0.0609, scaling=1.5305),
    }


def _flux_components(widths: Widths, shape: dict) -> dict[str, Callable]:
    from diffusers import FluxTransformer2DModel

    from softrepa.tiny import T5_VOCAB_SIZE

    return {
        "transformer": lambda: FluxTransformer2DModel(patch_size=1, in_channels=64, joint_attention_dim=widths.t5[0],
                                                      pooled_projection_dim=widths.clip_l[0], guidance_embeds=True,
                                                      **shape),
        "text_encoder": lambda: _clip(widths.clip_l, projection=False),
        "text_encoder_2": lambda: _t5(widths, T5_VOCAB_SIZE),
        "vae": lambda: _vae(widths, shift=0.1159, scaling=0.3611),
    }


def _assemble(model: PublishedModel, components: dict[str, Any]):
    """The diffusers pipeline of ``model``'s family around built components, with its tokenizers and scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    from softrepa.tiny import clip_tokenizer, t5_tokenizer

    tokenizer = clip_tokenizer()
    if model.arch == "flux":  # FLUX.1-dev's published scheduler: resolution-dependent shift
        scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                                                    max_shift=1.15, use_dynamic_shifting=True, shift=3.0)
        return FluxPipeline(scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=t5_tokenizer(get_kind(
            model.kind).max_sequence_length), **components)
    t5 = components["text_encoder_3"] is not None
    return StableDiffusion3Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), tokenizer=tokenizer,
                                    tokenizer_2=tokenizer, tokenizer_3=tokenizer if t5 else None, **components)


def build_pipeline(name: str, scale: str = "real", with_t5: bool = True, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, seed: int = 0):
    """``MODELS[name]``'s pipeline of random weights at the published (or tiny) sizes, frozen, on
    ``device`` in ``dtype``, its kind recorded (``softrepa.models.pipeline_kind``), progress bars off.

    with_t5: False builds an SD3-family pipeline without T5 (FLUX always has it: its text stream is T5's).
    """
    quiet_known_warnings()  # before diffusers imports the pipelines' modules
    model, widths = MODELS[name], SCALES[scale]
    shape = model.transformer_config(scale)
    makers = _flux_components(widths, shape) if model.arch == "flux" else _sd3_components(widths, shape, with_t5)
    torch.manual_seed(seed)
    components = {}
    for part, make in makers.items():  # one at a time, each made where and how it will run
        with creating(device, dtype):
            built = make()
        components[part] = None if built is None else _frozen(built, dtype)
    pipe = _assemble(model, components)
    setattr(pipe, LOADED_KIND_ATTR, model.kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def token_layers(pipe: Any) -> int:
    """Soft-token layers for the benchmarks: the paper's SD3 setting, m 4 on the first 7 blocks; FLUX's
    default, the first 5 double-stream blocks (fewer on a tiny model)."""
    flux = type(pipe.transformer).__name__.startswith("Flux")
    return min(5 if flux else 7, len(pipe.transformer.transformer_blocks) - 1)


class Meter:
    """Seconds and peak memory (GB) of a block: CUDA's allocator peak, or the CPU's RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(seconds, peak GB) of ``fn()``: on CUDA the allocator's peak (weights included), on the CPU
        the process's resident-set peak (weights included)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        self._sync()
        start = time.perf_counter()
        fn()
        self._sync()
        seconds = time.perf_counter() - start
        if self.device.type == "cuda":
            return seconds, torch.cuda.max_memory_allocated(self.device) / 2**30
        return seconds, _status_kb("VmHWM") / 2**20


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {name} (Linux only)")


def _pair_scorer_parts(pipe: Any, kind: str):
    """(denoiser that ``softrepa.pairs`` calls, its call convention, the objective, text length)."""
    from softrepa.flux import PAIR_CALL, FluxDenoiser, flux_objective, training_guidance
    from softrepa.loss import DiffusionObjective

    spec = get_kind(kind)
    if spec.arch == "flux":
        denoiser = FluxDenoiser(pipe.transformer, training_guidance(kind, pipe.transformer))
        return denoiser, PAIR_CALL, flux_objective(), spec.max_sequence_length
    return pipe.transformer, "mmdit", DiffusionObjective("flow"), 77 + spec.max_sequence_length  # CLIP + T5


def measure_training(pipe: Any, kind: str, batch: int, resolution: int, pair_chunk: int, meter: Meter,
                     warm_up: bool = True) -> tuple[float, float]:
    """(seconds, peak GB) of one SoftREPA step with chunked pairs (forward + backward of B^2 pairs) on
    random latents and text features of the model's shapes; ``warm_up`` runs one untimed step first."""
    from softrepa.hooks import attach_tokens
    from softrepa.loss import LossConfig
    from softrepa.pairs import PairBatch, PairScorer, draw_noise, make_loss_fn, pair_loss_backward
    from softrepa.tokens import new_tokens

    transformer, device = pipe.transformer, execution_device(pipe)
    denoiser, call, objective, text_length = _pair_scorer_parts(pipe, kind)
    tokens = new_tokens(pipe, kind, num_layers=token_layers(pipe))
    generator = torch.Generator(device="cpu").manual_seed(0)
    side = resolution // int(pipe.vae_scale_factor)
    text_dim, pooled_dim = transformer.config.joint_attention_dim, transformer.config.pooled_projection_dim
    pairs = PairBatch(torch.randn(batch, 16, side, side, generator=generator).to(device),
                      {"prompt_embeds": torch.randn(batch, text_length, text_dim, generator=generator).to(device),
                       "pooled_prompt_embeds": torch.randn(batch, pooled_dim, generator=generator).to(device)})
    noise = draw_noise(pairs.latents, objective, generator)
    with attach_tokens(transformer, tokens):
        def step():  # the frozen model in its dtype, the tokens float32 (PairScorer casts per call)
            tokens.zero_grad(set_to_none=True)
            pair_loss_backward(PairScorer(denoiser, call, objective, pairs, noise),
                               make_loss_fn(LossConfig(tau=1.0), noise, None), pair_chunk)

        if warm_up:
            step()
        return meter.run(step)
