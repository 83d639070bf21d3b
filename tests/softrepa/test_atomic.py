"""softrepa.atomic (the one atomic file writer) and softrepa.images.write_png (the one PNG writer)."""

import json
import stat

import numpy as np
import pytest
from PIL import Image

from softrepa.atomic import TEMP_GLOB, atomic_path, atomic_write_bytes, atomic_write_text
from softrepa.images import write_png


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_target_appears_with_the_content(tmp_path):
    target = tmp_path / "sub" / "dir" / "data.txt"  # missing folders are created
    with atomic_path(target) as temp:
        assert temp.parent == target.parent and temp != target and not target.exists()
        temp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["data.txt"]
    assert atomic_write_bytes(target, b"\x00bytes") == target and target.read_bytes() == b"\x00bytes"
    assert atomic_write_text(str(target), "caf\u00e9") == target and target.read_text(encoding="utf-8") == "caf\u00e9"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_keeps_the_old_content_and_leaves_no_temp_file(tmp_path, error):
    target = tmp_path / "data.json"
    target.write_text("old")
    with pytest.raises(error):
        with atomic_path(target) as temp:
            temp.write_text("half-written")
            raise error("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_an_error_before_anything_is_written_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "never.bin"):
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_the_temp_name_keeps_the_suffix(tmp_path):
    target = tmp_path / "features.npz"
    with atomic_path(target) as temp:
        assert temp.name.endswith(".npz") and temp.name.startswith(".") and temp.match(TEMP_GLOB)
        np.savez(temp, keys=np.array(["a"]), features=np.ones((1, 3)))  # numpy adds no second .npz
    assert [p.name for p in tmp_path.iterdir()] == ["features.npz"]
    with np.load(target) as stored:
        assert stored["keys"].tolist() == ["a"] and stored["features"].shape == (1, 3)

    with atomic_path(tmp_path / "picture.png") as temp:
        Image.new("RGB", (4, 4), "red").save(temp)  # PIL infers PNG from the temp name
    assert Image.open(tmp_path / "picture.png").format == "PNG"


def test_temp_names_are_unique(tmp_path):
    with atomic_path(tmp_path / "x.txt") as first, atomic_path(tmp_path / "x.txt") as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert (tmp_path / "x.txt").read_text() == "1"  # the outer block finishes last
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_finished_files_are_world_readable(tmp_path):
    target = tmp_path / "shared.bin"
    atomic_write_bytes(target, b"x")
    assert _mode(target) == 0o644
    target.chmod(0o600)
    atomic_write_bytes(target, b"y")  # a replacement gets 0o644 too
    assert _mode(target) == 0o644


def test_write_png_layouts(tmp_path):
    image = Image.new("RGB", (8, 8), "blue")
    metadata = {"prompt": "un caf\u00e9 \u2615", "seed": 7, "cfg": 3.0, "tokens": None}

    single = write_png(image, tmp_path / "edit.png", metadata, key="softrepa_edit", layout="json")
    text = Image.open(single).text
    assert set(text) == {"softrepa_edit"} and json.loads(text["softrepa_edit"]) == metadata

    per_key = write_png(image, tmp_path / "gen.png", metadata, key="parameters", layout="per-key")
    text = Image.open(per_key).text
    assert text["prompt"] == metadata["prompt"] and text["seed"] == "7" and text["cfg"] == "3.0"
    assert text["tokens"] == "null" and json.loads(text["parameters"]) == metadata

    plain = write_png(image, tmp_path / "plain.png")
    with Image.open(plain) as opened:
        assert opened.text == {} and opened.getpixel((0, 0)) == (0, 0, 255)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit.png", "gen.png", "plain.png"]
    assert _mode(plain) == 0o644

    with pytest.raises(ValueError, match="layout"):
        write_png(image, tmp_path / "bad.png", metadata, layout="chunks")
    assert not (tmp_path / "bad.png").exists()


def test_each_caller_keeps_its_png_layout(tmp_path):
    from editing.editor import METADATA_KEY, read_png_metadata
    from softrepa.generate import PNG_KEY, PNG_LAYOUT

    image = Image.new("RGB", (8, 8))
    metadata = {"prompt": "a cat", "seed": 1}
    edit = write_png(image, tmp_path / "edit.png", metadata, key=METADATA_KEY)  # what EditResult.save writes
    assert read_png_metadata(edit) == metadata and set(Image.open(edit).text) == {METADATA_KEY}
    generated = write_png(image, tmp_path / "gen.png", metadata, key=PNG_KEY, layout=PNG_LAYOUT)  # generate's CLI
    assert Image.open(generated).text == {"prompt": "a cat", "seed": "1", "parameters": json.dumps(metadata)}
