"""The page's components by name: ``ControlComponents`` (one per ``EditControls`` field) and
``Page`` (everything ``app/ui.py`` lays out), with what the results area shows for an outcome.

``app/ui.py`` makes them (layout); ``app/runs.py``, ``app/reuse_controls.py`` and ``app/ui.py``
wire their events.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from app.controls import CONTROL_NAMES, EditControls, slider_range
from app.handlers import EditOutcome
from app.mask_controls import MaskComponents
from app.prompt_controls import PromptHelpComponents


@dataclass
class ControlComponents:
    """One component per ``EditControls`` field, under the field's name.

    Events read the controls and set them by name (``read``, ``updates``) and the API endpoints
    take theirs in their own parameters' order, matched by name (``inputs_for``): reordering a
    field can never swap two values.
    """

    source_prompt: gr.Textbox
    target_prompt: gr.Textbox
    use_tokens: gr.Checkbox
    tar_cfg: gr.Slider
    src_cfg: gr.Slider
    n_max: gr.Slider
    steps: gr.Slider
    n_min: gr.Slider
    n_avg: gr.Slider
    seed: gr.Number
    randomize_seed: gr.Checkbox
    max_side: gr.Slider
    guidance: gr.Radio
    token_branches: gr.Radio
    mask_mode: gr.Radio
    variations: gr.Slider
    auto: gr.Checkbox
    noise_offset: gr.Number

    def __post_init__(self) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        if names != set(CONTROL_NAMES):
            raise TypeError(f"ControlComponents must have one field per EditControls field: missing "
                            f"{sorted(set(CONTROL_NAMES) - names)}, extra {sorted(names - set(CONTROL_NAMES))}")

    def by_name(self) -> dict[str, Component]:
        return {name: getattr(self, name) for name in CONTROL_NAMES}

    def as_set(self) -> set[Component]:
        """The controls as an event's inputs: given a set, Gradio passes one {component: value} dict."""
        return set(self.by_name().values())

    def as_outputs(self) -> list[Component]:
        return list(self.by_name().values())

    def read(self, values: dict[Component, Any]) -> EditControls:
        """The ``EditControls`` of an event's {component: value} dict."""
        return EditControls(**{name: values[component] for name, component in self.by_name().items()})

    def updates(self, controls: EditControls, has_tokens: bool) -> dict[Component, Any]:
        """{component: update} showing ``controls``; the n_max / n_min sliders' ranges follow T and n_max."""
        updates: dict[Component, Any] = {component: getattr(controls, name)
                                         for name, component in self.by_name().items()}
        for name in ("n_max", "n_min"):
            low, high = slider_range(name, controls.steps, controls.n_max)
            updates[getattr(self, name)] = gr.Slider(value=getattr(controls, name), minimum=low, maximum=high)
        updates[self.use_tokens] = controls.use_tokens and has_tokens
        return updates


def slider_in_range(name: str, value: float, steps: float, n_max: float) -> gr.Slider:
    """The slider of ``name`` (n_max or n_min) with FlowEdit's range for T and n_max, its value moved into it."""
    low, high = slider_range(name, int(steps), int(n_max))
    return gr.Slider(minimum=low, maximum=high, value=min(max(int(value), low), high))


def candidates_gallery(outcome: EditOutcome | None) -> dict[str, Any]:
    """The Variations gallery's value for ``outcome``: each candidate with its seed, the chosen one
    selected; hidden unless an edit made several."""
    candidates = outcome.candidates if outcome is not None else []
    return dict(value=[(image.path, image.caption or f"seed {image.seed}") for image in candidates] or None,
                visible=bool(candidates), selected_index=outcome.chosen if candidates else None)


@dataclass
class Page:
    """The page's components by name: ``app.ui`` makes them, the wiring functions connect them."""

    controls: ControlComponents
    image: gr.Image
    masks: MaskComponents
    prompt_help: PromptHelpComponents  # Describe, Instruction (hidden without a helper)
    copy_prompt: gr.Button
    preset: gr.Dropdown
    edit_button: gr.Button
    compare_button: gr.Button
    cancel_button: gr.Button
    replay: gr.File  # a PNG this app or the editing CLI wrote: its settings back into the controls
    replay_note: gr.Markdown
    status: gr.Markdown
    slider: gr.ImageSlider
    result: gr.Image
    candidates: gr.Gallery  # Variations: pick one to make it the result
    compare_row: gr.Row
    without_tokens: gr.Image
    with_tokens: gr.Image
    summary: gr.Markdown
    edit_again: gr.Button
    files: gr.File
    details: gr.JSON
    examples: gr.Dataset
    history: gr.Gallery
    history_state: gr.State  # list[EditOutcome], newest first
    shown_outcome: gr.State  # the EditOutcome the results area shows (None: none or an example without results)
    parent: gr.State  # Edit again: what the source image was (handlers.parent_of), None for a picture of its own
    timer: gr.Timer

    def outcome_outputs(self) -> list[Component]:
        """The results area: what ``outcome_updates`` sets."""
        return [self.slider, self.result, self.candidates, self.without_tokens, self.with_tokens, self.files,
                self.summary, self.details, self.compare_row, self.masks.region, self.shown_outcome]

    def outcome_updates(self, outcome: EditOutcome | None) -> dict[Component, Any]:
        """What the results area shows for ``outcome``; None (an example without results) clears it."""
        if outcome is None:
            return {self.slider: None, self.result: None, self.candidates: gr.Gallery(**candidates_gallery(None)),
                    self.without_tokens: None, self.with_tokens: None,
                    self.files: None, self.summary: "Press **Edit** or **Compare** to run this example.",
                    self.details: None, self.compare_row: gr.Row(visible=False),
                    **self.masks.outcome_updates(None), self.shown_outcome: None}
        pair = outcome.mode == "compare"
        return {self.slider: (outcome.source_path, outcome.final.path),
                self.result: gr.Image(value=None if pair else outcome.final.path, visible=not pair),
                self.candidates: gr.Gallery(**candidates_gallery(outcome)),
                self.without_tokens: outcome.images[0].path if pair else None,
                self.with_tokens: outcome.images[1].path if pair else None,
                self.files: outcome.files(), self.summary: outcome.summary,
                self.details: outcome.details, self.compare_row: gr.Row(visible=pair),
                **self.masks.outcome_updates(outcome), self.shown_outcome: outcome}
