"""Auto strength in the app: the API layer's edit and compare with ``auto``, the strip's captions, taking
another candidate, the PNGs' record and their replay; on the tiny random SD3 app with a tiny random CLIP."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.api import compare, edit, replay
from app.handlers import choose_candidate, picks_per_tokens_state
from app.testing import fast_controls, tiny_app_service
from editing.auto import pick
from editing.editor import read_png_metadata


@pytest.fixture(scope="module")
def service(tmp_path_factory, clip_dir):
    _, service = tiny_app_service(tmp_path_factory.mktemp("app-auto"), scorer=str(clip_dir))
    service.load()
    return service


@pytest.fixture(scope="module")
def picture_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("auto-pictures") / "upload.png"
    Image.fromarray((np.random.RandomState(1).rand(32, 48, 3) * 255).astype(np.uint8)).save(path)
    return str(path)


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_auto_edits_four_strengths_marks_the_pick_and_records_the_sweep(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(steps=10, n_max=6, auto=True), session="a")
    rows = outcome.details["auto"]["candidates"]
    assert [row["n_max"] for row in rows] == [4, 5, 6, 7] and len(outcome.candidates) == 4
    assert outcome.chosen == outcome.details["auto"]["picked"] == pick(
        [r["alignment"] for r in rows], [r["preservation"] for r in rows], [r["n_max"] for r in rows],
        outcome.details["auto"]["sweep"]["margin"])
    picked = rows[outcome.chosen]
    assert outcome.final.caption == f"★ n{picked['n_max']} · {picked['alignment']:.1f}/{picked['preservation']:.0f}"
    assert f"picked n_max {rows[outcome.chosen]['n_max']}" in outcome.summary
    for index, image in enumerate(outcome.images):  # every candidate's PNG: the sweep, and which one it is
        record = read_png_metadata(image.path)["auto"]
        assert record["candidate"] == index and record["picked"] == outcome.chosen
    assert outcome.controls.auto and outcome.controls.n_max == 6  # the page keeps its setting for the next sweep


def test_taking_another_candidate_replays_to_exactly_it(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(steps=10, n_max=6, auto=True), session="b")
    other = next(index for index in range(4) if index != outcome.chosen)
    taken = choose_candidate(outcome, other)
    params = taken.details["params"]
    assert taken.final.path == outcome.images[other].path and params["n_max"] == [4, 5, 6, 7][other]
    assert params["noise_offset"] == 7 - params["n_max"]  # its noise lined up on the strongest candidate's
    assert (taken.controls.n_max, taken.controls.noise_offset, taken.controls.auto) == (
        params["n_max"], params["noise_offset"], False)  # the controls rerun exactly the taken candidate
    replayed = replay(service, taken.final.path)
    assert not replayed.controls.auto and replayed.controls.noise_offset == params["noise_offset"]
    rerun = edit(service, picture_path, replayed.controls, session="b")
    assert np.abs(pixels(rerun.final.path) - pixels(taken.final.path)).max() <= 2  # to batch-size rounding


def test_compare_with_auto_says_whether_the_tokens_won(service, picture_path):
    outcome = compare(service, picture_path, fast_controls(steps=10, n_max=6, auto=True), session="c")
    rows = outcome.details["auto"]["candidates"]
    assert len(rows) == 8 and {row["use_tokens"] for row in rows} == {False, True}
    won = outcome.details["auto"]["tokens_won"]
    assert won == rows[outcome.chosen]["use_tokens"]
    assert f"the soft tokens {'won' if won else 'lost'} for this picture" in outcome.summary
    without, with_ = picks_per_tokens_state(outcome)
    assert not rows[without]["use_tokens"] and rows[with_]["use_tokens"] and outcome.chosen in (without, with_)


def test_the_api_returns_every_candidate_with_its_scores(tmp_path, clip_dir, picture_path):
    from gradio_client import Client, handle_file

    from app.testing import FAST_CONTROLS
    from tests.app.test_server import serving

    with serving(tmp_path, scorer=str(clip_dir)) as (url, _, _):
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        _, edited, files, summary, details, _ = client.predict(
            image=handle_file(picture_path), source_prompt="a red circle", target_prompt="a blue circle",
            **dict(FAST_CONTROLS, steps=10, n_max=6), auto=True, api_name="/edit")
    rows = details["auto"]["candidates"]
    assert [row["n_max"] for row in rows] == [4, 5, 6, 7] and len(files) == 4  # each candidate's PNG
    assert all(isinstance(row["alignment"], float) and isinstance(row["preservation"], float) for row in rows)
    picked = details["auto"]["picked"]
    assert rows[picked]["picked"] and read_png_metadata(edited)["params"]["n_max"] == rows[picked]["n_max"]
    assert details["params"] == read_png_metadata(edited)["params"] and details["chosen"] == picked  # the result's
    assert "**Auto strength:** 4 candidates" in summary
