"""The page: a ``gr.Blocks`` wired to ``app.handlers``, and ``launch``.

Layout: inputs on the left (image, the Mask choice with its brush and mask image, prompts,
tokens, preset, the three main sliders, an Advanced accordion, Edit / Compare / Cancel), results
on the right (before/after slider, the edit or the tokens-off / tokens-on pair, the region edited,
a summary line, PNG downloads, the parameters as JSON), then the examples and the session's
history (``_layout``, which returns them as a ``Page``). Events are wired in ``_wire_*``; the
mask's parts and events are in ``app/mask_controls.py``. Public API endpoints: ``/edit`` and
``/compare`` (see docs/app.md); every other event is private to the page.

Controls travel by name, never by position: ``ControlComponents`` has one component per
``EditControls`` field under the same name; events read and set them as {component: value}
dicts, and the endpoints' inputs are picked by their parameters' names (``inputs_for``). The
sliders' ranges come from ``FlowEditParams.ranges`` and the app's caps (``app.controls``).

One device: edits share one concurrency slot ("device") and wait in a bounded queue; light
events (presets, history, copy) skip the queue so they stay instant while an edit runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr
from gradio.components import Component

from app.components import LIGHT_EVENT, describe_endpoint, inputs_for, session_of, unopened_image
from app.controls import (CFG_RANGE, CONTROL_NAMES, LABELS, MAX_SEED, EditControls, default_preset, initial_controls,
                          preset_choices, preset_controls, slider_range)
from app.handlers import (EditOutcome, add_to_history, compare, edit, example_rows, history_entry, history_gallery,
                          reports_errors, select_example)
from app.mask_controls import MaskComponents, mask_inputs, region_image, wire_mask
from app.service import EditorService
from app.settings import AppSettings
from editing.flowedit import GUIDANCE_MODES, TOKEN_BRANCHES, FlowEditParams

log = logging.getLogger(__name__)

DEVICE_QUEUE = "device"  # the concurrency id every edit shares: one edit at a time on the one device
ZERO_GPU_SECONDS = 120  # the ZeroGPU slot an edit asks for (SD3 at 1024 px, compare: two edits)
CSS = """
#model-status {font-size: 0.9em}
#summary {min-height: 1.5em}
.hint {font-size: 0.85em; opacity: 0.8}
"""
# Small models (the bundled one edits 64 px images): show pictures scaled up with sharp pixels
# instead of a blurry thumbnail in a big empty box.
SMALL_IMAGE_CSS = """
#source-image img, #result img, #without-tokens img, #with-tokens img, #before-after img, #history img,
#region img, #mask-image img {
    image-rendering: pixelated; object-fit: contain; width: 100%; height: 100%;
}
"""
SMALL_IMAGE_SIDE = 256  # models whose largest input side is at most this get SMALL_IMAGE_CSS


def device_task(fn: Callable) -> Callable:
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces (the ``spaces`` package exists there): the GPU is
    attached only while ``fn`` runs. Elsewhere ``fn`` itself."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=ZERO_GPU_SECONDS)(fn)


def running_on_zero_gpu() -> bool:
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the controls, by name


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


def _slider_in_range(name: str, value: float, steps: float, n_max: float) -> gr.Slider:
    """The slider of ``name`` (n_max or n_min) with FlowEdit's range for T and n_max, its value moved into it."""
    low, high = slider_range(name, int(steps), int(n_max))
    return gr.Slider(minimum=low, maximum=high, value=min(max(int(value), low), high))


def _progress_callback(progress: gr.Progress) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress((done, total), desc="Editing", unit="steps")

    return report


def _notify(outcome: EditOutcome) -> None:
    for notice in outcome.notices:
        gr.Info(notice)


# ----------------------------------------------------------------------------- layout


@dataclass
class Page:
    """The page's components by name: ``_layout`` makes them, the ``_wire_*`` functions connect them."""

    controls: ControlComponents
    image: gr.Image
    masks: MaskComponents
    copy_prompt: gr.Button
    preset: gr.Dropdown
    edit_button: gr.Button
    compare_button: gr.Button
    cancel_button: gr.Button
    status: gr.Markdown
    slider: gr.ImageSlider
    result: gr.Image
    compare_row: gr.Row
    without_tokens: gr.Image
    with_tokens: gr.Image
    summary: gr.Markdown
    files: gr.File
    details: gr.JSON
    examples: gr.Dataset
    history: gr.Gallery
    history_state: gr.State
    last_outcome: gr.State
    timer: gr.Timer

    def outcome_outputs(self) -> list[Component]:
        """The results area: what ``outcome_updates`` sets."""
        return [self.slider, self.result, self.without_tokens, self.with_tokens, self.files, self.summary,
                self.details, self.compare_row, self.masks.region]

    def outcome_updates(self, outcome: EditOutcome | None) -> dict[Component, Any]:
        """What the results area shows for ``outcome``; None (an example without results) clears it."""
        if outcome is None:
            return {self.slider: None, self.result: None, self.without_tokens: None, self.with_tokens: None,
                    self.files: None, self.summary: "Press **Edit** or **Compare** to run this example.",
                    self.details: None, self.compare_row: gr.Row(visible=False),
                    **self.masks.outcome_updates(None)}
        pair = outcome.mode == "compare"
        return {self.slider: (outcome.source_path, outcome.final.path),
                self.result: gr.Image(value=None if pair else outcome.final.path, visible=not pair),
                self.without_tokens: outcome.images[0].path if pair else None,
                self.with_tokens: outcome.images[1].path if pair else None,
                self.files: outcome.files(), self.summary: outcome.summary,
                self.details: outcome.details, self.compare_row: gr.Row(visible=pair),
                **self.masks.outcome_updates(outcome)}


def _layout(service: EditorService) -> Page:
    """The components, inside the ``gr.Blocks`` being built: inputs left, results right, then the
    examples and the session's history."""
    gr.Markdown("## SoftREPA image editor\nDescribe the picture (source prompt) and the picture you want "
                "(target prompt). FlowEdit on Stable Diffusion 3 turns one into the other, optionally with "
                "SoftREPA soft tokens for closer text alignment.")
    parts: dict[str, Any] = {"status": gr.Markdown(service.status().message, elem_id="model-status"),
                             "history_state": gr.State([]), "last_outcome": gr.State(None)}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            parts.update(_input_column(service, initial_controls(service)))
        with gr.Column(scale=6, min_width=320):
            parts.update(_result_column())
    controls = ControlComponents(**{name: parts.pop(name) for name in CONTROL_NAMES})
    parts["masks"] = MaskComponents(mask=parts.pop("mask"), brush=parts.pop("mask_brush"),
                                    drawn=parts.pop("mask_drawn"), region=parts.pop("region"))
    parts.update(_examples_and_history(service, parts["image"], controls))
    parts["timer"] = gr.Timer(1.0, active=service.status().state == "loading")
    return Page(controls=controls, **parts)


def _input_column(service: EditorService, init: EditControls) -> dict[str, Component]:
    """Image, mask, prompts, tokens, preset, the three main sliders, the Advanced accordion, the buttons."""
    image = unopened_image(label=LABELS["image"], sources=["upload", "clipboard"], height=300, elem_id="source-image")
    masks = mask_inputs(init)
    source_prompt = gr.Textbox(label=LABELS["source_prompt"], lines=2, elem_id="source-prompt",
                               placeholder="what the picture shows, e.g. 'a cat sitting on a sofa'")
    target_prompt = gr.Textbox(label=LABELS["target_prompt"], lines=2, elem_id="target-prompt",
                               placeholder="the same sentence with your change, e.g. 'a dog sitting on a sofa'")
    copy_prompt = gr.Button("Copy the source prompt into the target", size="sm")
    with gr.Row():
        use_tokens = gr.Checkbox(value=init.use_tokens, label=LABELS["use_tokens"], interactive=service.has_tokens,
                                 elem_id="use-tokens", info="SoftREPA tokens: closer to the target prompt")
        preset = gr.Dropdown(choices=preset_choices(), value=default_preset(service), label="Preset",
                             info="resets the sliders", scale=2)
    n_max = gr.Slider(*slider_range("n_max", init.steps, init.n_max), value=init.n_max, step=1, label=LABELS["n_max"],
                      elem_id="n-max", info="how many of the T steps edit: higher changes more, lower keeps more of "
                                            "the input")
    tar_cfg = gr.Slider(*CFG_RANGE, value=init.tar_cfg, step=0.5, label=LABELS["tar_cfg"],
                        info="how strongly to follow the target prompt")
    src_cfg = gr.Slider(*CFG_RANGE, value=init.src_cfg, step=0.5, label=LABELS["src_cfg"],
                        info="guidance of the source branch")
    with gr.Accordion("Advanced", open=False):
        advanced = _advanced_controls(service, init)
    with gr.Row():
        edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
        compare_button = gr.Button("Compare tokens", interactive=service.has_tokens, elem_id="compare-button")
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
    return dict(image=image, **masks, source_prompt=source_prompt, target_prompt=target_prompt, copy_prompt=copy_prompt,
                use_tokens=use_tokens, preset=preset, n_max=n_max, tar_cfg=tar_cfg, src_cfg=src_cfg, **advanced,
                edit_button=edit_button, compare_button=compare_button, cancel_button=cancel_button)


def _advanced_controls(service: EditorService, init: EditControls) -> dict[str, Component]:
    steps = gr.Slider(*slider_range("steps", init.steps, init.n_max), value=init.steps, step=1, label=LABELS["steps"],
                      info="scheduler steps over the whole noise range")
    n_min = gr.Slider(*slider_range("n_min", init.steps, init.n_max), value=init.n_min, step=1, label=LABELS["n_min"],
                      info="the last editing steps sample the target plainly: more detail, less faithful")
    n_avg = gr.Slider(*slider_range("n_avg", init.steps, init.n_max), value=init.n_avg, step=1, label=LABELS["n_avg"],
                      info="smoother edits, n_avg times slower")
    with gr.Row():
        seed = gr.Number(value=init.seed, precision=0, minimum=FlowEditParams().ranges()["seed"][0], maximum=MAX_SEED,
                         label=LABELS["seed"])
        randomize_seed = gr.Checkbox(value=init.randomize_seed, label=LABELS["randomize_seed"],
                                     info="a new seed each run (shown after the run)")
    side_min, side_max, side_step = service.side_range()
    max_side = gr.Slider(side_min, side_max, value=init.max_side, step=side_step, label=LABELS["max_side"],
                         info="larger inputs are downscaled to this")
    guidance = gr.Radio(list(GUIDANCE_MODES), value=init.guidance, label=LABELS["guidance"],
                        info="standard u + w(c - u); authors: the SoftREPA code's target c + w(c - u)")
    token_branches = gr.Radio(list(TOKEN_BRANCHES), value=init.token_branches, label=LABELS["token_branches"],
                              info="soft tokens on both branches (the paper) or the target only")
    return dict(steps=steps, n_min=n_min, n_avg=n_avg, seed=seed, randomize_seed=randomize_seed, max_side=max_side,
                guidance=guidance, token_branches=token_branches)


def _result_column() -> dict[str, Component]:
    """Before/after slider, the edit or the tokens-off / tokens-on pair, summary, PNG files, parameters."""
    images = dict(type="filepath", format="png", interactive=False, height=300, buttons=["download", "fullscreen"])
    slider = gr.ImageSlider(label="Before / after", type="filepath", height=360, elem_id="before-after")
    result = gr.Image(label="Edited", elem_id="result", **images)
    with gr.Row(visible=False) as compare_row:
        without_tokens = gr.Image(label="Without soft tokens", elem_id="without-tokens", **images)
        with_tokens = gr.Image(label="With soft tokens", elem_id="with-tokens", **images)
    region = region_image()
    summary = gr.Markdown(label="Summary", show_label=False, elem_id="summary")
    files = gr.File(label="PNG files", file_count="multiple", interactive=False, elem_id="png-files")
    gr.Markdown("The PNG files carry the prompts, seed, every parameter and the mask in their metadata "
                "(`editing.editor.read_png_metadata`); a masked edit's mask is also beside it (`.mask.png`, "
                "white = edited).", elem_classes=["hint"])
    with gr.Accordion("Seed and parameters used (JSON)", open=False):
        details = gr.JSON(label="Parameters")
    return dict(slider=slider, result=result, compare_row=compare_row, without_tokens=without_tokens,
                with_tokens=with_tokens, region=region, summary=summary, files=files, details=details)


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
        _wire_runs(page, service)
        _wire_controls(page, service)
        wire_mask(page.masks, page.controls.mask_mode, page.image, service)
        _wire_examples_and_history(page, service)
        _wire_status(page, service, demo)
    return demo


def _wire_runs(page: Page, service: EditorService) -> None:
    """Edit, Compare (the two public API endpoints: their parameters are the API's) and Cancel."""

    @device_task
    def run_edit(image: str | None, source_prompt: str, target_prompt: str, use_tokens: bool, tar_cfg: float,
                 src_cfg: float, n_max: float, steps: float, n_min: float, n_avg: float, seed: float,
                 randomize_seed: bool, max_side: float, guidance: str, token_branches: str, mask_mode: str,
                 mask: str | None = None, request: gr.Request = None,
                 progress: gr.Progress = gr.Progress()) -> dict[Component, Any]:
        controls = EditControls(source_prompt=source_prompt, target_prompt=target_prompt, use_tokens=use_tokens,
                                tar_cfg=tar_cfg, src_cfg=src_cfg, n_max=n_max, steps=steps, n_min=n_min, n_avg=n_avg,
                                seed=seed, randomize_seed=randomize_seed, max_side=max_side, guidance=guidance,
                                token_branches=token_branches, mask_mode=mask_mode)
        outcome = edit(service, image, controls, session_of(request), _progress_callback(progress), mask=mask)
        _notify(outcome)
        return {page.slider: (outcome.source_path, outcome.final.path), page.result: outcome.final.path,
                page.files: outcome.files(), page.summary: outcome.summary, page.details: outcome.details,
                page.masks.region: outcome.final.region_path, page.last_outcome: outcome}

    @device_task
    def run_compare(image: str | None, source_prompt: str, target_prompt: str, tar_cfg: float, src_cfg: float,
                    n_max: float, steps: float, n_min: float, n_avg: float, seed: float, randomize_seed: bool,
                    max_side: float, guidance: str, token_branches: str, mask_mode: str,
                    mask: str | None = None, request: gr.Request = None,
                    progress: gr.Progress = gr.Progress()) -> dict[Component, Any]:
        controls = EditControls(source_prompt=source_prompt, target_prompt=target_prompt, use_tokens=True,
                                tar_cfg=tar_cfg, src_cfg=src_cfg, n_max=n_max, steps=steps, n_min=n_min, n_avg=n_avg,
                                seed=seed, randomize_seed=randomize_seed, max_side=max_side, guidance=guidance,
                                token_branches=token_branches, mask_mode=mask_mode)
        outcome = compare(service, image, controls, session_of(request), _progress_callback(progress), mask=mask)
        _notify(outcome)
        without, with_ = outcome.images
        return {page.slider: (outcome.source_path, with_.path), page.without_tokens: without.path,
                page.with_tokens: with_.path, page.files: outcome.files(), page.summary: outcome.summary,
                page.details: outcome.details, page.masks.region: outcome.final.region_path,
                page.last_outcome: outcome}

    # mask=None above makes the mask optional in the API (Gradio reads the default; the image box has no value).
    # The API's documentation of each endpoint: a summary and every parameter's meaning (API_HELP).
    describe_endpoint(run_edit, "Edit the image from the source prompt to the target prompt (tokens on or off), "
                                "optionally only inside a mask.")
    describe_endpoint(run_compare, "The same edit (same seed, same mask) without and with soft tokens.")

    def finish(outcome: EditOutcome, history_entries: list[EditOutcome]) -> dict[Component, Any]:
        """After a run: history, the seed actually used, which result areas show (not in the endpoints'
        returns: an API client gets plain values, never visibility updates)."""
        entries = add_to_history(history_entries, outcome, service.settings.history_size)
        pair = outcome.mode == "compare"
        return {page.history: history_gallery(entries), page.history_state: entries,
                page.controls.seed: outcome.controls.seed, page.result: gr.Image(visible=not pair),
                page.compare_row: gr.Row(visible=pair),
                page.masks.region: gr.Image(visible=outcome.final.region_path is not None)}

    named = {"image": page.image, "mask": page.masks.mask, **page.controls.by_name()}
    finish_outputs = [page.history, page.history_state, page.controls.seed, page.result, page.compare_row,
                      page.masks.region]
    runs = []
    for button, run, outputs, api_name in (
            (page.edit_button, run_edit, [page.result], "edit"),
            (page.compare_button, run_compare, [page.without_tokens, page.with_tokens], "compare")):
        event = button.click(run, inputs_for(run, named),
                             [page.slider, *outputs, page.files, page.summary, page.details, page.masks.region,
                              page.last_outcome],
                             api_name=api_name, concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
        event.success(finish, [page.last_outcome, page.history_state], finish_outputs, **LIGHT_EVENT)
        runs.append(event)

    def request_cancel(request: gr.Request = None) -> None:
        if service.cancel(session_of(request)):
            gr.Info("Cancelling: the edit stops after its current step.")

    page.cancel_button.click(request_cancel, None, None, cancels=runs, **LIGHT_EVENT)


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
        return _slider_in_range("n_max", n_max, steps, n_max)

    def n_min_within_n_max(steps: float, n_max: float, n_min: float) -> gr.Slider:
        """n_min counts the last of the n_max editing steps: its slider's range follows n_max."""
        return _slider_in_range("n_min", n_min, steps, n_max)

    named = controls.by_name()
    controls.steps.change(n_max_within_steps, inputs_for(n_max_within_steps, named), [controls.n_max], **LIGHT_EVENT)
    controls.n_max.change(n_min_within_n_max, inputs_for(n_min_within_n_max, named), [controls.n_min], **LIGHT_EVENT)


def _wire_examples_and_history(page: Page, service: EditorService) -> None:
    """A click on an example or a history entry fills the inputs (the mask too), the controls and the results."""
    outputs = [page.image, page.masks.mask, *page.controls.as_outputs(), *page.outcome_outputs()]

    @reports_errors
    def load_example(values: dict[Component, Any]) -> dict[Component, Any]:
        selection = select_example(service, values[page.examples], page.controls.read(values))
        return {page.image: selection.image, page.masks.mask: None,  # a new picture: no mask (mode none)
                **page.controls.updates(selection.controls, service.has_tokens),
                **page.outcome_updates(selection.outcome)}

    page.examples.click(load_example, {page.examples, *page.controls.as_set()}, outputs, **LIGHT_EVENT)

    @reports_errors
    def restore(history_entries: list[EditOutcome], event: gr.SelectData) -> dict[Component, Any]:
        entry = history_entry(history_entries, event.index)
        return {page.image: entry.source_path, page.masks.mask: entry.mask,  # drawn: the mask it used
                **page.controls.updates(entry.controls, service.has_tokens),
                **page.outcome_updates(entry)}

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
        return CSS + (SMALL_IMAGE_CSS if self.service.side_range()[1] <= SMALL_IMAGE_SIDE else "")

    def launch(self, *, block: bool = True) -> str:
        """Serve on the settings' host and port; returns the local URL (``block``: until interrupted)."""
        settings = self.settings
        _, url, _ = self.demo.launch(
            server_name=settings.host, server_port=settings.port, max_file_size=settings.max_file_size,
            allowed_paths=[str(settings.temp_dir), str(settings.examples_dir)], show_error=False,
            prevent_thread_lock=True, quiet=True, theme=gr.themes.Soft(), css=self.css(),
            footer_links=["api", "gradio"])
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
