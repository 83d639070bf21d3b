"""Tiny, seeded, random-weight diffusers pipelines built from configs: no downloads.

Tests and benchmarks run the real code paths (the same functions that drive SD3, SD3.5, FLUX.1,
SD1.5 and SDXL) on these. The CLIP tokenizer is a real ``CLIPTokenizer`` built from the CLIP BPE
vocabulary shipped in ``assets/clip-bpe`` (MIT, from open_clip), so prompts tokenize exactly as on
the real models.

FLUX's T5 tokenizer: no registry package ships T5's SentencePiece vocabulary, so ``t5_tokenizer``
builds a real ``T5Tokenizer`` (a ``tokenizers`` Unigram model, T5's special tokens and layout:
<pad> 0, </s> 1, <unk> 2, 100 sentinels at the end, 32100 entries for a 32128-row embedding) over a
vocabulary generated from the CLIP BPE file: "▁word" for CLIP's word-final tokens, bare pieces for
its word-inner ones, and every printable ASCII character both ways, so any ASCII prompt tokenizes
without <unk>. It is not T5's vocabulary (token ids differ from the real model's); what the tests
need is T5's format, length rules and padding, which are the real ones.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP_BPE = REPO_ROOT / "assets" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP reversible byte -> printable unicode map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (49408 entries) and BPE merges, rebuilt from the BPE file as CLIP does."""
    lines = gzip.open(CLIP_BPE).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    return {token: i for i, token in enumerate(vocab)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """A real ``CLIPTokenizer`` built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length)


def save_clip_tokenizer(directory: str | os.PathLike, model_max_length: int = 77) -> Path:
    directory = Path(directory)
    clip_tokenizer(model_max_length).save_pretrained(directory)
    return directory


def tiny_clip_text_encoder(seed: int, hidden_size: int = 32, projection_dim: int = 32, with_projection: bool = True,
                           num_layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=num_layers, num_attention_heads=4, max_position_embeddings=77,
                            projection_dim=projection_dim, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                            hidden_act="gelu")
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config).eval()


def tiny_vae(seed: int, block_out_channels=(8, 16), latent_channels: int = 4, shift_factor: float | None = None,
             scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(block_out_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(block_out_channels),
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
                         sample_size=32, shift_factor=shift_factor, scaling_factor=scaling_factor).eval()


def tiny_sd3_transformer(seed: int = 0, num_layers: int = 3, caption_projection_dim: int = 32,
                         sample_size: int = 16, dual_attention_layers: tuple[int, ...] = (),
                         qk_norm: str | None = None):
    """SD3's transformer at toy size; ``dual_attention_layers`` / ``qk_norm`` give SD3.5's block variants."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=sample_size, patch_size=1, in_channels=4, out_channels=4,
                                 num_layers=num_layers, attention_head_dim=8, num_attention_heads=4,
                                 caption_projection_dim=caption_projection_dim, joint_attention_dim=64,
                                 pooled_projection_dim=64, pos_embed_max_size=32,
                                 dual_attention_layers=tuple(dual_attention_layers), qk_norm=qk_norm).eval()


# SD3.5's block variants at toy size (softrepa.models: the published configs): medium has QK RMS-norm
# and dual attention in its first blocks (0-12 of 24; here 0-1 of 3), large QK RMS-norm only
SD35_TINY_VARIANTS: dict[str, dict] = {
    "sd3.5-medium": dict(dual_attention_layers=(0, 1), qk_norm="rms_norm"),
    "sd3.5-large": dict(dual_attention_layers=(), qk_norm="rms_norm"),
}


def tiny_sd3_pipeline(seed: int = 0, num_layers: int = 3, variant: str | None = None):
    """SD3 architecture at toy size: two CLIP encoders (32 wide each), no T5, 3 joint blocks, 2x VAE.

    variant: "sd3.5-medium" / "sd3.5-large" builds that SD3.5 transformer variant (``SD35_TINY_VARIANTS``).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    if variant is not None and variant not in SD35_TINY_VARIANTS:
        raise ValueError(f"unknown SD3 variant {variant!r}; choose one of {sorted(SD35_TINY_VARIANTS)}")
    blocks = SD35_TINY_VARIANTS.get(variant, {})
    tokenizer = clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed, num_layers=num_layers, **blocks),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed + 1, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=tiny_clip_text_encoder(seed + 2), tokenizer=tokenizer,
        text_encoder_2=tiny_clip_text_encoder(seed + 3), tokenizer_2=tokenizer,
        text_encoder_3=None, tokenizer_3=None,
    )


T5_VOCAB_SIZE = 32128  # T5 v1.1's embedding rows (the tokenizer uses 32100 of them)
T5_PIECES = 32000  # T5's SentencePiece model: 3 special + 31997 pieces; then 100 sentinels


@functools.lru_cache(maxsize=1)
def t5_vocab() -> tuple[tuple[str, float], ...]:
    """(piece, log-probability) pairs in T5's layout, generated from the CLIP BPE vocabulary.

    Scores favour whole words ("▁cat") over pieces over single characters, by CLIP's merge order
    (earlier merges are more frequent), so the Unigram model splits like a SentencePiece one would.
    """
    import math
    import string

    vocab, _ = clip_vocab_and_merges()
    allowed = set(string.ascii_letters + string.digits + string.punctuation)
    pieces: dict[str, float] = {}
    for char in sorted(allowed):  # every ASCII character, word-initial and inner: nothing is <unk>
        pieces.setdefault("\u2581" + char, -20.0)
        pieces.setdefault(char, -21.0)
    for token, rank in vocab.items():
        word, final = (token[:-4], True) if token.endswith("</w>") else (token, False)
        if len(word) < 2 or not set(word) <= allowed:
            continue
        piece = "\u2581" + word if final else word
        pieces.setdefault(piece, -(2.0 if final else 4.0) - math.log1p(rank))
        if len(pieces) >= T5_PIECES - 3:
            break
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    sentinels = [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]  # T5: the last ids, in reverse
    return tuple(specials + list(pieces.items())[: T5_PIECES - 3] + sentinels)


def t5_tokenizer(model_max_length: int = 512):
    """A real ``T5Tokenizer`` (tokenizers-backed) over ``t5_vocab``, built offline."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(t5_vocab()), extra_ids=100, model_max_length=model_max_length)


def tiny_t5_encoder(seed: int, d_model: int = 32, num_layers: int = 2):
    """T5 v1.1's encoder (gated GELU, no tied embeddings) at toy size, with T5's 32128-row embedding."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=T5_VOCAB_SIZE, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=num_layers,
                      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


# FLUX.1 at toy size (published configs in softrepa.models): dev has a guidance embedding (guidance-
# distilled), schnell has none; both FlowMatchEulerDiscreteScheduler configs are the published ones
# (dev: resolution-dependent shift from base_shift 0.5 at 256 tokens to max_shift 1.15 at 4096;
# schnell: no shifting).
FLUX_TINY_VARIANTS: dict[str, dict] = {
    "flux-dev": dict(guidance_embeds=True, scheduler=dict(use_dynamic_shifting=True, shift=3.0)),
    "flux-schnell": dict(guidance_embeds=False, scheduler=dict(use_dynamic_shifting=False, shift=1.0)),
}


def tiny_flux_transformer(seed: int = 0, guidance_embeds: bool = True, num_layers: int = 2,
                          num_single_layers: int = 2):
    """``FluxTransformer2DModel`` at toy size: 2 double + 2 single blocks, 2 heads x 16 (rotary axes
    4 + 6 + 6 = 16), 64 input channels (16 latent channels packed 2x2), text 32 wide (T5), pooled 32 (CLIP)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=num_layers,
                                  num_single_layers=num_single_layers, attention_head_dim=16, num_attention_heads=2,
                                  joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                  axes_dims_rope=(4, 6, 6)).eval()


def tiny_flux_pipeline(seed: int = 0, variant: str = "flux-dev"):
    """FLUX.1 architecture at toy size: CLIP (pooled, 32 wide) + T5 (32 wide, 512 tokens), 16-channel
    2x VAE with FLUX's latent scaling (0.3611) and shift (0.1159), the variant's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    if variant not in FLUX_TINY_VARIANTS:
        raise ValueError(f"unknown FLUX variant {variant!r}; choose one of {sorted(FLUX_TINY_VARIANTS)}")
    spec = FLUX_TINY_VARIANTS[variant]
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, base_image_seq_len=256,
                                                max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
                                                **spec["scheduler"])
    return FluxPipeline(transformer=tiny_flux_transformer(seed, guidance_embeds=spec["guidance_embeds"]),
                        scheduler=scheduler,
                        vae=tiny_vae(seed + 1, latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611),
                        text_encoder=tiny_clip_text_encoder(seed + 2, with_projection=False),
                        tokenizer=clip_tokenizer(), text_encoder_2=tiny_t5_encoder(seed + 3),
                        tokenizer_2=t5_tokenizer())


def tiny_flux_dev_pipeline(seed: int = 0):
    return tiny_flux_pipeline(seed, variant="flux-dev")


def tiny_flux_schnell_pipeline(seed: int = 0):
    return tiny_flux_pipeline(seed, variant="flux-schnell")


def tiny_sd15_pipeline(seed: int = 0):
    """SD1.5 architecture at toy size: CLIP text encoder (32 wide), 2-level UNet, DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=4).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=tiny_vae(seed + 1, scaling_factor=0.18215),
                                   text_encoder=tiny_clip_text_encoder(seed + 2, with_projection=False),
                                   tokenizer=clip_tokenizer(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tiny_sdxl_pipeline(seed: int = 0):
    """SDXL architecture at toy size: two CLIP encoders (32 + 32 = 64 wide), text-time conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
                                norm_num_groups=4).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    tokenizer = clip_tokenizer()
    return StableDiffusionXLPipeline(unet=unet, scheduler=scheduler, vae=tiny_vae(seed + 1, scaling_factor=0.13025),
                                     text_encoder=tiny_clip_text_encoder(seed + 2, with_projection=False),
                                     tokenizer=tokenizer, text_encoder_2=tiny_clip_text_encoder(seed + 3),
                                     tokenizer_2=tokenizer, force_zeros_for_empty_prompt=True)


def tiny_sd35_medium_pipeline(seed: int = 0):
    return tiny_sd3_pipeline(seed, variant="sd3.5-medium")


def tiny_sd35_large_pipeline(seed: int = 0):
    return tiny_sd3_pipeline(seed, variant="sd3.5-large")


TINY_PIPELINES = {"sd3": tiny_sd3_pipeline, "sd3.5-medium": tiny_sd35_medium_pipeline,
                  "sd3.5-large": tiny_sd35_large_pipeline, "flux-dev": tiny_flux_dev_pipeline,
                  "flux-schnell": tiny_flux_schnell_pipeline, "sd15": tiny_sd15_pipeline, "sdxl": tiny_sdxl_pipeline}


def tiny_pipeline(kind: str, seed: int = 0):
    if kind not in TINY_PIPELINES:
        raise ValueError(f"no tiny pipeline for kind {kind!r}; choose one of {sorted(TINY_PIPELINES)}")
    return TINY_PIPELINES[kind](seed)


def save_tiny_pipeline(kind: str, directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny pipeline in diffusers format so ``from_pretrained(directory)`` loads it offline."""
    directory = Path(directory)
    tiny_pipeline(kind, seed).save_pretrained(directory)
    return directory
