"""Model kinds: per-family defaults (Hub id, pipeline class, soft-token m and L, training and
sampling settings) in the ``KINDS`` registry, and ``get_kind``.

This module imports no torch: the web page reads a kind's resolution before the model and its
libraries load (docs/benchmarks.md, App start-up). How tokens attach to each family, the pipeline
loader and ``register_kind`` (which checks the architecture) are in ``softrepa.models``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelKind:
    """Defaults for one model family (SoftREPA paper §4, Appendix B, and the authors' released scripts)."""

    arch: str
    hub_id: str
    pipeline_class: str  # a diffusers pipeline class name
    denoiser_attr: str  # the pipeline component the tokens hook
    num_tokens: int
    num_layers: int
    block_groups: tuple[str, ...] = ()
    init: str = "normal"
    use_null_prompt_init: bool = False
    dweight: float = 0.0  # denoising-loss weight in training
    steps: int = 28  # text-to-image defaults
    cfg: float = 4.0
    resolution: int = 1024
    max_sequence_length: int = 256  # SD3 pipelines: T5 tokens (zeros when there is no T5); FLUX: T5 tokens
    without_t5: bool = False  # load SD3-family pipelines with text_encoder_3=None
    guidance_embeds: bool | None = None  # FLUX: the denoiser has a guidance embedding (dev) or not (schnell)
    # what ``--dtype auto`` loads on a GPU: the dtype of the model card's example. FLUX.1 and SD3.5
    # are published in bfloat16 (FLUX.1's activations overflow float16 into black images)
    accelerator_dtype: str = "float16"
    # the CLIP (a transformers CLIPModel folder or Hub id) that scores auto-strength candidates (editing.scoring)
    scorer: str = "openai/clip-vit-large-patch14"


KINDS: dict[str, ModelKind] = {
    "sd3": ModelKind(arch="mmdit", hub_id="stabilityai/stable-diffusion-3-medium-diffusers",
                     pipeline_class="StableDiffusion3Pipeline", denoiser_attr="transformer",
                     num_tokens=4, num_layers=5, dweight=0.0, steps=28, cfg=4.0, resolution=1024),
    "sd15": ModelKind(arch="unet", hub_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
                      pipeline_class="StableDiffusionPipeline", denoiser_attr="unet",
                      num_tokens=8, num_layers=1, block_groups=("down",), use_null_prompt_init=True,
                      dweight=10.0, steps=30, cfg=7.0, resolution=512),
    "sdxl": ModelKind(arch="unet", hub_id="stabilityai/stable-diffusion-xl-base-1.0",
                      pipeline_class="StableDiffusionXLPipeline", denoiser_attr="unet",
                      num_tokens=8, num_layers=1, block_groups=("down", "mid"),
                      dweight=10.0, steps=30, cfg=7.0, resolution=1024),
}


# Stable Diffusion 3.5 (Stability AI's published diffusers configs, checked against the Hugging Face
# SD3.5 release notes): the same MM-DiT blocks as SD3 with QK RMS-norm; medium adds a second,
# image-only attention in blocks 0-12 (``dual_attention_layers``, pos_embed_max_size 384), large is
# 38 blocks of 38 heads x 64 = 2432 wide (caption_projection_dim 2432). The text stream is handled
# as in SD3, so tokens attach at the same points. No SoftREPA tokens are published for SD3.5: m 4,
# L 5 are SD3's, a starting point, not tuned. Sampling defaults are the model cards' (medium:
# 40 steps, CFG 4.5; large: 28 steps, CFG 3.5).
KINDS["sd3.5-medium"] = ModelKind(arch="mmdit", hub_id="stabilityai/stable-diffusion-3.5-medium",
                                  pipeline_class="StableDiffusion3Pipeline", denoiser_attr="transformer",
                                  num_tokens=4, num_layers=5, dweight=0.0, steps=40, cfg=4.5, resolution=1024,
                                  accelerator_dtype="bfloat16")
KINDS["sd3.5-large"] = ModelKind(arch="mmdit", hub_id="stabilityai/stable-diffusion-3.5-large",
                                 pipeline_class="StableDiffusion3Pipeline", denoiser_attr="transformer",
                                 num_tokens=4, num_layers=5, dweight=0.0, steps=28, cfg=3.5, resolution=1024,
                                 accelerator_dtype="bfloat16")


# FLUX.1 (Black Forest Labs' published diffusers configs): FluxTransformer2DModel, 19 double-stream
# + 38 single-stream blocks, 24 heads x 128 = 3072 wide, T5-XXL text (joint_attention_dim 4096) and
# CLIP pooled. dev is guidance-distilled: ``cfg`` is the guidance fed to its guidance embedding
# (FluxPipeline's guidance_scale; model card default 3.5, 28 steps, T5 512 tokens); schnell is
# timestep-distilled, 4 steps, no guidance embedding (guidance 0 is ignored), T5 256 tokens. No
# SoftREPA tokens exist for FLUX: m 4, L 5 (the first 5 of 19 double blocks) are a starting point
# taken from SD3, not tuned. Where the tokens go and how they are trained: ``softrepa.flux``.
KINDS["flux-dev"] = ModelKind(arch="flux", hub_id="black-forest-labs/FLUX.1-dev", pipeline_class="FluxPipeline",
                              denoiser_attr="transformer", num_tokens=4, num_layers=5, dweight=0.0, steps=28,
                              cfg=3.5, resolution=1024, max_sequence_length=512, guidance_embeds=True,
                              accelerator_dtype="bfloat16")
KINDS["flux-schnell"] = ModelKind(arch="flux", hub_id="black-forest-labs/FLUX.1-schnell", pipeline_class="FluxPipeline",
                                  denoiser_attr="transformer", num_tokens=4, num_layers=5, dweight=0.0, steps=4,
                                  cfg=0.0, resolution=1024, max_sequence_length=256, guidance_embeds=False,
                                  accelerator_dtype="bfloat16")


# The bundled shapes-world model (shapes/model.py): SD3 architecture, no T5, 64 px.
SHAPES_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-sd3"
SHAPES_SCORER_DIR = SHAPES_MODEL_DIR.parent / "shapes-scorer"  # shapes/scorer_training.py: a CLIP of the shapes world
KINDS["shapes-sd3"] = ModelKind(arch="mmdit", hub_id=str(SHAPES_MODEL_DIR), pipeline_class="StableDiffusion3Pipeline",
                                denoiser_attr="transformer", num_tokens=4, num_layers=3, dweight=0.0, steps=28,
                                cfg=4.0, resolution=64, max_sequence_length=8, without_t5=True,
                                scorer=str(SHAPES_SCORER_DIR))


def get_kind(name: str) -> ModelKind:
    if name not in KINDS:
        raise ValueError(f"unknown model kind {name!r}; choose one of {sorted(KINDS)}")
    return KINDS[name]


def kind_of_hub_id(model: str) -> str | None:
    """The kind whose Hub id ``model`` is (``black-forest-labs/FLUX.1-dev`` -> ``flux-dev``), else None.
    A local folder is recognised by its files in ``softrepa.models.resolve_model``."""
    return next((name for name, spec in KINDS.items() if spec.hub_id == model), None)
