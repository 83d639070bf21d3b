"""Property-based tests (hypothesis) of the files a person hands the app: a result PNG's metadata
(Replay, Edit again) and a mask image. Each generated file must give either a clear message naming
the control or field, or something the edit can use; never any other exception.

The number of cases per target is the hypothesis profile's (tests/conftest.py: 500 in CI, 5000
with the slow tests). Batch files are fuzzed in tests/editing/test_batch_fuzz.py.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, example, given, strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.controls import LABELS, UserInputError, check_controls
from app.masks import mask_message, mask_request
from app.replay import replay
from app.testing import fast_controls, tiny_settings
from editing.editor import METADATA_KEY
from editing.inputs import prepare_image
from editing.masks import MaskError, PixelMask, prepare_mask

SIDES = (16, 64)  # the long sides the tiny model takes
REPLAY = LABELS["replay"]

# ----------------------------------------------------------------------------- PNG metadata

# JSON values of any shape: what a tampered or foreign PNG may carry where a value belongs
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["", " ", "many", "6", "6.0", "nan", "standard", "both", "drawn", "given", "auto",
                              "x" * 100_000, "\x00", "a \ud800 cat", "../../etc/passwd", "/etc/hosts"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=6)
VALID_PARAMS = dict(steps=6, n_max=3, n_min=0, n_avg=1, src_cfg=3.5, tar_cfg=7.0, seed=3, src_negative_prompt="",
                    tar_negative_prompt="", guidance="standard", token_branches="both")


def _mask_base64() -> str:
    """A valid mask as the app writes it into a result's metadata (the left half may change)."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(np.arange(48)[None, :] < 24, 255, 0).astype(np.uint8).repeat(32, 0)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@st.composite
def metadata(draw) -> dict:
    """A result PNG's metadata: a valid one, then some fields replaced by junk, removed or added."""
    params = dict(VALID_PARAMS)
    for name in draw(st.lists(st.sampled_from(sorted(VALID_PARAMS)), max_size=3, unique=True)):
        params[name] = draw(junk)
    for name in draw(st.lists(st.sampled_from(sorted(VALID_PARAMS)), max_size=2, unique=True)):
        params.pop(name, None)
    params.update(draw(st.dictionaries(st.text(max_size=8), junk, max_size=2)))  # unknown parameters
    data = {"version": 1, "source_prompt": "a red circle", "target_prompt": "a blue circle", "params": params,
            "use_tokens": False, "model": "tiny-random-sd3",
            "app": {"mode": "edit", "max_side": 64, "key": "0123456789ab", "input_file": "x-input.png"},
            "input": {"resized_size": [48, 32]},
            "mask": draw(st.sampled_from([None, {"mode": "auto"}, {"mode": "given", "png_base64": _mask_base64()}]))}
    for name in draw(st.lists(st.sampled_from(sorted(data)), max_size=3, unique=True)):
        data[name] = draw(junk)
    if isinstance(data.get("app"), dict) and draw(st.booleans()):
        data["app"]["max_side"] = draw(junk)
    if isinstance(data.get("mask"), dict) and draw(st.booleans()):
        data["mask"][draw(st.sampled_from(["mode", "png_base64"]))] = draw(junk)
    return draw(st.sampled_from([data, draw(junk)])) if draw(st.integers(0, 9)) == 0 else data


@pytest.fixture(scope="module")
def folders():
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "masks").mkdir()
        yield tiny_settings(root), root


def write_result_png(folder: Path, data) -> Path:
    """A 48x32 PNG carrying ``data`` as its edit metadata (JSON; NaN and infinities as Python writes them)."""
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps(data))
    path = folder / "result.png"
    Image.new("RGB", (48, 32), (200, 30, 30)).save(path, pnginfo=info)
    return path


@given(data=metadata())
@example(data={"source_prompt": "a", "target_prompt": "b", "params": dict(VALID_PARAMS, steps="many")})
@example(data={"source_prompt": "a", "target_prompt": "b", "params": dict(VALID_PARAMS, n_max=999)})
@example(data={"source_prompt": "a", "target_prompt": "b", "params": dict(VALID_PARAMS, tar_cfg=1e9, seed=-5)})
def test_any_png_metadata_replays_or_is_refused_naming_a_field(folders, data):
    settings_, root = folders
    path = write_result_png(root, data)
    try:
        replayed = replay(path, fast_controls(), settings_, False, "tiny-random-sd3", root / "masks", SIDES)
    except UserInputError as exc:
        text = str(exc)
        assert text.startswith(f"{REPLAY}: ") and len(text) < 1500, text
        event("refused")
        return
    event("accepted")
    # accepted: every restored value passes the checks of a typed one, and the mask is a usable image
    check_controls(replayed.controls, SIDES)
    assert replayed.controls.mask_mode in ("none", "drawn", "auto") and replayed.controls.variations == 1
    assert (replayed.mask is not None) == (replayed.controls.mask_mode == "drawn")
    assert replayed.image is None  # no input named in the metadata exists on this test's server


# ----------------------------------------------------------------------------- mask images

SOURCE = prepare_image(Image.new("RGB", (48, 32), (30, 120, 200)), max_side=64, multiple=8)
MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F"]
FORMATS = {"PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}, "TIFF": set(MODES),
           "GIF": {"1", "L", "P"}, "BMP": {"1", "L", "P", "RGB"}, "WEBP": {"L", "RGB", "RGBA"}, "JPEG": {"L", "RGB"}}


@st.composite
def mask_files(draw) -> bytes:
    """A file sent as the mask image: an image of any mode, size and format (NaN and negative floats
    included), a truncated one, or bytes that are no image at all."""
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "junk"]))
    if kind == "junk":
        return draw(st.binary(max_size=200))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(sorted(name for name, modes in FORMATS.items() if mode in modes)))
    # mostly the picture's aspect (48x32: same size, scaled, one pixel off), sometimes any size
    width, height = draw(st.sampled_from([(48, 32), (96, 64), (24, 16), (47, 31)])
                         | st.tuples(st.integers(1, 96), st.integers(1, 64)))
    fill = draw(st.sampled_from(["random", "zeros", "ones", "left-half", "special"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = {"random": rng.random((height, width)), "zeros": np.zeros((height, width)),
              "ones": np.ones((height, width)), "left-half": (np.arange(width)[None, :] < width / 2).repeat(height, 0),
              "special": rng.choice([np.nan, np.inf, -np.inf, -3.0, 0.0, 0.5, 1.0, 1e9], (height, width))}[fill]
    values = np.asarray(values, dtype=np.float64)
    if mode == "F":
        image = Image.fromarray(values.astype(np.float32), "F")
    else:
        grey = (np.nan_to_num(np.clip(values, 0, 1)) * 255).astype(np.uint8)
        image = Image.fromarray(grey, "L")
        image = image.convert(mode) if mode not in ("I", "I;16") else Image.fromarray(grey.astype(np.int32) * 257, "I")
        if mode == "I;16":
            image = image.convert("I;16")
        if mode in ("LA", "RGBA"):
            image.putalpha(Image.fromarray(grey, "L"))
        if mode == "RGB" and draw(st.booleans()):  # a colour picture: which colour would mean "edit"?
            image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    return data[: draw(st.integers(0, max(0, len(data) - 1)))] if kind == "truncated" else data


@given(data=mask_files())
def test_any_mask_file_fits_the_picture_or_is_refused_naming_the_mask(folders, data):
    path = folders[1] / "mask-upload"  # the app gets the upload's path (no suffix: the bytes decide)
    path.write_bytes(data)
    try:
        mask = prepare_mask(mask_request("drawn", str(path)), SOURCE.report)
    except MaskError as exc:  # the mask reader's words, shown under the mask control's label
        text = mask_message(exc)
        assert text.startswith(f"{LABELS['mask']}: the mask ") and len(text) < 600, text
        event("refused")
        return
    event("accepted")
    assert isinstance(mask, PixelMask)
    assert mask.values.shape == (SOURCE.report.final_size[1], SOURCE.report.final_size[0])
    assert mask.values.dtype == np.float32 and np.isfinite(mask.values).all()
    assert mask.values.min() >= 0 and 0 < mask.values.max() <= 1
