"""The API-only endpoints: ``/describe``, ``/instruct``, ``/replay`` and ``/edit_again``.

The page does these with its own controls (Describe, Instruction, the replay box, Edit again); a
script or an agent gets each as a named endpoint (``gradio_client``) and, with ``--mcp``, as an MCP
tool of the same name. Each is an event with no trigger on the page (``gr.on([])``): it exists only
in the API. Its function maps the endpoint's parameters onto the API layer (``app/api.py``, which
the page's events call too) and its result onto plain returns; its description is the API layer's
summary with every parameter's meaning (``API_HELP``), as for ``/edit`` and ``/compare``.

Their inputs are the page's own components where the page has one for the parameter (so a value
means the same and is checked the same way: ``checked_by_the_app``), plus a hidden file box for the
PNG that ``/replay`` and ``/edit_again`` read; their returns are hidden components, except
``/edit_again``, which returns what ``/edit`` does. Every file input of the API (these, the source
image and the mask) reads this server's own file URLs and answers a URL it cannot fetch with a
message, and the MCP server serves agents (``app/agents.py``).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.components import Component

from app.agents import serve_agents
from app.api import describe, edit_again, instruct, refuse_unless_valid, replay, summary
from app.components import HELPER_EVENT, checked_by_the_app, describe_endpoint, inputs_for, session_of
from app.controls import CONTROL_NAMES, FILE_PARAMETERS, LABELS, EditControls
from app.handlers import EditCancelled
from app.page import Page
from app.runs import CANCELLED, DEVICE_QUEUE, device_task, notify, progress_callback
from app.service import EditorService

API_ONLY = dict(HELPER_EVENT, api_visibility="public")  # off the device queue, errors reach the client
# what /replay returns as settings: /edit's parameters, so a client can send them back as they are
REPLAYED_SETTINGS = tuple(name for name in CONTROL_NAMES if name != "variations")


def replayed_settings(controls: EditControls) -> dict[str, Any]:
    """The replayed controls as /edit's keyword arguments."""
    return {name: getattr(controls, name) for name in REPLAYED_SETTINGS}


def wire_endpoints(page: Page, service: EditorService) -> None:
    """The four API-only endpoints, with their hidden inputs and returns at the end of the page."""
    with gr.Column(visible=False):
        # no file_types: Gradio's own refusal names no parameter; the app's reader says what is wrong
        files = {name: gr.File(label=label, type="filepath")
                 for name, label in (("png", LABELS["replay"]), ("result", LABELS["result"]))}
        text = {name: gr.Textbox(label=name) for name in ("source_prompt", "target_prompt", "note")}
        settings, image, mask = gr.JSON(label="settings"), gr.File(label="image"), gr.File(label="mask")
    named = {"image": page.image, "mask": page.masks.mask, "instruction": page.prompt_help.instruction, **files,
             **page.controls.by_name()}
    serve_agents(gr.context.Context.root_block, {name: named[name] for name in FILE_PARAMETERS})

    def describe_image(image: str | None) -> tuple[str, str]:
        described = describe(service, image)
        return described.source_prompt, described.note

    def write_target(instruction: str, source_prompt: str | None = None, image: str | None = None
                     ) -> tuple[str, str, str]:
        result = refuse_unless_valid(instruct(service, instruction, source_prompt, image))
        return result.target, result.source, result.message

    def read_settings(png: str | None, request: gr.Request = None
                      ) -> tuple[dict[str, Any], str | None, str | None, str]:
        replayed = replay(service, png, session=session_of(request))
        return replayed_settings(replayed.controls), replayed.image, replayed.mask, "  \n".join(replayed.notes)

    for fn, action, outputs in (
            (describe_image, describe, [text["source_prompt"], text["note"]]),
            (write_target, instruct, [text["target_prompt"], text["source_prompt"], text["note"]]),
            (read_settings, replay, [settings, image, mask, text["note"]])):
        # each endpoint is named after its API-layer action, whose summary describes it
        describe_endpoint(fn, summary(action), name=action.__name__)
        gr.on([], fn, inputs_for(fn, named), outputs, api_name=action.__name__, **API_ONLY)
    _wire_edit_again(page, service, named)


def _optional_input(name: str, component: Component) -> Component:
    """A hidden input for /edit_again's parameter ``name`` (the page's control is ``component``) with
    no initial value: Gradio makes a component's initial value the API's default, and a parameter
    left out must arrive as None (the result's own setting). Values are checked by the app."""
    if isinstance(component, gr.Textbox):
        return gr.Textbox(value=None, label=component.label)
    if isinstance(component, gr.Checkbox):  # a checkbox cannot be empty
        return checked_by_the_app(gr.Radio([True, False], value=None, label=component.label))
    if isinstance(component, gr.Radio):
        return checked_by_the_app(gr.Radio(component.choices, value=None, label=component.label))
    if isinstance(component, (gr.Slider, gr.Number)):
        return checked_by_the_app(gr.Number(value=None, label=component.label))
    raise TypeError(f"/edit_again has no optional input for {name!r} ({type(component).__name__})")


def _wire_edit_again(page: Page, service: EditorService, named: dict[str, Any]) -> None:
    """/edit_again: an edit on the device queue, returning what /edit returns."""
    with gr.Column(visible=False):
        named = {**named, **{name: _optional_input(name, component)
                             for name, component in page.controls.by_name().items()}}

    @device_task
    def run_edit_again(result: str | None, target_prompt: str, source_prompt: str | None = None,
                       use_tokens: bool | None = None, tar_cfg: float | None = None, src_cfg: float | None = None,
                       n_max: float | None = None, steps: float | None = None, n_min: float | None = None,
                       n_avg: float | None = None, seed: float | None = None, randomize_seed: bool | None = None,
                       max_side: float | None = None, guidance: str | None = None, token_branches: str | None = None,
                       mask_mode: str | None = None, mask: str | None = None, variations: float | None = None,
                       auto: bool | None = None, noise_offset: float | None = None, request: gr.Request = None,
                       progress: gr.Progress = gr.Progress()) -> tuple:
        changes = dict(target_prompt=target_prompt, source_prompt=source_prompt, use_tokens=use_tokens,
                       tar_cfg=tar_cfg, src_cfg=src_cfg, n_max=n_max, steps=steps, n_min=n_min, n_avg=n_avg, seed=seed,
                       randomize_seed=randomize_seed, max_side=max_side, guidance=guidance,
                       token_branches=token_branches, mask_mode=mask_mode, variations=variations, auto=auto,
                       noise_offset=noise_offset)
        try:
            outcome = edit_again(service, result, changes, session_of(request), progress_callback(progress), mask)
        except EditCancelled:
            return None, None, [], CANCELLED, None, None
        notify(outcome)
        return ((outcome.source_path, outcome.final.path), outcome.final.path, outcome.all_files(), outcome.summary,
                outcome.details, outcome.final.region_path)

    describe_endpoint(run_edit_again, summary(edit_again), name="edit_again")
    gr.on([], run_edit_again, inputs_for(run_edit_again, named),
          [page.slider, page.result, page.files, page.summary, page.details, page.masks.region],
          api_name="edit_again", concurrency_id=DEVICE_QUEUE, concurrency_limit=1, api_visibility="public")

