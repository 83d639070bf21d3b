"""The page: a ``gr.Blocks`` wired to ``app.handlers``, and ``launch``.

Layout: inputs on the left (image, prompts, tokens, preset, the three main sliders, an Advanced
accordion, Edit / Compare / Cancel), results on the right (before/after slider, the edit or the
tokens-off / tokens-on pair, a summary line, PNG downloads, the parameters as JSON), then the
examples and the session's history. Public API endpoints: ``/edit`` and ``/compare`` (see
docs/app.md); every other event is private to the page.

One device: edits share one concurrency slot ("device") and wait in a bounded queue; light
events (presets, history, copy) skip the queue so they stay instant while an edit runs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from app.handlers import (CFG_RANGE, CONTROL_NAMES, LABELS, MAX_N_AVG, MAX_SEED, MAX_STEPS, EditControls,
                          EditorService, EditOutcome, add_to_history, compare, default_preset, edit, example_rows,
                          history_entry, history_gallery, initial_controls, preset_choices, preset_controls,
                          reports_errors, select_example)
from app.settings import AppSettings
from editing.flowedit import GUIDANCE_MODES, TOKEN_BRANCHES

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
#source-image img, #result img, #without-tokens img, #with-tokens img, #before-after img, #history img {
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


def source_image(**options: Any) -> gr.Image:
    """A ``gr.Image`` that hands the uploaded file's path to the handler unopened.

    The stock preprocessing opens the file with PIL, so a non-image sent through the API fails
    there and the page shows a bare "Error". The handler opens it with
    ``softrepa.images.load_rgb`` instead, which says what is wrong. Gradio has already checked
    that the path is one of its own uploads before ``preprocess`` runs.

    The instance's ``preprocess`` is replaced rather than subclassing ``gr.Image``: Gradio writes a
    ``.pyi`` stub next to the source file of every component subclass.
    """
    image = gr.Image(type="filepath", image_mode=None, **options)
    stock_preprocess = image.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.path is None:  # a pasted image sent as a data: URL
            try:
                return stock_preprocess(payload)
            except Exception:  # noqa: BLE001 - any decoding failure means the same thing to a person
                raise gr.Error("The pasted data is not an image this app can read (PNG, JPEG, WebP ...).",
                               print_exception=False) from None
        return str(payload.path)

    image.preprocess = preprocess
    return image


def _controls(values: list[Any]) -> EditControls:
    return EditControls(**dict(zip(CONTROL_NAMES, values, strict=True)))


def _progress_callback(progress: gr.Progress) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress((done, total), desc="Editing", unit="steps")

    return report


def _session(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "api"


def _notify(outcome: EditOutcome) -> None:
    for notice in outcome.notices:
        gr.Info(notice)


def build_demo(service: EditorService) -> gr.Blocks:
    """The page for ``service``'s model (which may still be loading)."""
    settings = service.settings
    init = initial_controls(service)
    side_min, side_max, side_step = service.side_range()
    with gr.Blocks(title="SoftREPA image editor", delete_cache=(3600, int(settings.outputs_max_age_s))) as demo:
        gr.Markdown("## SoftREPA image editor\nDescribe the picture (source prompt) and the picture you want "
                    "(target prompt). FlowEdit on Stable Diffusion 3 turns one into the other, optionally with "
                    "SoftREPA soft tokens for closer text alignment.")
        status = gr.Markdown(service.status().message, elem_id="model-status")
        history_state = gr.State([])
        last_outcome = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                image = source_image(label=LABELS["image"], sources=["upload", "clipboard"], height=300,
                                     elem_id="source-image")
                source_prompt = gr.Textbox(label=LABELS["source_prompt"], lines=2, elem_id="source-prompt",
                                           placeholder="what the picture shows, e.g. 'a cat sitting on a sofa'")
                target_prompt = gr.Textbox(label=LABELS["target_prompt"], lines=2, elem_id="target-prompt",
                                           placeholder="the same sentence with your change, e.g. 'a dog sitting "
                                                       "on a sofa'")
                copy_prompt = gr.Button("Copy the source prompt into the target", size="sm")
                with gr.Row():
                    use_tokens = gr.Checkbox(value=init.use_tokens, label=LABELS["use_tokens"],
                                             interactive=service.has_tokens, elem_id="use-tokens",
                                             info="SoftREPA tokens: closer to the target prompt")
                    preset = gr.Dropdown(choices=preset_choices(), value=default_preset(service), label="Preset",
                                         info="resets the sliders", scale=2)
                n_max = gr.Slider(1, init.steps, value=init.n_max, step=1, label=LABELS["n_max"], elem_id="n-max",
                                  info="how many of the T steps edit: higher changes more, lower keeps more of the "
                                       "input")
                tar_cfg = gr.Slider(*CFG_RANGE, value=init.tar_cfg, step=0.5, label=LABELS["tar_cfg"],
                                    info="how strongly to follow the target prompt")
                src_cfg = gr.Slider(*CFG_RANGE, value=init.src_cfg, step=0.5, label=LABELS["src_cfg"],
                                    info="guidance of the source branch")
                with gr.Accordion("Advanced", open=False):
                    steps = gr.Slider(1, MAX_STEPS, value=init.steps, step=1, label=LABELS["steps"],
                                      info="scheduler steps over the whole noise range")
                    n_min = gr.Slider(0, init.n_max, value=init.n_min, step=1, label=LABELS["n_min"],
                                      info="the last editing steps sample the target plainly: more detail, less "
                                           "faithful")
                    n_avg = gr.Slider(1, MAX_N_AVG, value=init.n_avg, step=1, label=LABELS["n_avg"],
                                      info="smoother edits, n_avg times slower")
                    with gr.Row():
                        seed = gr.Number(value=init.seed, precision=0, minimum=0, maximum=MAX_SEED,
                                         label=LABELS["seed"])
                        randomize_seed = gr.Checkbox(value=init.randomize_seed, label=LABELS["randomize_seed"],
                                                     info="a new seed each run (shown after the run)")
                    max_side = gr.Slider(side_min, side_max, value=init.max_side, step=side_step,
                                         label=LABELS["max_side"], info="larger inputs are downscaled to this")
                    guidance = gr.Radio(list(GUIDANCE_MODES), value=init.guidance, label=LABELS["guidance"],
                                        info="standard u + w(c - u); authors: the SoftREPA code's target c + w(c - u)")
                    token_branches = gr.Radio(list(TOKEN_BRANCHES), value=init.token_branches,
                                              label=LABELS["token_branches"],
                                              info="soft tokens on both branches (the paper) or the target only")
                with gr.Row():
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                    compare_button = gr.Button("Compare tokens", interactive=service.has_tokens,
                                               elem_id="compare-button")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
            with gr.Column(scale=6, min_width=320):
                slider = gr.ImageSlider(label="Before / after", type="filepath", height=360,
                                        elem_id="before-after")
                result = gr.Image(label="Edited", type="filepath", format="png", interactive=False, height=300,
                                  buttons=["download", "fullscreen"], elem_id="result")
                with gr.Row(visible=False) as compare_row:
                    without_tokens = gr.Image(label="Without soft tokens", type="filepath", format="png",
                                              interactive=False, height=300, buttons=["download", "fullscreen"],
                                              elem_id="without-tokens")
                    with_tokens = gr.Image(label="With soft tokens", type="filepath", format="png",
                                           interactive=False, height=300, buttons=["download", "fullscreen"],
                                           elem_id="with-tokens")
                summary = gr.Markdown(label="Summary", show_label=False, elem_id="summary")
                files = gr.File(label="PNG files", file_count="multiple", interactive=False, elem_id="png-files")
                gr.Markdown("The PNG files carry the prompts, seed and every parameter in their metadata "
                            "(`editing.editor.read_png_metadata`).", elem_classes=["hint"])
                with gr.Accordion("Seed and parameters used (JSON)", open=False):
                    details = gr.JSON(label="Parameters")
        precomputed = any(example.has_outputs for example in service.examples())
        examples = gr.Dataset(components=[image, source_prompt, target_prompt], samples=example_rows(service),
                              type="index", label="Examples: click one to load it" + (
                                  " with its precomputed results" if precomputed else ", then press Edit"),
                              headers=[LABELS["image"], LABELS["source_prompt"], LABELS["target_prompt"]],
                              samples_per_page=8, elem_id="examples")
        history = gr.Gallery(label="History of this session (click an entry to restore its settings)", columns=8,
                             fit_columns=False, height=200, object_fit="contain", allow_preview=False,
                             interactive=False, elem_id="history")
        timer = gr.Timer(1.0, active=service.status().state == "loading")

        controls = dict(source_prompt=source_prompt, target_prompt=target_prompt, use_tokens=use_tokens,
                        tar_cfg=tar_cfg, src_cfg=src_cfg, n_max=n_max, steps=steps, n_min=n_min, n_avg=n_avg, seed=seed,
                        randomize_seed=randomize_seed, max_side=max_side, guidance=guidance,
                        token_branches=token_branches)
        control_inputs = [controls[name] for name in CONTROL_NAMES]
        compare_inputs = [controls[name] for name in CONTROL_NAMES if name != "use_tokens"]
        outcome_outputs = [slider, result, without_tokens, with_tokens, files, summary, details, compare_row]

        def control_updates(values: EditControls) -> list[Any]:
            """Component values for ``values`` in CONTROL_NAMES order; the n_max / n_min bounds follow T."""
            updates = {name: getattr(values, name) for name in CONTROL_NAMES}
            updates["n_max"] = gr.Slider(value=values.n_max, maximum=values.steps)
            updates["n_min"] = gr.Slider(value=values.n_min, maximum=values.n_max)
            updates["use_tokens"] = values.use_tokens and service.has_tokens
            return [updates[name] for name in CONTROL_NAMES]

        def outcome_updates(outcome: EditOutcome | None) -> list[Any]:
            if outcome is None:  # an example without precomputed results: clear the old results
                return [None, None, None, None, None, "Press **Edit** or **Compare** to run this example.", None,
                        gr.Row(visible=False)]
            pair = outcome.mode == "compare"
            return [(outcome.source_path, outcome.final.path),
                    gr.Image(value=None if pair else outcome.final.path, visible=not pair),
                    outcome.images[0].path if pair else None,
                    outcome.images[1].path if pair else None,
                    [im.path for im in outcome.images], outcome.summary, outcome.details, gr.Row(visible=pair)]

        # --- the two API endpoints (named parameters = the API's parameter names) -----------------

        @device_task
        def run_edit(image: str | None, source_prompt: str, target_prompt: str, use_tokens: bool, tar_cfg: float,
                     src_cfg: float, n_max: float, steps: float, n_min: float, n_avg: float, seed: float,
                     randomize_seed: bool, max_side: float, guidance: str, token_branches: str,
                     request: gr.Request = None, progress: gr.Progress = gr.Progress()) -> list[Any]:
            """Edit the image from the source prompt to the target prompt (tokens on or off)."""
            values = _controls([source_prompt, target_prompt, use_tokens, tar_cfg, src_cfg, n_max, steps, n_min,
                                n_avg, seed, randomize_seed, max_side, guidance, token_branches])
            outcome = edit(service, image, values, _session(request), _progress_callback(progress))
            _notify(outcome)
            return [(outcome.source_path, outcome.final.path), outcome.final.path, [outcome.final.path],
                    outcome.summary, outcome.details, outcome]

        @device_task
        def run_compare(image: str | None, source_prompt: str, target_prompt: str, tar_cfg: float, src_cfg: float,
                        n_max: float, steps: float, n_min: float, n_avg: float, seed: float, randomize_seed: bool,
                        max_side: float, guidance: str, token_branches: str, request: gr.Request = None,
                        progress: gr.Progress = gr.Progress()) -> list[Any]:
            """The same edit (same seed) without and with soft tokens."""
            values = _controls([source_prompt, target_prompt, True, tar_cfg, src_cfg, n_max, steps, n_min, n_avg,
                                seed, randomize_seed, max_side, guidance, token_branches])
            outcome = compare(service, image, values, _session(request), _progress_callback(progress))
            _notify(outcome)
            without, with_ = outcome.images
            return [(outcome.source_path, with_.path), without.path, with_.path, [without.path, with_.path],
                    outcome.summary, outcome.details, outcome]

        def finish(outcome: EditOutcome, history_entries: list[EditOutcome]) -> tuple[Any, ...]:
            """After a run: history, the seed actually used, which result area shows."""
            entries = add_to_history(history_entries, outcome, settings.history_size)
            pair = outcome.mode == "compare"
            return (history_gallery(entries), entries, outcome.controls.seed, gr.Image(visible=not pair),
                    gr.Row(visible=pair))

        finish_outputs = [history, history_state, seed, result, compare_row]
        device_options = dict(concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
        edit_event = edit_button.click(
            run_edit, [image, *control_inputs], [slider, result, files, summary, details, last_outcome],
            api_name="edit", **device_options)
        edit_event.success(finish, [last_outcome, history_state], finish_outputs, api_visibility="private",
                           queue=False)
        compare_event = compare_button.click(
            run_compare, [image, *compare_inputs],
            [slider, without_tokens, with_tokens, files, summary, details, last_outcome], api_name="compare",
            **device_options)
        compare_event.success(finish, [last_outcome, history_state], finish_outputs, api_visibility="private",
                              queue=False)

        def request_cancel(request: gr.Request = None) -> None:
            if service.cancel(_session(request)):
                gr.Info("Cancelling: the edit stops after its current step.")

        cancel_button.click(request_cancel, None, None, cancels=[edit_event, compare_event], queue=False,
                            api_visibility="private")

        # --- light events: no queue, not in the API ---------------------------------------------

        light = dict(queue=False, api_visibility="private")
        copy_prompt.click(None, [source_prompt], [target_prompt], js="(source) => source")

        @reports_errors
        def apply_preset(name: str, *values: Any) -> list[Any]:
            return control_updates(preset_controls(name, _controls(list(values)), service.has_tokens))

        preset.input(apply_preset, [preset, *control_inputs], control_inputs, **light)

        def bound_by_steps(steps_value: float, n_max_value: float) -> gr.Slider:
            """n_max counts steps out of T: keep its slider within T."""
            return gr.Slider(maximum=int(steps_value), value=min(int(n_max_value), int(steps_value)))

        def bound_by_n_max(n_max_value: float, n_min_value: float) -> gr.Slider:
            """n_min counts the last of the n_max editing steps: keep its slider within n_max."""
            return gr.Slider(maximum=int(n_max_value), value=min(int(n_min_value), int(n_max_value)))

        steps.change(bound_by_steps, [steps, n_max], [n_max], **light)
        n_max.change(bound_by_n_max, [n_max, n_min], [n_min], **light)

        @reports_errors
        def load_example(index: int, *values: Any) -> list[Any]:
            selection = select_example(service, index, _controls(list(values)))
            return [selection.image, *control_updates(selection.controls), *outcome_updates(selection.outcome)]

        examples.click(load_example, [examples, *control_inputs], [image, *control_inputs, *outcome_outputs], **light)

        @reports_errors
        def restore(history_entries: list[EditOutcome], event: gr.SelectData) -> list[Any]:
            entry = history_entry(history_entries, event.index)
            return [entry.source_path, *control_updates(entry.controls), *outcome_updates(entry)]

        history.select(restore, [history_state], [image, *control_inputs, *outcome_outputs], **light)

        def refresh_status() -> tuple[Any, ...]:
            state = service.status()
            loading = state.state == "loading"
            return (state.message, gr.Timer(active=loading), gr.Checkbox(interactive=service.has_tokens),
                    gr.Button(interactive=service.has_tokens))

        status_outputs = [status, timer, use_tokens, compare_button]
        timer.tick(refresh_status, None, status_outputs, **light)
        demo.load(refresh_status, None, status_outputs, **light)
    return demo


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
