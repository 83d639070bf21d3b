"""The page as built (its Gradio config), without serving it: which controls show for which settings."""

from __future__ import annotations

import subprocess
import sys

from app.prompt_help import ShapesDescriber, ShapesInstructor
from app.service import EditorService
from app.settings import REPO_ROOT
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
    updates = finish.fn(None, [])
    assert set(updates) == set(finish.outputs) and all(value == {"__type__": "update"} for value in updates.values())


def test_the_page_is_built_without_torch_or_the_model_libraries(tmp_path):
    # the page is served before the model loads (app/main.py), so building it must not import what
    # only the model needs: torch alone is about 1.6 s of the start-up (docs/benchmarks.md, App start-up)
    script = (
        "import sys\n"
        "from app.main import service_loading_after_serving, skip_gradio_stub_writer\n"
        "from app.settings import parse_settings\n"
        f"settings = parse_settings(['--temp-dir', {str(tmp_path)!r}])\n"
        "skip_gradio_stub_writer()\n"
        "from app.ui import create_app\n"
        "web = create_app(settings, service_loading_after_serving(settings))\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'editing.editor') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
