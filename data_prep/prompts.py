"""The paper's prompts for the editing dataset, verbatim (SoftREPA paper, Appendix C "Prompt for
Editing dataset"), and the stage-2 chat built from them; also the instruction-aware variant of that
chat (``build_instruction_chat``), for turning a person's one-line edit instruction into the target
prompt (the web app's prompt help).

Typography (curly quotes, em dash) is kept as printed in the paper.
"""

from __future__ import annotations

# Appendix C: the text prompt given to LLaVA with each image.
CAPTION_PROMPT = "Describe the object and background in the image"

# Appendix C: the instruction given to Llama (the rules, up to the example).
REWRITE_INSTRUCTION = (
    "You are an AI assistant for generating paired text prompts for real image editing tasks. "
    "Your goal is to modify a given text description by replacing an object with other while "
    "strictly following these rules:\n\n"
    "\u2022 1) Modify only one object (i.e., a single meaningful concept such as an object). "
    "It could be small object.\n\n"
    "\u2022 2) The replacement must be significantly different from the original concept but "
    "contextually appropriate. Avoid unrealistic substitutions (e.g., changing \u201drabbit on "
    "grass\u201d to \u201drocket on grass\u201d).\n\n"
    "\u2022 3) Ensure diversity in word choices across different modifications.\n\n"
    "\u2022 4) Preserve all other words exactly as they are. Do not change sentence structure, "
    "introduce new elements, or modify additional details.\n\n"
    "\u2022 5) Do not provide any additional words\u2014output only the modified text description.\n\n"
    "\u2022 6) Do not change or add colors. Specifically, when modifying a building, change only "
    "the appearance, not the type of building (e.g., do not change \u201dbuilding\u201d to "
    "\u201dchurch\u201d or \u201dlighthouse\u201d).\n\n"
    "\u2022 7) Modify only one feature at a time. If changing an object (e.g., \u201dstarfish\u201d "
    "to \u201dsea turtle\u201d), do not alter its color, shape, or other attributes."
)

# Appendix C: the example that follows "Example:" in the instruction (Input / Output).
REWRITE_EXAMPLE_INPUT = (
    "The image features a close-up of a brown dog with a blue nose. The dog is standing in a "
    "grassy field, and the background is blurred, creating a focus on the dog\u2019s face. The "
    "dog\u2019s ears are perked up, and its eyes are open, giving it a curious and attentive "
    "expression. The dog\u2019s fur is brown, and the grass in the background is green, creating "
    "a natural and vibrant scene."
)
REWRITE_EXAMPLE_OUTPUT = (
    "The image features a close-up of a brown fox with a blue nose. The fox is standing in a "
    "grassy field, and the background is blurred, creating a focus on the fox\u2019s face. The "
    "fox\u2019s ears are perked up, and its eyes are open, giving it a curious and attentive "
    "expression. The fox\u2019s fur is brown, and the grass in the background is green, creating "
    "a natural and vibrant scene."
)

# The paper's second editing set (Cat2Dog): every cat photo gets this fixed pair.
CAT2DOG_SOURCE_PROMPT = "a photo of a cat"
CAT2DOG_TARGET_PROMPT = "a photo of a dog"


def build_rewrite_chat(caption: str) -> list[dict[str, str]]:
    """The stage-2 chat: the paper's instruction as the system message, the paper's
    example as one user/assistant exchange, then the caption to rewrite.

    The paper prints the example inline ("Example: Input: ... Output: ..."). In a chat the
    assistant turn IS the output, so the example answer is given without an "Output:"
    label; the model then answers with the description alone, which the validator requires.
    """
    return [
        {"role": "system", "content": REWRITE_INSTRUCTION},
        {"role": "user", "content": f"Input: {REWRITE_EXAMPLE_INPUT}"},
        {"role": "assistant", "content": REWRITE_EXAMPLE_OUTPUT},
        {"role": "user", "content": f"Input: {caption}"},
    ]


# The instruction-aware rewrite (not in the paper): the person names the change, so the system
# message keeps the paper's one-concept rules (its rules 1, 4 and 5, reworded only where they speak
# of "replacing an object") and drops the ones about choosing a replacement (2, 3) and the ban on
# colour changes (6), which a person's instruction may ask for.
INSTRUCTED_REWRITE_INSTRUCTION = (
    "You are an AI assistant for generating paired text prompts for real image editing tasks. "
    "Your goal is to modify a given text description so that it describes the image after the given "
    "edit instruction, while strictly following these rules:\n\n"
    "\u2022 1) Modify only what the instruction asks for (i.e., a single meaningful concept such as an "
    "object or one of its attributes).\n\n"
    "\u2022 2) Preserve all other words exactly as they are. Do not change sentence structure, "
    "introduce new elements, or modify additional details.\n\n"
    "\u2022 3) Do not provide any additional words\u2014output only the modified text description."
)
# The paper's example, with the instruction that asks for its change.
INSTRUCTED_EXAMPLE_INSTRUCTION = "replace the dog with a fox"


def instruction_message(caption: str, instruction: str) -> str:
    """The user turn of the instruction-aware chat: the instruction, then the caption to rewrite."""
    return f"Instruction: {' '.join(instruction.split())}\nInput: {caption}"


def build_instruction_chat(caption: str, instruction: str) -> list[dict[str, str]]:
    """The chat that rewrites ``caption`` as ``instruction`` asks: the one-concept rules as the system
    message (``INSTRUCTED_REWRITE_INSTRUCTION``), the paper's dog -> fox example as one user/assistant
    exchange with the instruction that asks for it, then ``instruction`` and ``caption``.

    Same shape as ``build_rewrite_chat``: the assistant turn is the rewritten description alone, so the
    answer can be checked with ``data_prep.rewrite_check.check_rewrite``.
    """
    return [
        {"role": "system", "content": INSTRUCTED_REWRITE_INSTRUCTION},
        {"role": "user", "content": instruction_message(REWRITE_EXAMPLE_INPUT, INSTRUCTED_EXAMPLE_INSTRUCTION)},
        {"role": "assistant", "content": REWRITE_EXAMPLE_OUTPUT},
        {"role": "user", "content": instruction_message(caption, instruction)},
    ]
