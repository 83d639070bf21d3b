"""The page's prompt help (back-ends: ``app/prompt_help.py``, picked for the settings by
``EditorService.prompt_helpers``):

* **Describe** under the source prompt: writes the source prompt from the source image;
* **Instruction** and **Write the target prompt**: turns a one-line instruction ("make the square
  an outline") and the source prompt into the target prompt, with the one-concept validator's
  verdict under it (the shapes model's instructions are applied to what its classifier sees, so
  they may rewrite the source prompt too, and the note says so).

Each control shows only when there is a helper for it (None: hidden). Both prompts stay editable:
the helpers only fill them in. Their events are helper events (``HELPER_EVENT``): off the device
queue, private, and a refusal reaches the page as its message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from app.api import describe, instruct
from app.components import HELPER_EVENT
from app.controls import LABELS
from app.prompt_help import Describer, Instructor
from app.service import EditorService


@dataclass
class PromptHelpComponents:
    describe: gr.Button  # under the source prompt
    instruction: gr.Textbox
    write_target: gr.Button
    note: gr.Markdown  # the validator's verdict, what was rewritten


def describe_button(describer: Describer | None) -> gr.Button:
    name = f" ({describer.name})" if describer is not None else ""
    return gr.Button(f"Describe the image: write the source prompt{name}", size="sm", elem_id="describe",
                     visible=describer is not None)


def instruction_inputs(instructor: Instructor | None) -> dict[str, Component]:
    """The instruction box and its button (in a row hidden without an instructor), and the note under them."""
    with gr.Row(visible=instructor is not None, equal_height=True, elem_id="instruction-row"):
        instruction = gr.Textbox(label=LABELS["instruction"], lines=1, max_lines=1, scale=4, elem_id="instruction",
                                 placeholder="what to change, e.g. 'make the square an outline'")
        write_target = gr.Button("Write the target prompt", scale=1, min_width=120, elem_id="write-target")
    note = gr.Markdown(elem_id="prompt-note", elem_classes=["hint"])
    return dict(instruction=instruction, write_target=write_target, prompt_note=note)


def wire_prompt_help(parts: PromptHelpComponents, image: gr.Image, source_prompt: gr.Textbox,
                     target_prompt: gr.Textbox, service: EditorService) -> None:
    """Describe and Instruction -> target on the page, through the API layer (``app.api``)."""
    def describe_image(picture: str | None) -> dict[Component, Any]:
        described = describe(service, picture)
        return {source_prompt: described.source_prompt, parts.note: described.note}

    parts.describe.click(describe_image, [image], [source_prompt, parts.note], **HELPER_EVENT)

    def write_target(instruction: str, source: str, picture: str | None) -> dict[Component, Any]:
        result = instruct(service, instruction, source, picture)  # a refused target is shown, with the verdict
        return {target_prompt: result.target, source_prompt: result.source if result.source_changed else gr.skip(),
                parts.note: result.message}

    inputs, outputs = [parts.instruction, source_prompt, image], [target_prompt, source_prompt, parts.note]
    parts.write_target.click(write_target, inputs, outputs, **HELPER_EVENT)
    parts.instruction.submit(write_target, inputs, outputs, **HELPER_EVENT)
