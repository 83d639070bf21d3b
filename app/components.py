"""Small Gradio pieces the page's modules share: an image input that hands its file over unopened,
the event option of light events, and endpoints' inputs and docstrings matched to parameter names.

``app/ui.py`` builds the page from them, ``app/mask_controls.py`` its mask controls.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

import gradio as gr
from gradio.components import Component
from gradio.context import LocalContext

from app.controls import API_HELP

# presets, history, copy, the mask's helpers: instant (no queue) and not part of the API
LIGHT_EVENT = dict(queue=False, api_visibility="private")
# Edit again, replay, picking a candidate, prompt help: quick and private too, off the device queue,
# but queued: only a queued event's gr.Error reaches the page as its message (an unqueued one fails
# its HTTP request, and the page shows a bare "Error" on each output), and only it can gr.Info
HELPER_EVENT = dict(queue=True, concurrency_id="helpers", concurrency_limit=None, api_visibility="private",
                    show_progress="hidden")
C = TypeVar("C", bound=Component)


def unopened_image(**options: Any) -> gr.Image:
    """A ``gr.Image`` that hands the uploaded file's path to the handler unopened (the source image
    and the mask image).

    The stock preprocessing opens the file with PIL, so a non-image sent through the API fails
    there and the page shows a bare "Error". The handler opens it with the library's readers
    instead (``softrepa.images.load_rgb``, ``editing.masks.read_mask``), which say what is wrong,
    and a mask keeps its transparency. Gradio has already checked that the path is one of its own
    uploads before ``preprocess`` runs.

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


def checked_by_the_app(component: C) -> C:
    """``component`` (a slider, number box or radio) handing its value to the handler unchecked.

    Gradio's own check compares a value with the range or choices the component was *created*
    with, whatever else the request sends: n_max 30 with steps 50 is refused because the n_max
    slider started at the shapes preset's T = 28, and its messages ("Value -5.0 is less than
    minimum value 0.0.", a Python type repr for a radio) name no control and print a traceback.
    The handler checks every value instead, where the rules live (``FlowEditParams.check``, the
    app's caps, the mask modes), and says which control to change. The page keeps the ranges it
    shows. A fractional value is passed as it is (a seed is rounded there, with a note).

    The API's description of the value drops the creation range too (it would mislead an API or
    MCP client just the same); what each parameter means comes from ``API_HELP``.
    """
    stock_info = component.api_info()

    def preprocess(payload: Any) -> Any:
        return payload

    def api_info() -> dict[str, Any]:
        return {key: value for key, value in stock_info.items() if key != "description"}

    component.preprocess = preprocess
    component.api_info = api_info
    return component


def inputs_for(fn: Callable, components: dict[str, Component]) -> list[Component]:
    """An event's inputs for ``fn``: the component named like each of its parameters, in the
    parameters' order (Gradio hands inputs over by position; the names decide the order).
    Parameters no component is named for must have defaults: Gradio fills those (request, progress)."""
    inputs = []
    for name, parameter in inspect.signature(fn).parameters.items():
        if name in components:
            inputs.append(components[name])
        elif parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__name__} takes {name!r} but no component is named so")
    return inputs


def describe_endpoint(fn: Callable, summary: str, name: str | None = None) -> Callable:
    """Give an API endpoint its docstring: ``summary``, then each parameter's meaning from
    ``API_HELP`` in Gradio's "Parameters:" layout (the API page and MCP read it), and ``name`` as its
    ``__name__`` (an MCP tool is named after the function). ``fn`` itself."""
    names = [parameter for parameter in inspect.signature(fn).parameters if parameter in API_HELP]
    fn.__doc__ = "\n".join([summary, "", "Parameters:", *(f"    {p}: {API_HELP[p]}" for p in names)])
    if name is not None:
        fn.__name__ = name
    return fn


def session_of(request: gr.Request | None) -> str:
    """The browser session an event comes from ("api" for API clients): its results folder, its Cancel."""
    return (request.session_hash if request is not None else None) or "api"


def client_gone() -> bool:
    """Whether the queued Gradio event running this code lost its client: cancelled
    (``gradio_client``'s ``job.cancel()``, the page's Cancel through ``cancels=``) or disconnected
    (a closed tab, a killed script). False outside a queued event (tests calling handlers).

    Gradio 6.31 does not stop a running function for either: its ``/cancel`` drops the event from
    the queue's active jobs at once (the device slot is free for the next request) and a lost
    stream marks the event not ``alive``, while the function's thread runs on, holding the editor,
    until the edit ends. The edits ask this between steps (the progress callback) and stop.
    Reads the queue's bookkeeping (``gradio`` is pinned; tests/app/test_server.py cancels a job
    through ``gradio_client`` and times the next one, so a change shows there).
    """
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    active_jobs = getattr(getattr(blocks, "_queue", None), "active_jobs", None)
    if event_id is None or active_jobs is None:
        return False
    for job in list(active_jobs):
        for event in job or []:
            if getattr(event, "_id", None) == event_id:
                return not getattr(event, "alive", True)
    return True  # no longer an active job: cancelled


def session_waits(blocks: gr.Blocks, session: str, concurrency_id: str) -> bool:
    """Whether ``session`` has an event of ``concurrency_id`` (an edit) in ``blocks``' queue that
    has not finished: waiting for the device, or started but not yet running the edit itself. Reads
    the queue's bookkeeping, as ``client_gone`` does."""
    queue = getattr(blocks, "_queue", None)
    if queue is None:
        return False
    events = getattr(queue, "event_ids_to_events", {})
    return any(getattr(events.get(event_id), "concurrency_id", None) == concurrency_id
               for event_id in list(getattr(queue, "pending_event_ids_session", {}).get(session, ())))
