"""The page's ways to start the next edit from a result, as light events (no queue, not in the API):

* **Edit again**: the result shown becomes the source image, its target prompt the new source
  prompt (the target prompt stays, to be edited), a drawn mask stays (it fits the result, which has
  the input's size). The next run records the result it started from (``Page.parent``), so the
  history keeps the chain: each entry knows its parent (in its details).
* **Replay a result**: a PNG this app or ``python -m editing`` wrote puts its prompts, parameters,
  seed, mask and (when this server has it) input image back into the controls (``app.replay``).

A picture the person uploads starts a new chain (no parent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component

from app.components import HELPER_EVENT, LIGHT_EVENT, session_of
from app.controls import LABELS
from app.api import next_edit, replay
from app.handlers import EditOutcome, reports_errors
from app.page import Page
from app.replay import replay_note
from app.service import EditorService


def replay_inputs() -> dict[str, Component]:
    """The replay box and the line under it saying what came back."""
    replay_file = gr.File(label=LABELS["replay"], file_count="single", file_types=[".png"], type="filepath",
                          height=110, elem_id="replay")
    note = gr.Markdown("Drop a result PNG of this app (or of `python -m editing`) to put its prompts, parameters, "
                       "seed, mask and input image back into the controls.", elem_id="replay-note",
                       elem_classes=["hint"])
    return dict(replay=replay_file, replay_note=note)


def edit_again_button() -> gr.Button:
    return gr.Button("Edit again: this result becomes the source", size="sm", elem_id="edit-again")


def wire_reuse(page: Page, service: EditorService) -> None:
    """Edit again, Replay, and a new chain for a picture of the person's own."""
    controls = page.controls

    @reports_errors
    def again(outcome: EditOutcome | None) -> dict[Component, Any]:
        chained = next_edit(outcome)
        return {page.image: chained.image, controls.source_prompt: chained.source_prompt,
                controls.target_prompt: chained.target_prompt, page.masks.mask: chained.mask,
                page.parent: chained.parent,
                page.replay_note: f"**Editing again** the result of seed {chained.parent['seed']}: its target prompt "
                                  "is now the source prompt; change the target prompt and press **Edit**."}

    page.edit_again.click(again, [page.shown_outcome],
                          [page.image, controls.source_prompt, controls.target_prompt, page.masks.mask, page.parent,
                           page.replay_note], **HELPER_EVENT)
    page.image.input(lambda: None, None, [page.parent], **LIGHT_EVENT)  # the person's own picture: a new chain

    def replay_png(values: dict[Component, Any], request: gr.Request = None) -> dict[Component, Any]:
        path = values[page.replay]
        if not path:
            return {page.replay_note: gr.skip()}  # Gradio takes no empty dict
        result = replay(service, path, controls.read(values), session_of(request))
        # the box empties, ready for the next PNG; the note says which one came back
        return {page.image: result.image if result.image is not None else gr.skip(), page.masks.mask: result.mask,
                **controls.updates(result.controls, service.has_tokens), page.parent: None,
                page.replay_note: replay_note(result, Path(path).name), page.replay: None}

    replayed = page.replay.upload(replay_png, {page.replay, *controls.as_set()},
                                  [page.image, page.masks.mask, *controls.as_outputs(), page.parent, page.replay_note,
                                   page.replay], **HELPER_EVENT)
    # a refused PNG (its message is shown) leaves the box empty for the next one; the controls stay
    replayed.failure(lambda: None, None, [page.replay], **LIGHT_EVENT)
