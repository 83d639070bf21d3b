"""Small Gradio pieces the page's modules share: an image input that hands its file over unopened,
the event option of light events, and endpoints' inputs and docstrings matched to parameter names.

``app/ui.py`` builds the page from them, ``app/mask_controls.py`` its mask controls.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import gradio as gr
from gradio.components import Component

from app.controls import API_HELP

# presets, history, copy, the mask's helpers: instant (no queue) and not part of the API
LIGHT_EVENT = dict(queue=False, api_visibility="private")


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


def describe_endpoint(fn: Callable, summary: str) -> Callable:
    """Give an API endpoint its docstring: ``summary``, then each parameter's meaning from
    ``API_HELP`` in Gradio's "Parameters:" layout (the API page and MCP read it). ``fn`` itself."""
    names = [name for name in inspect.signature(fn).parameters if name in API_HELP]
    fn.__doc__ = "\n".join([summary, "", "Parameters:", *(f"    {name}: {API_HELP[name]}" for name in names)])
    return fn


def session_of(request: gr.Request | None) -> str:
    """The browser session an event comes from ("api" for API clients): its results folder, its Cancel."""
    return (request.session_hash if request is not None else None) or "api"
