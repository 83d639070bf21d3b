"""Tiny random-weight stand-ins for the Appendix C models, built offline from configs.

The caption pipeline (``data_prep/caption.py``) loads LLaVA-1.5 and Llama-3.1-8B-Instruct
from the Hub. Tests and benchmarks cannot download them, so this module saves folders
with the same layout (config, safetensors weights, tokenizer, chat template, image
processor) that ``--captioner DIR`` / ``--rewriter DIR`` load through the very same code
path. The weights are random: the text they generate is word salad, which exercises the
plumbing (batching, padding, decoding, validation, rejects) but never the quality.
"""

from __future__ import annotations

from pathlib import Path

# Sentences the word-level tokenizer is trained on; generated text is drawn from these
# words. Colour words are left out on purpose so that a rewrite of random text does not
# trip the colour rule by accident.
_TOKENIZER_CORPUS = [
    "The image features a close-up of a dog with a nose.",
    "The dog is standing in a grassy field, and the background is blurred.",
    "A photo of a cat sitting on a wooden table next to a window.",
    "A photo of a dog lying on a sofa in a living room.",
    "Describe the object and background in the image",
    "A tall building stands on a hill under a cloudy sky with trees around it.",
    "A boat floats on a calm lake surrounded by mountains and a forest.",
    "You are an AI assistant for generating paired text prompts for real image editing tasks.",
    "Input: Output: system user assistant",
]

_SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<image>"]

# Chat templates in the style of the real ones (role, then text; images as <image>).
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_offline_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` trained on a few sentences, with a chat
    template and an ``<image>`` token; no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # joins words with spaces when decoding
    backend.train_from_iterator(_TOKENIZER_CORPUS, trainers.WordLevelTrainer(special_tokens=_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=2048,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _tiny_llama_config(tokenizer, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_llava(folder: Path | str, image_size: int = 28, patch_size: int = 14, seed: int = 0) -> Path:
    """Save a tiny ``LlavaForConditionalGeneration`` + ``LlavaProcessor`` to ``folder``."""
    import torch
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder)
    tokenizer = build_offline_tokenizer()
    # The PIL image processor: the torchvision one does not import beside the CPU torch.
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP class token
        chat_template=_CHAT_TEMPLATE,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=16,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=_tiny_llama_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path | str, seed: int = 0) -> Path:
    """Save a tiny ``LlamaForCausalLM`` + tokenizer with a chat template to ``folder``."""
    import torch
    from transformers import LlamaForCausalLM

    folder = Path(folder)
    tokenizer = build_offline_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_tiny_llama_config(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
