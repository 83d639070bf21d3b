"""The page's mask controls: the brush on the source image, the mask image, the "Region edited"
view, and their light events. The Mask choice itself (none / drawn / auto) is a control like the
sliders (``EditControls.mask_mode``); ``app/ui.py`` places these parts and wires them here.

The endpoints take the mask as ONE image file: the ``mask`` upload. The brush editor is never an
endpoint input: a private light event turns its strokes into that file (``app.masks``), so an API
client sends a plain image, and the page shows the very mask it will send. Rules of the page:

* the brush paints on the current source image (its background follows the image);
* a new source image uploaded by the person clears the mask (it was made for the old picture);
* choosing none or auto clears the mask and the strokes (the endpoints refuse a mask image with
  those modes, ``app.masks.mask_request``); the brush and the upload show only for drawn;
* strokes replace an uploaded mask; an emptied canvas clears a drawn mask, not an uploaded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.components import Component
from PIL import Image

from app.components import LIGHT_EVENT, checked_by_the_app, session_of, unopened_image
from app.controls import LABELS, MASK_MODES, EditControls
from app.handlers import EditOutcome, reports_errors
from app.masks import is_drawn_mask, painted_region, save_drawn_mask
from app.service import EditorService

BRUSH_COLOUR = ("rgb(255, 48, 48)", 0.6)  # the overlay's red, see-through so the picture shows under the paint
BRUSH_DEFAULT_SIDE = 512  # the brush's size before there is a picture: as for a 512 px one
MASK_MODE_INFO = ("none: the whole picture may change · drawn: only the region you paint or upload (the rest "
                  "stays as it is) · auto: the region the edit itself finds, shown with the result")


@dataclass
class MaskComponents:
    """The mask's components besides the Mask choice (which is ``ControlComponents.mask_mode``)."""

    mask: gr.Image  # the endpoints' mask input: uploaded, or made from the brush strokes
    brush: gr.ImageEditor  # paints on the source image; never an endpoint input
    drawn: gr.Column  # the brush and the upload, shown for mask mode "drawn"
    region: gr.Image  # result: the input with the edited region tinted

    def outcome_updates(self, outcome: EditOutcome | None) -> dict[Component, Any]:
        """The "Region edited" view for ``outcome`` (hidden without a mask)."""
        path = outcome.final.region_path if outcome is not None else None
        return {self.region: gr.Image(value=path, visible=path is not None)}


def brush_size(width: int, height: int) -> int:
    """The brush's radius in image pixels for a picture: 1/20 of its short side (Gradio's "auto",
    1/50, is a pixel on the shapes model's 64 px images)."""
    return max(2, round(min(width, height) / 20))


def brush(image_path: str | None = None) -> gr.Brush:
    """The brush for the picture at ``image_path`` (its size follows the picture; as for a
    ``BRUSH_DEFAULT_SIDE`` picture before there is one)."""
    try:
        with Image.open(image_path) as image:  # reads the header only
            size = image.size
    except (OSError, ValueError, TypeError, AttributeError, Image.DecompressionBombError):  # none yet, or not one
        size = (BRUSH_DEFAULT_SIDE, BRUSH_DEFAULT_SIDE)
    return gr.Brush(default_size=brush_size(*size), colors=[BRUSH_COLOUR], color_mode="fixed")


def painter_on(image_path: str | None) -> gr.ImageEditor:
    """The brush editor's update for a source image: the picture as its background, no strokes,
    the brush sized for it."""
    return gr.ImageEditor(value=image_path, brush=brush(image_path))


def mask_inputs(init: EditControls) -> dict[str, Component]:
    """The Mask choice, then (shown for drawn) the brush on the source image and the mask image."""
    # an endpoint input: app.masks.mask_request checks the mode, naming the control (checked_by_the_app)
    mask_mode = checked_by_the_app(gr.Radio(list(MASK_MODES), value=init.mask_mode, label=LABELS["mask_mode"],
                                            info=MASK_MODE_INFO, elem_id="mask-mode"))
    with gr.Column(visible=init.mask_mode == "drawn") as drawn:
        painter = gr.ImageEditor(
            label=LABELS["mask_brush"], type="pil", sources=(), transforms=(), layers=False, interactive=True,
            height=300, elem_id="mask-brush", placeholder="Upload a source image first: the brush paints on it.",
            brush=brush(None))
        mask = unopened_image(label=LABELS["mask"], sources=["upload", "clipboard"], interactive=True, height=200,
                              elem_id="mask-image")
        gr.Markdown("Paint on the picture, or upload a mask: white (or, in a transparent image, painted) = may "
                    "change. The same aspect as the source image; it is resized and cropped with it.",
                    elem_classes=["hint"])
    return dict(mask_mode=mask_mode, mask_drawn=drawn, mask_brush=painter, mask=mask)


def region_image() -> gr.Image:
    return gr.Image(label="Region edited (tinted red)", type="filepath", format="png", interactive=False, height=300,
                    visible=False, buttons=["download", "fullscreen"], elem_id="region")


def wire_mask(masks: MaskComponents, mask_mode: gr.Radio, image: gr.Image, service: EditorService) -> None:
    """The mask's light events (module docstring): none is in the API."""

    image.change(painter_on, [image], [masks.brush], **LIGHT_EVENT)
    image.input(lambda: None, None, [masks.mask], **LIGHT_EVENT)  # the person's new picture: the old mask goes

    def show_for_mode(mode: str, image_path: str | None) -> dict[Component, Any]:
        drawn = mode == "drawn"
        updates: dict[Component, Any] = {masks.drawn: gr.Column(visible=drawn)}
        if not drawn:
            updates.update({masks.mask: None, masks.brush: painter_on(image_path)})
        return updates

    mask_mode.change(show_for_mode, [mask_mode, image], [masks.drawn, masks.mask, masks.brush], **LIGHT_EVENT)

    @reports_errors
    def strokes_to_mask(strokes: dict[str, Any] | None, mask: str | None, request: gr.Request = None) -> Any:
        values = painted_region(strokes)
        if values is None:
            return None if is_drawn_mask(mask) else gr.skip()
        return save_drawn_mask(values, service.session_dir(session_of(request)))

    # input, not change: only the person's strokes, never the background following a new source image
    masks.brush.input(strokes_to_mask, [masks.brush, masks.mask], [masks.mask], **LIGHT_EVENT)
