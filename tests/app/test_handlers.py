"""The web app's handlers, without a browser, on the tiny random-weight SD3 pipeline."""

from __future__ import annotations

import argparse
import dataclasses
import struct
import sys
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.controls import UserInputError, initial_controls, preset_controls
from app.examples import Example, manifest_path, produced_by, write_manifest
from app.api import compare, edit, next_edit
from app.handlers import (EditCancelled, add_to_history, choose_candidate, history_entry, history_gallery,
                          replace_in_history, reports_errors, select_example)
from app.loading import load_editor
from app.service import EditorService
from app.settings import BUNDLED_MODEL_DIR, AppSettings, SettingsError, parse_args, resolve_settings
from app.testing import TINY_MODEL_LABEL, fast_controls, tiny_app_service, tiny_loader, tiny_settings
from editing.editor import mask_from_metadata, mask_path, read_png_metadata

SIDES = (16, 64)  # the long sides the tiny model takes (app.controls.side_limits)


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app")


@pytest.fixture(scope="module")
def service(app_dir) -> EditorService:
    _, service = tiny_app_service(app_dir)
    service.load()
    return service


@pytest.fixture(scope="module")
def service_without_tokens(tmp_path_factory) -> EditorService:
    _, service = tiny_app_service(tmp_path_factory.mktemp("app-no-tokens"), tokens=False)
    return service


@pytest.fixture(scope="module")
def picture_path(app_dir) -> str:
    rng = np.random.RandomState(0)
    path = app_dir / "upload.png"
    Image.fromarray((rng.rand(32, 48, 3) * 255).astype(np.uint8)).save(path)
    return str(path)


def error_message(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.message


# ----------------------------------------------------------------------------- edits


def test_edit_writes_png_with_parameters_inside_the_temp_folder(service, picture_path, app_dir):
    calls = []
    outcome = edit(service, picture_path, fast_controls(), session="s1", progress=lambda d, t: calls.append((d, t)))
    assert outcome.mode == "edit" and len(outcome.images) == 1
    path = Path(outcome.final.path)
    assert path.is_file() and path.resolve().is_relative_to(app_dir.resolve())
    assert Path(outcome.source_path).resolve().is_relative_to(app_dir.resolve())
    with Image.open(path) as image:
        assert image.size == (48, 32)
    metadata = read_png_metadata(path)
    assert metadata["target_prompt"] == fast_controls().target_prompt
    assert metadata["params"]["n_max"] == 3 and metadata["params"]["seed"] == 3 and metadata["use_tokens"] is True
    assert outcome.details["seed"] == 3 and outcome.details["seconds"] > 0
    assert "Done in" in outcome.summary and "seed 3" in outcome.summary
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)  # a step-by-step progress bar


def test_compare_runs_tokens_off_and_on_with_the_same_seed(service, picture_path):
    calls = []
    outcome = compare(service, picture_path, fast_controls(use_tokens=False), session="s2",
                      progress=lambda d, t: calls.append((d, t)))
    without, with_ = outcome.images
    assert (without.use_tokens, with_.use_tokens) == (False, True)
    first, second = read_png_metadata(without.path), read_png_metadata(with_.path)
    assert first["params"]["seed"] == second["params"]["seed"] == 3
    assert (first["use_tokens"], second["use_tokens"]) == (False, True)
    pixels = [np.asarray(Image.open(p.path), dtype=np.int16) for p in outcome.images]
    assert np.abs(pixels[0] - pixels[1]).max() > 0  # the tokens change the result
    assert calls[-1] == (6, 6)  # both edits on one progress bar
    assert outcome.final is with_ and outcome.controls.use_tokens is True


def test_random_seed_is_reported_and_restorable(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(randomize_seed=True, seed=3), session="s3")
    used = outcome.details["seed"]
    assert outcome.controls.seed == used and outcome.controls.randomize_seed is False
    assert read_png_metadata(outcome.final.path)["params"]["seed"] == used


def test_resize_is_reported_as_a_notice(service, app_dir):
    path = app_dir / "large.png"
    Image.new("RGB", (200, 100), (200, 30, 30)).save(path)
    outcome = edit(service, str(path), fast_controls(max_side=40), session="s4")
    assert any("resized 200x100" in notice for notice in outcome.notices)
    assert max(Image.open(outcome.final.path).size) <= 40


def test_cancel_stops_the_edit_between_steps(service, picture_path):
    def press_cancel(done: int, total: int) -> None:
        if done == 1:
            assert service.cancel("s5")

    with pytest.raises(EditCancelled):  # not an error: the page says "Cancelled"
        edit(service, picture_path, fast_controls(), session="s5", progress=press_cancel)
    assert not service.cancel("s5")  # nothing running any more
    edit(service, picture_path, fast_controls(), session="s5")  # an old Cancel does not stop the next edit
    steps = []
    service.cancel_waiting("s5")  # Cancel pressed while the session's edit waited for the device
    with pytest.raises(EditCancelled):
        edit(service, picture_path, fast_controls(), session="s5", progress=lambda d, t: steps.append(d))
    assert steps == []  # stopped as it started
    edit(service, picture_path, fast_controls(), session="s5")  # the mark was for that edit only


# ----------------------------------------------------------------------------- errors a person can fix


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header that claims a huge image (a decompression bomb needs no more)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("make_image, expected", [
    (lambda d: None, "no source image"),
    (lambda d: "", "no source image"),
    (lambda d: str(d / "gone.png"), "did not arrive"),
    (lambda d: (d / "notes.txt").write_text("hello") and str(d / "notes.txt"), "not an image"),
    (lambda d: (d / "empty.png").write_bytes(b"") == 0 and str(d / "empty.png"), "empty"),
    (lambda d: Image.new("RGB", (4, 4)).save(d / "tiny.png") or str(d / "tiny.png"), "at least 8 px"),
    (lambda d: (d / "bomb.png").write_bytes(png_claiming_size(12000, 12000)) and str(d / "bomb.png"),
     "over the limit"),
], ids=["none", "blank", "missing", "text-file", "empty-file", "tiny", "huge"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_images_give_readable_errors(service, tmp_path, make_image, expected):
    with pytest.raises(gr.Error) as excinfo:
        edit(service, make_image(tmp_path), fast_controls(), session="bad-image")
    message = error_message(excinfo)
    assert expected in message
    assert "Traceback" not in message and str(tmp_path) not in message  # no server paths in the page


@pytest.mark.parametrize("overrides, expected", [
    (dict(source_prompt=""), "source prompt is empty"),
    (dict(target_prompt="   "), "target prompt is empty"),
    (dict(target_prompt="a red circle " * 30), "reads at most 75"),
    (dict(n_min=3, n_max=2), "cannot be larger than"),
    (dict(steps=6, n_max=9), "only 6 steps"),
    (dict(n_max=0), "returns the input unchanged"),
    (dict(steps=2.5), "whole number"),
    (dict(tar_cfg=99), "between 0 and 30"),
    (dict(tar_cfg=float("nan")), "Target guidance"),
    (dict(seed=-1), "Seed"),
    (dict(max_side=2), "Max side"),
    (dict(guidance="mine"), "standard, authors"),
], ids=["empty-source", "blank-target", "too-long", "n_min>n_max", "n_max>T", "n_max=0", "fractional-T",
        "cfg-range", "cfg-nan", "negative-seed", "tiny-max-side", "guidance"])
def test_bad_controls_give_readable_errors(service, picture_path, overrides, expected):
    with pytest.raises(gr.Error) as excinfo:
        edit(service, picture_path, fast_controls(**overrides), session="bad-controls")
    assert expected in error_message(excinfo)


def test_tokens_requested_without_tokens(service_without_tokens, picture_path):
    # an edit asking for tokens (the API's default may) runs without them and says so; Compare cannot
    asked = edit(service_without_tokens, picture_path, fast_controls(use_tokens=True))
    assert read_png_metadata(asked.final.path)["use_tokens"] is False and asked.controls.use_tokens is False
    assert any(notice.startswith("Soft tokens: This app runs without soft tokens") and "ran with tokens off" in notice
               for notice in asked.notices)
    with pytest.raises(gr.Error) as excinfo:
        compare(service_without_tokens, picture_path, fast_controls())
    assert error_message(excinfo).startswith("Compare tokens needs soft tokens") and "Use Edit" not in \
        error_message(excinfo)
    outcome = edit(service_without_tokens, picture_path, fast_controls(use_tokens=False))
    assert read_png_metadata(outcome.final.path)["use_tokens"] is False and outcome.notices == []


def test_unexpected_failures_become_a_short_message(caplog):
    @reports_errors
    def broken():
        raise RuntimeError("secret internals at /srv/x.py line 3")

    with pytest.raises(gr.Error) as excinfo:
        broken()
    assert "internal error (RuntimeError)" in error_message(excinfo)
    assert "secret" not in error_message(excinfo)
    assert "secret internals" in caplog.text  # the log keeps the details


# ----------------------------------------------------------------------------- masks (local edits)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_drawn_mask_file_restricts_the_edit_and_is_shown_saved_and_restored(service, picture_path, app_dir):
    # a transparent image at half the picture's size with the region painted (opaque: a hard mask)
    layer = np.zeros((16, 24, 4), np.uint8)
    layer[4:12, 6:18] = (255, 48, 48, 255)
    mask_file = app_dir / "painted.png"
    Image.fromarray(layer, "RGBA").save(mask_file)
    outcome = edit(service, picture_path, fast_controls(mask_mode="drawn"), session="m1", mask=str(mask_file))

    region = np.zeros((32, 48), bool)
    region[8:24, 12:36] = True  # the painted region at the picture's size
    changed = np.abs(pixels(outcome.final.path) - pixels(outcome.source_path)).max(axis=-1) > 0
    assert changed[region].any() and not changed[~region].any()  # outside: the input, pasted back
    saved = outcome.final.mask_path
    assert outcome.files() == [outcome.final.path, saved] and saved == str(mask_path(outcome.final.path))
    assert np.array_equal(np.asarray(Image.open(saved)) > 127, region)
    metadata = read_png_metadata(outcome.final.path)
    assert metadata["mask"]["coverage"] == pytest.approx(region.mean()) and metadata["mask"]["pasted_back"]
    assert np.array_equal(np.asarray(mask_from_metadata(metadata)) > 127, region)
    assert "drawn mask: 25.0 % of the image, pasted back" in outcome.summary
    assert outcome.details["mask_mode"] == "drawn" and outcome.details["mask"]["mode"] == "given"
    assert outcome.details["results"][0]["mask"]["coverage"] == pytest.approx(0.25)
    assert "The mask was 24x16; resized to the image's 48x32." in outcome.notices  # a notice on the page
    tinted = pixels(outcome.final.region_path)
    assert (tinted[region] != pixels(outcome.source_path)[region]).any()
    assert np.array_equal(tinted[~region], pixels(outcome.source_path)[~region])
    # history: the entry restores the mode and a mask that fits its restored input
    entry = history_entry(add_to_history([], outcome, limit=5), 0)
    assert entry.controls.mask_mode == "drawn" and entry.mask == saved
    assert history_gallery([entry])[0][1].endswith("drawn mask")


def test_auto_mask_finds_and_shows_the_region(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(mask_mode="auto"), session="m2")
    info = outcome.details["mask"]
    assert info["mode"] == "auto" and info["auto"] is not None and 0 < info["coverage"] <= 1
    assert Path(outcome.final.mask_path).is_file() and Path(outcome.final.region_path).is_file()
    assert outcome.mask is None  # nothing to restore into the mask image: auto finds it again
    assert "auto mask: " in outcome.summary


def test_no_mask_shows_no_region(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(), session="m3")
    assert outcome.files() == [outcome.final.path] and outcome.final.region_path is None
    assert outcome.details["mask"] is None and "mask" not in outcome.summary


def colour_image(path: Path) -> str:
    Image.new("RGB", (48, 32), (200, 30, 30)).save(path)
    return str(path)


@pytest.mark.parametrize("mode, make_mask, expected", [
    ("drawn", lambda d: Image.new("L", (32, 32), 255).save(d / "m.png") or str(d / "m.png"),
     "Mask image: the mask is 32x32 but the image is 48x32, a different shape"),
    ("drawn", lambda d: Image.new("L", (48, 32), 0).save(d / "m.png") or str(d / "m.png"),
     "Mask image: the mask is empty (all black or transparent)"),
    ("drawn", lambda d: Image.new("LA", (48, 32), (255, 0)).save(d / "m.png") or str(d / "m.png"),
     "Mask image: the mask is empty"),
    ("drawn", lambda d: (d / "m.png").write_text("not a picture") and str(d / "m.png"),
     "Mask image: the mask is not an image"),
    ("drawn", lambda d: colour_image(d / "m.png"), "is a colour (RGB) image with no transparency"),
    ("drawn", lambda d: str(d / "gone.png"), "The mask image did not arrive"),
    ("drawn", lambda d: None, "Mask is 'drawn' but there is no mask: paint the region"),
    ("none", lambda d: colour_image(d / "m.png"), "was given but Mask is 'none': choose 'drawn'"),
    ("auto", lambda d: colour_image(d / "m.png"), "('auto' finds the region itself)"),
    ("brush", lambda d: None, "Mask must be one of none, drawn, auto"),
], ids=["aspect", "all-black", "all-transparent", "not-an-image", "colour", "missing", "drawn-without",
        "none-with", "auto-with", "unknown-mode"])
def test_bad_masks_give_messages_naming_the_problem(service, picture_path, tmp_path, caplog, mode, make_mask,
                                                    expected):
    with pytest.raises(gr.Error) as excinfo:
        edit(service, picture_path, fast_controls(mask_mode=mode), session="bad-mask", mask=make_mask(tmp_path))
    message = error_message(excinfo)
    assert expected in message
    assert "Traceback" not in message and str(tmp_path) not in message  # no server paths in the page
    assert not [record for record in caplog.records if record.exc_info]  # and no traceback in the log
    assert excinfo.value.print_exception is False


def test_brush_strokes_become_a_mask_file(tmp_path):
    from app.masks import is_drawn_mask, painted_region, save_drawn_mask

    layer = Image.new("RGBA", (12, 8), (0, 0, 0, 0))
    layer.paste((255, 48, 48, 153), (2, 1, 6, 5))  # painted half-opaque: still "may change"
    values = painted_region({"background": Image.new("RGB", (12, 8)), "layers": [layer], "composite": None})
    assert values.dtype == np.float32 and values.sum() == 16 and values[1:5, 2:6].all()
    path = save_drawn_mask(values, tmp_path)
    assert is_drawn_mask(path) and not is_drawn_mask(str(tmp_path / "upload.png")) and not is_drawn_mask(None)
    assert np.array_equal(np.asarray(Image.open(path)), (values * 255).astype(np.uint8))
    assert painted_region({"background": None, "layers": [Image.new("RGBA", (12, 8))], "composite": None}) is None
    assert painted_region(None) is None


# ----------------------------------------------------------------------------- loading the model


def test_model_load_failure_is_reported_and_the_service_stays_usable(tmp_path, picture_path):
    settings = tiny_settings(tmp_path, model=str(tmp_path / "no-such-model"))
    service = EditorService(settings)  # the real loader
    service.load()
    status = service.status()
    assert status.state == "failed" and "Could not load the model" in status.message
    with pytest.raises(gr.Error) as excinfo:
        edit(service, picture_path, fast_controls())
    assert "could not be loaded" in error_message(excinfo) and "no-such-model" in error_message(excinfo)


@pytest.mark.skipif(BUNDLED_MODEL_DIR.is_dir(), reason="the bundled model is installed")
def test_missing_bundled_model_says_how_to_build_it(tmp_path):
    with pytest.raises(RuntimeError, match="shapes.model build"):
        load_editor(AppSettings(temp_dir=tmp_path))


def test_load_editor_from_a_saved_folder_and_unusable_tokens(tmp_path):
    from softrepa.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline("sd3", tmp_path / "tiny")
    bad_tokens = tmp_path / "tokens.safetensors"
    bad_tokens.write_bytes(b"not a token file")
    settings = tiny_settings(tmp_path, model=str(folder), tokens=str(bad_tokens), max_sequence_length=8)
    service = EditorService(settings)
    service.load()
    status = service.status()
    assert status.state == "ready"
    assert "could not be used" in status.message and "editing without tokens" in status.message
    editor = service.editor()
    assert not editor.has_tokens and editor.pipe.text_encoder_3 is None and editor.max_sequence_length == 8
    assert not service.has_tokens


@pytest.mark.skipif(not BUNDLED_MODEL_DIR.is_dir(), reason="the bundled shapes model is not built yet")
def test_bundled_model_edits_an_example(tmp_path):
    settings = resolve_settings(parse_args(["--temp-dir", str(tmp_path)]), {})
    service = EditorService(settings)
    examples = service.examples()
    selection = select_example(service, 0, initial_controls(service))
    outcome = edit(service, selection.image, dataclasses.replace(selection.controls, n_max=4, steps=8))
    assert Image.open(outcome.final.path).size == Image.open(examples[0].image).size


# ----------------------------------------------------------------------------- settings


def test_settings_precedence_flags_then_environment_then_defaults(tmp_path):
    env = {"SOFTREPA_MODEL": "env/model", "SOFTREPA_TOKENS": "none", "SOFTREPA_DEVICE": "cuda",
           "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7000", "SOFTREPA_NO_T5": "1",
           "SOFTREPA_TEMP_DIR": str(tmp_path)}
    settings = resolve_settings(parse_args(["--model", "flag/model", "--port", "7861"]), env)
    assert settings.model == "flag/model" and settings.kind == "sd3" and settings.tokens is None
    assert (settings.device, settings.host, settings.port, settings.no_t5) == ("cuda", "0.0.0.0", 7861, True)
    assert settings.temp_dir == tmp_path.resolve() and settings.uploads_dir.parent == tmp_path.resolve()
    assert resolve_settings(parse_args([]), {"SOFTREPA_PORT": "7002", "GRADIO_SERVER_PORT": "7000"}).port == 7002
    default = resolve_settings(parse_args([]), {})
    assert default.is_bundled_model and default.kind == "shapes-sd3" and default.host == "127.0.0.1"


@pytest.mark.parametrize("argv, env, expected", [
    (["--kind", "sd15"], {}, "cannot be edited here"),
    ([], {"SOFTREPA_PORT": "http"}, "not a whole number"),
    ([], {"SOFTREPA_EAGER_LOAD": "maybe"}, "SOFTREPA_EAGER_LOAD"),
    (["--port", "70000"], {}, "over 65535"),
])
def test_settings_errors(argv, env, expected):
    with pytest.raises(SettingsError, match=expected):
        resolve_settings(parse_args(argv), env)


def test_settings_namespace_without_server_flags():
    # app/make_examples.py parses only the model flags
    settings = resolve_settings(argparse.Namespace(model="m", kind=None, tokens=None, no_tokens=False), {})
    assert settings.model == "m" and settings.port == 7860


# ----------------------------------------------------------------------------- presets, history, examples


def test_presets_reset_the_sliders(service):
    base = fast_controls()
    vanilla = preset_controls("sd3", base, has_tokens=True)
    assert (vanilla.n_max, vanilla.tar_cfg, vanilla.steps, vanilla.use_tokens) == (33, 13.5, 50, False)
    tokens = preset_controls("sd3-tokens", base, has_tokens=True)
    assert (tokens.n_max, tokens.use_tokens) == (30, True)
    assert preset_controls("sd3-tokens", base, has_tokens=False).use_tokens is False
    assert preset_controls("sd3-tokens-paper", base, has_tokens=True).guidance == "authors"
    assert tokens.source_prompt == base.source_prompt  # prompts are kept
    with pytest.raises(UserInputError, match="Unknown preset"):
        preset_controls("turbo", base, has_tokens=True)
    assert initial_controls(service).max_side == 64  # kind sd3's 1024, clamped to what the tiny model takes
    assert service.side_range() == (8, 64, 2)


def test_history_keeps_newest_first_and_restores(service, picture_path):
    first = edit(service, picture_path, fast_controls(seed=1), session="h")
    second = edit(service, picture_path, fast_controls(seed=2, target_prompt="a green circle"), session="h")
    history = add_to_history(add_to_history([], first, limit=5), second, limit=5)
    assert history_entry(history, 0).controls.seed == 2 and history_entry(history, 1).controls.seed == 1
    assert history_gallery(history)[0][1].startswith("a green circle")
    assert len(add_to_history(history, first, limit=2)) == 2
    with pytest.raises(UserInputError):
        history_entry(history, 7)


def test_examples_without_precomputed_results_fill_the_inputs(service):
    examples = service.examples()  # built-in shapes scenes (no scikit-image) or photos
    assert examples and all(Path(e.image).is_file() for e in examples)
    assert all(Path(e.image).resolve().is_relative_to(service.settings.temp_dir.resolve()) for e in examples)
    selection = select_example(service, 0, fast_controls(mask_mode="drawn"))
    assert selection.outcome is None and selection.controls.target_prompt == examples[0].target_prompt
    assert selection.controls.mask_mode == "none"  # a new picture: a mask drawn on the old one would not fit
    with pytest.raises(UserInputError):
        select_example(service, len(examples), fast_controls())


def test_precomputed_examples_load_only_for_the_model_that_made_them(tmp_path, picture_path):
    settings, service = tiny_app_service(tmp_path, examples_dir=tmp_path / "examples")
    service.load()  # with tokens: both precomputed results apply
    results = tmp_path / "examples" / "sd3"
    results.mkdir(parents=True)
    outputs = {}
    for key in ("without_tokens", "with_tokens"):
        Image.new("RGB", (32, 32), (0, 90, 200)).save(results / f"{key}.png")
        outputs[key] = str(results / f"{key}.png")
    example = Example("blue", picture_path, "a red circle", "a blue circle",
                      params=dict(steps=8, n_max=5, seed=11), outputs=outputs)
    write_manifest([example], manifest_path(settings.examples_dir, "sd3"), produced_by(TINY_MODEL_LABEL, None))
    selection = select_example(service, 0, fast_controls())
    assert selection.outcome is not None and selection.outcome.mode == "compare"
    assert [Path(im.path).name for im in selection.outcome.images] == ["without_tokens.png", "with_tokens.png"]
    assert (selection.controls.n_max, selection.controls.seed) == (5, 11)

    write_manifest([example], manifest_path(settings.examples_dir, "sd3"), produced_by("another-model", None))
    _, other = tiny_app_service(tmp_path, examples_dir=tmp_path / "examples")
    assert select_example(other, 0, fast_controls()).outcome is None  # inputs only


def test_entry_point_reports_bad_settings_without_a_traceback(capsys):
    import importlib.util

    # app.py shares its name with the app/ package: load the file itself
    spec = importlib.util.spec_from_file_location("app_entry", Path(__file__).resolve().parents[2] / "app.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    assert entry.main(["--kind", "sd15"]) == 2
    assert entry.main(["--threads", "0"]) == 2
    error = capsys.readouterr().err
    assert "cannot be edited here" in error and "--threads / SOFTREPA_THREADS: 0 must be at least 1" in error
    assert "Traceback" not in error


def test_background_loading_shows_a_status_and_edits_wait_for_it(tmp_path, picture_path):
    import threading

    release = threading.Event()
    load_tiny = tiny_loader()

    def slow_loader(settings):
        release.wait(30)
        return load_tiny(settings)

    service = EditorService(tiny_settings(tmp_path), loader=slow_loader)
    service.start_loading()
    assert service.status().state == "loading" and "Loading" in service.status().message
    release.set()
    outcome = edit(service, picture_path, fast_controls())  # waits for the model
    assert Path(outcome.final.path).is_file() and service.status().state == "ready"


# ----------------------------------------------------------------------------- one home per rule


def test_flowedit_rules_reach_the_page_on_their_control(service, picture_path):
    # the bounds live in FlowEditParams.check only; the app heads its message with the control's label
    with pytest.raises(gr.Error) as excinfo:
        edit(service, picture_path, fast_controls(steps=6, n_max=9), session="rules")
    message = error_message(excinfo)
    assert message.startswith("Edit strength (n_max): ") and "only 6 steps" in message
    with pytest.raises(gr.Error) as excinfo:
        edit(service, picture_path, fast_controls(n_min=-1), session="rules")
    assert error_message(excinfo) == "Detail steps (n_min): n_min must be between 0 and 3, got -1."


def test_parameters_are_checked_by_the_library_not_the_app(service, picture_path, monkeypatch):
    from editing.flowedit import FlowEditParams

    callers = []
    check = FlowEditParams.check

    def counted(params):
        callers.append(sys._getframe(1).f_globals["__name__"])
        return check(params)

    monkeypatch.setattr(FlowEditParams, "check", counted)
    edit(service, picture_path, fast_controls(), session="once")
    # the editor checks each edit before any work (its parameters, then each seed's candidate run:
    # editing.editor.edit_candidates); flowedit_latents checks its own input; the app never
    assert callers[0] == "editing.editor" and callers[-1] == "editing.flowedit"
    assert set(callers) == {"editing.editor", "editing.flowedit"}
    per_edit = len(callers)
    callers.clear()
    compare(service, picture_path, fast_controls(), session="once")
    assert set(callers) == {"editing.editor", "editing.flowedit"} and len(callers) == 2 * per_edit


def test_the_token_file_is_read_and_hashed_once_per_app(tmp_path, monkeypatch):
    import softrepa.tokens
    from editing import token_file
    from softrepa.tiny import save_tiny_pipeline, tiny_sd3_pipeline
    from softrepa.tokens import new_tokens, save_tokens

    folder = save_tiny_pipeline("sd3", tmp_path / "tiny")
    tokens = save_tokens(new_tokens(tiny_sd3_pipeline(), "sd3", num_layers=2), tmp_path / "tokens.safetensors")
    reads, hashes = [], []
    read, sha256 = softrepa.tokens.read_token_file, token_file.file_sha256
    monkeypatch.setattr(softrepa.tokens, "read_token_file", lambda path: reads.append(path) or read(path))
    monkeypatch.setattr(token_file, "file_sha256", lambda path: hashes.append(path) or sha256(path))
    # no --kind: the settings take it from the file; the gallery and the editor reuse that read
    settings = resolve_settings(parse_args(["--model", str(folder), "--tokens", str(tokens), "--temp-dir",
                                            str(tmp_path / "app"), "--max-sequence-length", "8"]), {})
    assert settings.kind == "sd3"
    service = EditorService(settings)
    service.examples()
    service.load()
    assert service.status().state == "ready" and service.editor().has_tokens
    assert service.editor().tokens_info["sha256"] == sha256(tokens)
    assert len(reads) == len(hashes) == 1


def test_a_token_file_hashed_for_the_gallery_is_not_hashed_again(tmp_path, monkeypatch):
    # with --kind given the settings do not read the file: the gallery (before torch loads) hashes
    # its bytes, and the model load reads the tokens and reuses that hash
    import app.settings
    from editing import token_file
    from softrepa.tiny import save_tiny_pipeline, tiny_sd3_pipeline
    from softrepa.tokens import new_tokens, save_tokens

    folder = save_tiny_pipeline("sd3", tmp_path / "tiny")
    tokens = save_tokens(new_tokens(tiny_sd3_pipeline(), "sd3", num_layers=2), tmp_path / "tokens.safetensors")
    hashes, sha256 = [], token_file.file_sha256
    for module in (app.settings, token_file):
        monkeypatch.setattr(module, "file_sha256", lambda path: hashes.append(path) or sha256(path))
    settings = resolve_settings(parse_args(["--model", str(folder), "--kind", "sd3", "--tokens", str(tokens),
                                            "--temp-dir", str(tmp_path / "app"), "--max-sequence-length", "8"]), {})
    service = EditorService(settings)
    service.examples()
    service.load()
    assert service.editor().tokens_info["sha256"] == sha256(tokens)
    assert len(hashes) == 1


def test_the_page_takes_controls_by_name():
    from app.components import inputs_for
    from app.controls import CONTROL_NAMES
    from app.page import ControlComponents

    assert [f.name for f in dataclasses.fields(ControlComponents)] == list(CONTROL_NAMES)

    def run(steps, image, n_max, request=None):
        return None

    components = {"n_max": "n_max slider", "image": "image box", "steps": "steps slider", "seed": "seed box"}
    assert inputs_for(run, components) == ["steps slider", "image box", "n_max slider"]
    with pytest.raises(TypeError, match="'steps'"):
        inputs_for(run, {"image": "image box", "n_max": "n_max slider"})


def test_every_endpoint_parameter_is_documented_once():
    from app.components import describe_endpoint
    from app.controls import API_HELP, CONTROL_NAMES

    assert set(API_HELP) == {"image", "mask", "instruction", "png", "result", *CONTROL_NAMES}

    def run(image, mask_mode, mask, request=None):
        return None

    doc = describe_endpoint(run, "Edit.").__doc__
    assert doc.splitlines()[:3] == ["Edit.", "", "Parameters:"]
    assert f"    mask: {API_HELP['mask']}" in doc and "request" not in doc


# ----------------------------------------------------------------------------- variations, edit again, replay


def test_variations_are_candidates_of_one_run_and_picking_one_makes_it_the_result(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(seed=7, variations=3), session="v")
    assert [image.seed for image in outcome.candidates] == [7, 8, 9] and outcome.final.seed == 7
    assert [read_png_metadata(image.path)["params"]["seed"] for image in outcome.images] == [7, 8, 9]
    assert outcome.files() == [outcome.images[0].path] and len(outcome.all_files()) == 3
    assert "3 variations, seeds 7, 8, 9" in outcome.summary and outcome.details["seed"] == 7
    picked = choose_candidate(outcome, 2)
    assert picked.key == outcome.key and picked.final.seed == 9 and picked.controls.seed == 9
    assert picked.details["seed"] == picked.details["params"]["seed"] == 9 and picked.files() == [picked.images[2].path]
    history = replace_in_history(add_to_history([], outcome, limit=5), picked)
    assert history[0].final.seed == 9 and "3 variations" in history_gallery(history)[0][1]
    with pytest.raises(UserInputError, match="no longer available"):
        choose_candidate(outcome, 3)
    single = edit(service, picture_path, fast_controls(seed=9), session="v")  # the picked one, run alone
    assert np.abs(pixels(single.final.path) - pixels(picked.final.path)).max() <= 2  # to batch-size rounding
    randomized = edit(service, picture_path, fast_controls(randomize_seed=True, variations=2), session="v")
    assert len({image.seed for image in randomized.images}) == 2
    with pytest.raises(UserInputError, match="There are no candidates to pick from"):
        choose_candidate(single, 0)


@pytest.mark.parametrize("variations, expected", [(0, "between 1 and 8, got 0"), (9, "between 1 and 8, got 9"),
                                                  (2.5, "Variations must be a whole number")])
def test_variations_out_of_range(service, picture_path, variations, expected):
    with pytest.raises(gr.Error) as excinfo:
        edit(service, picture_path, fast_controls(variations=variations), session="v")
    assert expected in error_message(excinfo)


def test_a_fractional_seed_is_rounded_with_a_note(service, picture_path):
    outcome = edit(service, picture_path, fast_controls(seed=2.5), session="seed")
    assert outcome.details["seed"] == 3 and outcome.controls.seed == 3
    assert "Seed 2.5 was rounded to 3: seeds are whole numbers." in outcome.notices
    assert outcome.details["notices"] == outcome.notices


def test_transparent_and_animated_pictures_are_changed_with_a_note(service, tmp_path):
    gif = tmp_path / "moving.gif"
    frames = [Image.new("RGB", (48, 32), colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    outcome = edit(service, str(gif), fast_controls(), session="notes")
    assert "The image was reduced to its first frame (an animated image of 3 frames)." in outcome.notices
    rgba = tmp_path / "cut-out.png"
    picture = Image.new("RGBA", (48, 32), (200, 30, 30, 255))
    picture.paste((0, 0, 0, 0), (0, 0, 10, 10))
    picture.save(rgba)
    outcome = edit(service, str(rgba), fast_controls(), session="notes")
    assert "The image was flattened on white (its transparent pixels are now white)." in outcome.notices
    assert outcome.details["input"]["notes"] == ["flattened on white (its transparent pixels are now white)"]
    assert pixels(outcome.source_path)[0, 0].tolist() == [255, 255, 255]
    opaque = tmp_path / "opaque.png"
    Image.new("RGBA", (48, 32), (200, 30, 30, 255)).save(opaque)
    assert edit(service, str(opaque), fast_controls(), session="notes").notices == []  # nothing lost: no note


def test_edit_again_chains_results_and_the_history_keeps_the_chain(service, picture_path):
    first = edit(service, picture_path, fast_controls(), session="chain")
    again = next_edit(first)
    assert again.image == first.final.path and again.source_prompt == again.target_prompt == first.controls.target_prompt
    second = edit(service, again.image, fast_controls(source_prompt=again.source_prompt,
                                                      target_prompt="a green circle on a white background"),
                  session="chain", parent=again.parent)
    assert second.parent["key"] == first.key and second.details["parent"]["file"] == Path(first.final.path).name
    assert read_png_metadata(second.final.path)["app"]["parent"] == again.parent  # the chain is in the files too
    assert np.array_equal(pixels(second.source_path), pixels(first.final.path))  # the result became the source
    history = add_to_history(add_to_history([], first, limit=5), second, limit=5)
    assert history_gallery(history)[0][1].endswith("edited again") and history[1].parent is None
    with pytest.raises(UserInputError, match="no result to edit again"):
        next_edit(None)


def test_replay_restores_the_controls_mask_and_input_of_an_app_result(service, picture_path, app_dir):
    from app.replay import replay

    mask = np.zeros((32, 48), np.uint8)
    mask[4:20, 8:30] = 255
    Image.fromarray(mask).save(app_dir / "replay-mask.png")
    controls = fast_controls(seed=11, n_max=4, tar_cfg=6.5, guidance="authors", mask_mode="drawn", max_side=48)
    outcome = edit(service, picture_path, controls, session="replay", mask=str(app_dir / "replay-mask.png"))
    base = fast_controls(source_prompt="", target_prompt="", seed=1, variations=4)
    result = replay(outcome.final.path, base, service.settings, True, TINY_MODEL_LABEL, app_dir, SIDES)
    restored = result.controls
    assert (restored.source_prompt, restored.target_prompt) == (controls.source_prompt, controls.target_prompt)
    assert (restored.seed, restored.n_max, restored.tar_cfg, restored.guidance) == (11, 4, 6.5, "authors")
    assert (restored.mask_mode, restored.max_side, restored.variations, restored.use_tokens) == ("drawn", 48, 1, True)
    assert np.array_equal(np.asarray(Image.open(result.mask)) > 127, mask > 127)
    assert result.image == outcome.source_path and result.notes == []
    without_tokens = replay(outcome.final.path, base, service.settings, False, "another-model", app_dir, SIDES)
    assert without_tokens.controls.use_tokens is False
    assert any("does not have" in note for note in without_tokens.notes)
    assert any("another-model" in note for note in without_tokens.notes)


def test_replay_of_a_cli_result_and_of_foreign_pngs(service, tmp_path):
    from app.replay import replay

    picture = service.settings.temp_dir / "cli-input.png"  # inside the app's folder: it may be shown
    Image.fromarray((np.random.RandomState(3).rand(32, 32, 3) * 255).astype(np.uint8)).save(picture)
    editor = service.editor()
    params = editor.default_params(False).replace(steps=6, n_max=2, seed=21)
    result = editor.edit(str(picture), "a red square", "a blue square", params, use_tokens=False)
    out = result.save(tmp_path / "cli.png", extra={"input_image": str(picture)})  # as editing.cli.run_jobs saves
    base = fast_controls()
    replayed = replay(out, base, service.settings, True, TINY_MODEL_LABEL, tmp_path, SIDES)
    assert replayed.image == str(picture) and replayed.controls.seed == 21 and replayed.controls.n_max == 2
    assert replayed.controls.mask_mode == "none" and replayed.controls.use_tokens is False
    elsewhere = result.save(tmp_path / "cli-elsewhere.png", extra={"input_image": "/etc/hosts"})
    outside = replay(elsewhere, base, service.settings, True, TINY_MODEL_LABEL, tmp_path, SIDES)
    assert outside.image is None and "outside the folders this app serves" in outside.notes[0]

    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16)).save(plain)
    with pytest.raises(UserInputError, match="this PNG was not written by softrepa-edit: no 'softrepa_edit' metadata"):
        replay(plain, base, service.settings, True, TINY_MODEL_LABEL, tmp_path, SIDES)
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (16, 16)).save(jpeg)
    with pytest.raises(UserInputError, match="this is a JPEG image, not a PNG written by softrepa-edit"):
        replay(jpeg, base, service.settings, True, TINY_MODEL_LABEL, tmp_path, SIDES)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(UserInputError, match="Replay a result: the file is not an image"):
        replay(text, base, service.settings, True, TINY_MODEL_LABEL, tmp_path, SIDES)
