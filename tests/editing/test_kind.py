"""The model's kind travels with its pipeline (issue #27): the bundled model is known as
``shapes-sd3`` however it is loaded, an ambiguous pipeline is said to be assumed, never silently,
and the docs' Python example runs as written."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusion3Pipeline

from editing.editor import FlowEditor, read_png_metadata
from editing.params import FlowEditParams
from softrepa.known_warnings import KNOWN_WARNINGS, TRANSFORMERS_IMPORT_LOGGER, quiet_known_warnings
from softrepa.models import (KIND_MARKER, LOADED_KIND_ATTR, PipelineKind, load_pipeline, pipeline_kind, resolve_model,
                             write_kind_marker)
from softrepa.tiny import tiny_sd3_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = str(REPO_ROOT / "assets" / "shapes-sd3")
PICTURE = str(REPO_ROOT / "assets" / "examples" / "shapes-sd3" / "shapes-01-shape.png")
SOURCE = "a star that is tiny and blue and a triangle that is solid and orange"
TARGET = "a star that is tiny and blue and a star that is solid and orange"
FAST = FlowEditParams(steps=6, n_max=3, src_cfg=2.0, tar_cfg=7.5, seed=5)


def stock(folder) -> StableDiffusion3Pipeline:
    """A folder saved without T5 loaded with diffusers' own class, as its docs say (T5 parts None)."""
    return StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)


def edited_pixels(editor: FlowEditor) -> np.ndarray:
    return np.asarray(editor.edit(PICTURE, SOURCE, TARGET, FAST).image)


def test_the_bundled_model_is_known_however_it_is_loaded_and_edits_the_same(caplog):
    theirs, ours = stock(BUNDLED), load_pipeline(BUNDLED, "shapes-sd3")
    assert getattr(ours, LOADED_KIND_ATTR) == "shapes-sd3" and (Path(BUNDLED) / KIND_MARKER).is_file()
    with caplog.at_level(logging.WARNING):
        editors = [FlowEditor(ours), FlowEditor(theirs), FlowEditor(theirs, kind="shapes-sd3")]
    assert [(e.kind, e.max_sequence_length, e.kind_assumed) for e in editors] == [("shapes-sd3", 8, None)] * 3
    assert not caplog.records  # nothing was assumed, nothing said
    reference = edited_pixels(editors[2])
    for editor in editors[:2]:
        assert np.array_equal(edited_pixels(editor), reference)  # bit for bit: the same text length and presets


def test_an_ambiguous_pipeline_says_which_kind_was_assumed_once_and_in_each_result(caplog, tmp_path):
    pipe = tiny_sd3_pipeline(0)  # built in memory: no recorded kind, no folder
    with caplog.at_level(logging.WARNING, logger="editing.editor"):
        editor = FlowEditor(pipe, max_side=64, max_sequence_length=8)
    assert editor.kind == "sd3" and editor.kind_assumed.startswith(
        "the pipeline does not say which model kind it is (sd3, sd3.5-medium, sd3.5-large, shapes-sd3 all use "
        "StableDiffusion3Pipeline), so sd3 was assumed")
    assert "pass kind=... (FlowEditor(pipe, kind=...), --kind)" in editor.kind_assumed
    assert [record.getMessage() for record in caplog.records] == [f"FlowEditor: {editor.kind_assumed}"]
    result = editor.edit(PICTURE, SOURCE, TARGET, FAST)
    assert result.stats.kind_assumed == editor.kind_assumed
    metadata = read_png_metadata(result.save(tmp_path / "edit.png"))
    assert metadata["kind"] == "sd3" and metadata["kind_assumed"] == editor.kind_assumed
    told = FlowEditor(pipe, kind="sd3", max_side=64, max_sequence_length=8)
    assert told.kind_assumed is None and "kind_assumed" not in told.edit(PICTURE, SOURCE, TARGET, FAST).metadata()
    assert len(caplog.records) == 1  # said once, by the editor that assumed


def test_a_folders_marker_names_its_kind_and_a_recorded_kind_wins(tmp_path):
    folder = tmp_path / "tiny-sd3"
    tiny_sd3_pipeline(0).save_pretrained(folder)
    assert pipeline_kind(stock(folder)).assumed is not None  # no marker yet
    write_kind_marker(folder, "sd3.5-medium")
    assert resolve_model(str(folder)) == (str(folder), "sd3.5-medium")
    assert pipeline_kind(stock(folder)) == PipelineKind("sd3.5-medium")
    assert pipeline_kind(load_pipeline(str(folder), "sd3")).kind == "sd3"  # what load_pipeline was told wins
    (folder / KIND_MARKER).write_text('{"kind": "no-such-kind"}')  # a marker naming no kind is not believed
    assert pipeline_kind(stock(folder)).assumed is not None
    with pytest.raises(ValueError, match="unknown"):
        write_kind_marker(folder, "no-such-kind")


def test_only_the_two_torchvision_notices_are_dropped():
    quiet_known_warnings()
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    records = [logging.LogRecord(TRANSFORMERS_IMPORT_LOGGER, logging.WARNING, __file__, 1, message, None, None)
               for message in (f"{KNOWN_WARNINGS[0]} (not installed)", f"{KNOWN_WARNINGS[1]} (not installed)",
                               "`SomethingElse` requires torchvision", "another warning")]
    assert [logger.filter(record) for record in records] == [False, False, True, True]


@pytest.mark.parametrize("argv", [["-m", "editing", "--help"], ["-c", f"from softrepa.models import load_pipeline; "
                                                                      f"load_pipeline({BUNDLED!r}, 'shapes-sd3')"]],
                         ids=["help", "load"])
def test_the_command_lines_print_no_transformers_notice(argv):
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "requires torchvision" not in done.stdout + done.stderr
    assert "[transformers]" not in done.stdout + done.stderr


def test_the_docs_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    section = (REPO_ROOT / "docs" / "editing.md").read_text().split("## From Python (what the app uses)\n", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    assert len(blocks) == 2 and 'load_pipeline("assets/shapes-sd3", "shapes-sd3")' in blocks[0]
    (tmp_path / "assets").symlink_to(REPO_ROOT / "assets")  # the example's relative paths, output under tmp_path
    (tmp_path / "edits").mkdir()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/editing.md", "exec"), namespace)  # noqa: S102 - the project's own documentation
    printed = capsys.readouterr().out
    assert "shapes-sd3 8" in printed and printed.rstrip().endswith("shapes-sd3")
    assert read_png_metadata(tmp_path / "edits" / "python-api.png")["kind"] == "shapes-sd3"
    assert namespace["local"].mask_info["pasted_back"] is True
