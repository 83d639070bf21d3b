"""The page as built (its Gradio config), without serving it: which controls show for which settings."""

from __future__ import annotations

from app.prompt_help import ShapesDescriber, ShapesInstructor
from app.service import EditorService
from app.testing import tiny_loader, tiny_settings
from app.ui import build_demo


def props_by_id(service: EditorService) -> dict[str, dict]:
    demo = build_demo(service)
    return {c["props"]["elem_id"]: c["props"] for c in demo.config["components"] if c["props"].get("elem_id")}


def test_prompt_help_shows_only_with_a_helper(tmp_path):
    without = EditorService(tiny_settings(tmp_path / "plain"), loader=tiny_loader())
    assert without.prompt_helpers() == (None, None)  # kind sd3, no --captioner / --rewriter
    props = props_by_id(without)
    assert props["describe"]["visible"] is False and props["instruction-row"]["visible"] is False

    shapes = EditorService(tiny_settings(tmp_path / "shapes", kind="shapes-sd3"), loader=tiny_loader())
    describer, instructor = shapes.prompt_helpers()  # the shapes model's own, no flag needed
    assert isinstance(describer, ShapesDescriber) and isinstance(instructor, ShapesInstructor)
    props = props_by_id(shapes)
    assert props["describe"]["visible"] is True and props["instruction-row"]["visible"] is True
    assert "shapes classifier" in props["describe"]["value"]


def test_the_variations_gallery_and_edit_again_are_on_the_page(tmp_path):
    props = props_by_id(EditorService(tiny_settings(tmp_path), loader=tiny_loader()))
    assert props["candidates"]["visible"] is False  # shown once an edit made several
    assert props["variations"]["minimum"] == 1 and props["variations"]["maximum"] == 8
    assert {"edit-again", "replay", "replay-note"} <= set(props)


def test_after_a_cancelled_run_the_finish_step_changes_nothing(tmp_path):
    # a run that Cancel stopped returns only its "Cancelled" summary; the step after it must skip every
    # output (an empty dict would be read as one value: "Error" badges on the page)
    demo = build_demo(EditorService(tiny_settings(tmp_path), loader=tiny_loader()))
    finish = next(block_fn for block_fn in demo.fns.values() if getattr(block_fn.fn, "__name__", "") == "finish")
    updates = finish.fn(None, [], None)
    assert set(updates) == set(finish.outputs) and all(value == {"__type__": "update"} for value in updates.values())
