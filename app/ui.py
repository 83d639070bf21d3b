"""The page: a ``gr.Blocks`` wired to ``app.handlers``, and ``launch``.

Layout: inputs on the left (image, the Mask choice with its brush and mask image, prompts with
Describe and Instruction when the app has helpers for them, tokens, preset, the three main sliders, an Advanced accordion, Variations, Edit / Compare /
Cancel, the replay box), results on the right (before/after slider, the edit or the tokens-off /
tokens-on pair, the candidates, the region edited, a summary line, Edit again, PNG downloads, the
parameters as JSON), then the examples and the session's history (``_layout``, which returns them
as a ``Page``, ``app/page.py``). Events: the runs (Edit, Compare, Cancel, picking a candidate) in
``app/runs.py``, Edit again and Replay in ``app/reuse_controls.py``, the mask's parts in
``app/mask_controls.py``, prompt help in ``app/prompt_controls.py``, the rest in ``_wire_*`` here. Public API endpoints:
``/edit`` and ``/compare`` (the two buttons' runs, ``app/runs.py``) and ``/describe``, ``/instruct``,
``/replay``, ``/edit_again`` (``app/endpoints.py``): events of their own with no trigger on the page,
calling the API layer (``app/api.py``) as the page's events do; every other event is private to
the page (see docs/app.md).

Controls travel by name, never by position: ``ControlComponents`` has one component per
``EditControls`` field under the same name; events read and set them as {component: value}
dicts, and the endpoints' inputs are picked by their parameters' names (``inputs_for``). The
sliders' ranges come from ``FlowEditParams.ranges`` and the app's caps (``app.controls``); the
values an endpoint receives are checked by the handlers, not against those ranges
(``checked_by_the_app``).

One device: edits share one concurrency slot ("device") and wait in a bounded queue; light
events (presets, history, copy, Edit again, replay) skip the queue so they stay instant while an
edit runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component

from app.components import LIGHT_EVENT, checked_by_the_app, inputs_for, unopened_image
from app.controls import (CFG_RANGE, CONTROL_NAMES, LABELS, MAX_SEED, VARIATIONS_RANGE, EditControls, default_preset,
                          guidance_sliders, initial_controls, preset_choices, preset_controls, slider_range)
from app.handlers import EditOutcome, example_rows, history_entry, reports_errors, select_example
from app.endpoints import wire_endpoints
from app.mask_controls import MaskComponents, mask_inputs, region_image, wire_mask
from app.page import ControlComponents, Page, slider_in_range
from app.prompt_controls import PromptHelpComponents, describe_button, instruction_inputs, wire_prompt_help
from app.reuse_controls import edit_again_button, replay_inputs, wire_reuse
from app.runs import running_on_zero_gpu, wire_runs
from app.service import EditorService
from app.settings import AppSettings
from editing.params import GUIDANCE_MODES, TOKEN_BRANCHES, FlowEditParams

log = logging.getLogger(__name__)

CSS = """
#model-status {font-size: 0.9em}
#summary {min-height: 1.5em}
.hint {font-size: 0.85em; opacity: 0.8}
"""
# Phones (390 px wide): nothing may be wider than the screen. Gradio gives a dropdown or a gallery
# a min-width and lays a row's children side by side, and the examples table sizes its columns to
# the prompts' full length, so the page scrolled sideways and cut the preset's name and the
# examples off: on a narrow screen rows wrap, the preset takes the full width, and the examples'
# cells wrap their text.
NARROW_CSS = """
@media (max-width: 640px) {
    .gradio-container {padding-left: 6px !important; padding-right: 6px !important}
    .gradio-container .row {flex-wrap: wrap}
    .gradio-container .row > * {min-width: min(100%, 160px) !important}
    #preset {flex: 1 1 100% !important; min-width: 100% !important}
    #examples table {table-layout: fixed; width: 100%}
    #examples td, #examples th {white-space: normal !important; overflow-wrap: anywhere; word-break: break-word}
    #examples img {max-width: 100%}
}
"""
# Small models (the bundled one edits 64 px images): show pictures scaled up with sharp pixels
# instead of a blurry thumbnail in a big empty box.
SMALL_IMAGE_CSS = """
#source-image img, #result img, #without-tokens img, #with-tokens img, #before-after img, #history img,
#region img, #mask-image img, #candidates img {
    image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%;
}
"""
SMALL_IMAGE_SIDE = 256  # models whose largest input side is at most this get SMALL_IMAGE_CSS


# ----------------------------------------------------------------------------- layout


def _layout(service: EditorService) -> Page:
    """The components, inside the ``gr.Blocks`` being built: inputs left, results right, then the
    examples and the session's history."""
    gr.Markdown("## SoftREPA image editor\nDescribe the picture (source prompt) and the picture you want "
                "(target prompt). FlowEdit on Stable Diffusion 3 turns one into the other, optionally with "
                "SoftREPA soft tokens for closer text alignment.")
    parts: dict[str, Any] = {"status": gr.Markdown(service.status().message, elem_id="model-status"),
                             "history_state": gr.State([]), "shown_outcome": gr.State(None), "parent": gr.State(None)}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            parts.update(_input_column(service, initial_controls(service)))
        with gr.Column(scale=6, min_width=320):
            parts.update(_result_column())
    controls = ControlComponents(**{name: parts.pop(name) for name in CONTROL_NAMES})
    parts["masks"] = MaskComponents(mask=parts.pop("mask"), brush=parts.pop("mask_brush"),
                                    drawn=parts.pop("mask_drawn"), region=parts.pop("region"))
    parts["prompt_help"] = PromptHelpComponents(describe=parts.pop("describe"), instruction=parts.pop("instruction"),
                                                write_target=parts.pop("write_target"), note=parts.pop("prompt_note"))
    parts.update(_examples_and_history(service, parts["image"], controls))
    parts["timer"] = gr.Timer(1.0, active=service.status().state == "loading")
    return Page(controls=controls, **parts)


def _input_column(service: EditorService, init: EditControls) -> dict[str, Component]:
    """Image, mask, prompts, tokens, preset, the three main sliders, the Advanced accordion, the buttons."""
    image = unopened_image(label=LABELS["image"], sources=["upload", "clipboard"], height=300, elem_id="source-image")
    masks = mask_inputs(init)
    describer, instructor = service.prompt_helpers()
    source_prompt = gr.Textbox(label=LABELS["source_prompt"], lines=2, elem_id="source-prompt",
                               placeholder="what the picture shows, e.g. 'a cat sitting on a sofa'")
    describe = describe_button(describer)
    target_prompt = gr.Textbox(label=LABELS["target_prompt"], lines=2, elem_id="target-prompt",
                               placeholder="the same sentence with your change, e.g. 'a dog sitting on a sofa'")
    copy_prompt = gr.Button("Copy the source prompt into the target", size="sm")
    prompt_help = instruction_inputs(instructor)
    with gr.Row():
        use_tokens = gr.Checkbox(value=init.use_tokens, label=LABELS["use_tokens"], interactive=service.has_tokens,
                                 elem_id="use-tokens", info="SoftREPA tokens: closer to the target prompt")
        preset = gr.Dropdown(choices=preset_choices(service.settings.kind), value=default_preset(service), label="Preset",
                             info="resets the sliders", scale=2, elem_id="preset")
    # the endpoints' sliders, radios and seed box hand their values to the handlers, which check them
    # (checked_by_the_app): the ranges here are the page's, not the API's
    with gr.Row():
        n_max = checked_by_the_app(gr.Slider(
            *slider_range("n_max", init.steps, init.n_max), value=init.n_max, step=1, label=LABELS["n_max"],
            elem_id="n-max", scale=3,
            info="how many of the T steps edit: higher changes more, lower keeps more of the input"))
        auto = gr.Checkbox(value=init.auto, label=LABELS["auto"], elem_id="auto-strength", scale=1,
                           info="4 strengths around this one in one run, scored; the least change that reaches the "
                                "target is picked (the strip below shows them all)")
    meaning = guidance_sliders(service.settings.kind)  # what the two guidance sliders are on this model
    tar_cfg = checked_by_the_app(gr.Slider(*CFG_RANGE, value=init.tar_cfg, step=0.5, label=LABELS["tar_cfg"],
                                           elem_id="tar-cfg", **meaning["tar_cfg"]))
    src_cfg = checked_by_the_app(gr.Slider(*CFG_RANGE, value=init.src_cfg, step=0.5, label=LABELS["src_cfg"],
                                           elem_id="src-cfg", **meaning["src_cfg"]))
    with gr.Accordion("Advanced", open=False):
        advanced = _advanced_controls(service, init)
    variations = checked_by_the_app(gr.Slider(
        *VARIATIONS_RANGE, value=init.variations, step=1, label=LABELS["variations"], elem_id="variations",
        info="candidates of the same edit with seeds seed, seed + 1, ... in one batched run; pick one"))
    with gr.Row():
        edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
        compare_button = gr.Button("Compare tokens", interactive=service.has_tokens, elem_id="compare-button")
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
    return dict(image=image, **masks, source_prompt=source_prompt, describe=describe, target_prompt=target_prompt,
                copy_prompt=copy_prompt, **prompt_help, use_tokens=use_tokens, preset=preset, n_max=n_max, auto=auto,
                tar_cfg=tar_cfg, src_cfg=src_cfg, **advanced,
                variations=variations, edit_button=edit_button, compare_button=compare_button,
                cancel_button=cancel_button, **replay_inputs())


def _advanced_controls(service: EditorService, init: EditControls) -> dict[str, Component]:
    def slider(name: str, info: str) -> gr.Slider:
        return checked_by_the_app(gr.Slider(*slider_range(name, init.steps, init.n_max), value=getattr(init, name),
                                            step=1, label=LABELS[name], info=info))

    steps = slider("steps", "scheduler steps over the whole noise range")
    n_min = slider("n_min", "the last editing steps sample the target plainly: more detail, less faithful")
    n_avg = slider("n_avg", "smoother edits, n_avg times slower")
    with gr.Row():
        seed = checked_by_the_app(gr.Number(value=init.seed, precision=0, minimum=FlowEditParams().ranges()["seed"][0],
                                            maximum=MAX_SEED, label=LABELS["seed"], elem_id="seed"))
        randomize_seed = gr.Checkbox(value=init.randomize_seed, label=LABELS["randomize_seed"],
                                     info="a new seed each run (shown after the run)")
    side_min, side_max, side_step = service.side_range()
    max_side = checked_by_the_app(gr.Slider(side_min, side_max, value=init.max_side, step=side_step,
                                            label=LABELS["max_side"], info="larger inputs are downscaled to this"))
    guidance = checked_by_the_app(gr.Radio(list(GUIDANCE_MODES), value=init.guidance, label=LABELS["guidance"],
                                           info="standard u + w(c - u); authors: the SoftREPA code's target c + "
                                                "w(c - u)"))
    token_branches = checked_by_the_app(gr.Radio(list(TOKEN_BRANCHES), value=init.token_branches,
                                                 label=LABELS["token_branches"],
                                                 info="soft tokens on both branches (the paper) or the target only"))
    noise_offset = checked_by_the_app(gr.Number(value=init.noise_offset, precision=0, minimum=0,
                                                label=LABELS["noise_offset"], elem_id="noise-offset",
                                                info="noise draws skipped before the first step: 0, or an Auto "
                                                     "pick's (set when you take one, to rerun exactly it)"))
    return dict(steps=steps, n_min=n_min, n_avg=n_avg, seed=seed, randomize_seed=randomize_seed, max_side=max_side,
                guidance=guidance, token_branches=token_branches, noise_offset=noise_offset)


def _result_column() -> dict[str, Component]:
    """Before/after slider, the edit or the tokens-off / tokens-on pair, the candidates, summary, Edit
    again, PNG files, parameters."""
    images = dict(type="filepath", format="png", interactive=False, height=300, buttons=["download", "fullscreen"])
    slider = gr.ImageSlider(label="Before / after", type="filepath", height=360, elem_id="before-after")
    result = gr.Image(label="Edited", elem_id="result", **images)
    candidates = gr.Gallery(label="Candidates: click one to make it the result (Auto strength: ★ picked, n = n_max, "
                                  "alignment / preservation)", columns=4, height="auto",
                            object_fit="contain", allow_preview=False, interactive=False, visible=False,
                            elem_id="candidates")
    with gr.Row(visible=False) as compare_row:
        without_tokens = gr.Image(label="Without soft tokens", elem_id="without-tokens", **images)
        with_tokens = gr.Image(label="With soft tokens", elem_id="with-tokens", **images)
    region = region_image()
    summary = gr.Markdown(label="Summary", show_label=False, elem_id="summary")
    edit_again = edit_again_button()
    files = gr.File(label="PNG files", file_count="multiple", interactive=False, elem_id="png-files")
    gr.Markdown("The PNG files carry the prompts, seed, every parameter and the mask in their metadata "
                "(`editing.editor.read_png_metadata`); a masked edit's mask is also beside it (`.mask.png`, "
                "white = edited).", elem_classes=["hint"])
    with gr.Accordion("Seed and parameters used (JSON)", open=False):
        details = gr.JSON(label="Parameters", elem_id="details")
    return dict(slider=slider, result=result, candidates=candidates, compare_row=compare_row,
                without_tokens=without_tokens, with_tokens=with_tokens, region=region, summary=summary,
                edit_again=edit_again, files=files, details=details)


def _examples_and_history(service: EditorService, image: gr.Image, controls: ControlComponents
                          ) -> dict[str, Component]:
    precomputed = any(example.has_outputs for example in service.examples())
    examples = gr.Dataset(components=[image, controls.source_prompt, controls.target_prompt],
                          samples=example_rows(service), type="index",
                          label="Examples: click one to load it" + (
                              " with its precomputed results" if precomputed else ", then press Edit"),
                          headers=[LABELS["image"], LABELS["source_prompt"], LABELS["target_prompt"]],
                          samples_per_page=8, elem_id="examples")
    history = gr.Gallery(label="History of this session (click an entry to restore its settings)", columns=8,
                         fit_columns=False, height=200, object_fit="contain", allow_preview=False,
                         interactive=False, elem_id="history")
    return dict(examples=examples, history=history)


# ----------------------------------------------------------------------------- events


def build_demo(service: EditorService) -> gr.Blocks:
    """The page for ``service``'s model (which may still be loading)."""
    with gr.Blocks(title="SoftREPA image editor",
                   delete_cache=(3600, int(service.settings.outputs_max_age_s))) as demo:
        page = _layout(service)
        wire_runs(page, service, demo)
        _wire_controls(page, service)
        wire_mask(page.masks, page.controls.mask_mode, page.image, service)
        wire_reuse(page, service)
        wire_prompt_help(page.prompt_help, page.image, page.controls.source_prompt, page.controls.target_prompt,
                         service)
        wire_endpoints(page, service)
        _wire_examples_and_history(page, service)
        _wire_status(page, service, demo)
    return demo


def _wire_controls(page: Page, service: EditorService) -> None:
    """Copy the prompt, apply a preset, keep the n_max / n_min sliders within FlowEdit's ranges."""
    controls = page.controls
    page.copy_prompt.click(None, [controls.source_prompt], [controls.target_prompt], js="(source) => source")

    @reports_errors
    def apply_preset(values: dict[Component, Any]) -> dict[Component, Any]:
        chosen = preset_controls(values[page.preset], controls.read(values), service.has_tokens)
        return controls.updates(chosen, service.has_tokens)

    page.preset.input(apply_preset, {page.preset, *controls.as_set()}, controls.as_outputs(), **LIGHT_EVENT)

    def n_max_within_steps(steps: float, n_max: float) -> gr.Slider:
        """n_max counts steps out of T: its slider's range follows T."""
        return slider_in_range("n_max", n_max, steps, n_max)

    def n_min_within_n_max(steps: float, n_max: float, n_min: float) -> gr.Slider:
        """n_min counts the last of the n_max editing steps: its slider's range follows n_max."""
        return slider_in_range("n_min", n_min, steps, n_max)

    named = controls.by_name()
    controls.steps.change(n_max_within_steps, inputs_for(n_max_within_steps, named), [controls.n_max], **LIGHT_EVENT)
    controls.n_max.change(n_min_within_n_max, inputs_for(n_min_within_n_max, named), [controls.n_min], **LIGHT_EVENT)


def _wire_examples_and_history(page: Page, service: EditorService) -> None:
    """A click on an example or a history entry fills the inputs (the mask too), the controls and the
    results; an example starts a new chain, a history entry restores its own parent (Edit again)."""
    outputs = [page.image, page.masks.mask, *page.controls.as_outputs(), *page.outcome_outputs(), page.parent]

    @reports_errors
    def load_example(values: dict[Component, Any]) -> dict[Component, Any]:
        selection = select_example(service, values[page.examples], page.controls.read(values))
        return {page.image: selection.image, page.masks.mask: None,  # a new picture: no mask (mode none)
                **page.controls.updates(selection.controls, service.has_tokens),
                **page.outcome_updates(selection.outcome), page.parent: None}

    page.examples.click(load_example, {page.examples, *page.controls.as_set()}, outputs, **LIGHT_EVENT)

    @reports_errors
    def restore(history_entries: list[EditOutcome], event: gr.SelectData) -> dict[Component, Any]:
        entry = history_entry(history_entries, event.index)
        return {page.image: entry.source_path, page.masks.mask: entry.mask,  # drawn: the mask it used
                **page.controls.updates(entry.controls, service.has_tokens),
                **page.outcome_updates(entry), page.parent: entry.parent}

    page.history.select(restore, [page.history_state], outputs, **LIGHT_EVENT)


def _wire_status(page: Page, service: EditorService, demo: gr.Blocks) -> None:
    """The model's status line, polled while it loads; the tokens controls follow what loaded."""
    outputs = [page.status, page.timer, page.controls.use_tokens, page.compare_button]

    def refresh_status() -> dict[Component, Any]:
        state = service.status()
        return {page.status: state.message, page.timer: gr.Timer(active=state.state == "loading"),
                page.controls.use_tokens: gr.Checkbox(interactive=service.has_tokens),
                page.compare_button: gr.Button(interactive=service.has_tokens)}

    page.timer.tick(refresh_status, None, outputs, **LIGHT_EVENT)
    demo.load(refresh_status, None, outputs, **LIGHT_EVENT)


def prepare_environment(settings: AppSettings) -> None:
    """Make the app's temporary folder the only place user data is written: Gradio keeps uploads
    and served results in ``GRADIO_TEMP_DIR`` (read when components and the server are created)."""
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    settings.outputs_dir.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(settings.uploads_dir)


@dataclass
class WebApp:
    """The page, the service behind it and how to serve them."""

    demo: gr.Blocks
    service: EditorService

    @property
    def settings(self) -> AppSettings:
        return self.service.settings

    def css(self) -> str:
        return CSS + NARROW_CSS + (SMALL_IMAGE_CSS if self.service.side_range()[1] <= SMALL_IMAGE_SIDE else "")

    def launch(self, *, block: bool = True) -> str:
        """Serve on the settings' host and port; returns the local URL (``block``: until interrupted)."""
        settings = self.settings
        _, url, _ = self.demo.launch(
            server_name=settings.host, server_port=settings.port, max_file_size=settings.max_file_size,
            allowed_paths=[str(settings.temp_dir), str(settings.examples_dir)], show_error=False,
            prevent_thread_lock=True, quiet=True, theme=gr.themes.Soft(), css=self.css(),
            footer_links=["api", "gradio"], mcp_server=settings.mcp)  # the endpoints as MCP tools
        print(f"SoftREPA editor: {url}  ({settings.describe()})", flush=True)
        if block:
            self.demo.block_thread()
        return url

    def close(self) -> None:
        self.demo.close()


def create_app(settings: AppSettings, service: EditorService | None = None) -> WebApp:
    """The service (model loading started) and the queued page, ready to ``launch``."""
    prepare_environment(settings)
    service = service or EditorService(settings)
    if settings.eager_load or running_on_zero_gpu():  # ZeroGPU needs the model loaded before serving
        service.load()
    else:
        service.start_loading()
    demo = build_demo(service)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return WebApp(demo, service)
