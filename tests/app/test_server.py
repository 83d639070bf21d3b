"""The app served on 127.0.0.1 and driven through its public API with ``gradio_client``."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.testing import FAST_CONTROLS, free_port, tiny_app_service
from app.ui import create_app
from editing.editor import read_png_metadata

MAX_FILE_SIZE = "300kb"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    temp_dir = tmp_path_factory.mktemp("app-server")
    settings, service = tiny_app_service(temp_dir, port=free_port(), max_file_size=MAX_FILE_SIZE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(settings.uploads_dir))  # create_app sets it; restored afterwards
        web = create_app(settings, service)
        url = web.launch(block=False)
        yield url, settings
        web.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False, download_files=str(server[1].temp_dir.parent / "client-downloads"))


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("client") / "picture.png"
    rng = np.random.RandomState(1)
    Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(path)
    return str(path)


PROMPTS = dict(source_prompt="a red square on a white background", target_prompt="a blue square on a white background")


def test_api_lists_the_named_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/edit", "/compare"}  # the page's helper events stay private
    names = [p["parameter_name"] for p in endpoints["/edit"]["parameters"]]
    assert names[:4] == ["image", "source_prompt", "target_prompt", "use_tokens"]
    # the whole API, in order: the page matches components to these names, so none may move
    controls = ["tar_cfg", "src_cfg", "n_max", "steps", "n_min", "n_avg", "seed", "randomize_seed", "max_side",
                "guidance", "token_branches", "mask_mode", "mask"]  # the mask's two last: old positional calls work
    assert names == ["image", "source_prompt", "target_prompt", "use_tokens", *controls]
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == ["image", "source_prompt",
                                                                                 "target_prompt", *controls]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in endpoints["/edit"]["parameters"]}
    assert defaults["mask_mode"] == "none" and defaults["mask"] is None


def test_edit_returns_the_image_and_its_parameters(client, picture, server):
    before_after, edited, files, summary, details, region = client.predict(
        image=handle_file(picture), **PROMPTS, **FAST_CONTROLS, api_name="/edit")
    assert Path(edited).is_file() and Image.open(edited).size == (32, 32)
    assert [Path(p).name for p in before_after][1] == Path(edited).name
    assert read_png_metadata(files[0])["params"]["n_max"] == FAST_CONTROLS["n_max"]  # download keeps the metadata
    assert details["seed"] == FAST_CONTROLS["seed"] and "Done in" in summary
    assert region is None and details["mask"] is None  # no mask: no region shown
    uploads = list(server[1].uploads_dir.rglob("picture.png"))
    assert uploads, "the upload landed outside the app's temporary folder"


def test_compare_returns_both_images(client, picture):
    before_after, without_tokens, with_tokens, files, summary, details, region = client.predict(
        image=handle_file(picture), **PROMPTS, **FAST_CONTROLS, api_name="/compare")
    assert Image.open(without_tokens).size == Image.open(with_tokens).size == (32, 32)
    assert [read_png_metadata(p)["use_tokens"] for p in files] == [False, True]
    assert [r["use_tokens"] for r in details["results"]] == [False, True]


def test_edit_inside_a_mask_file(client, picture, tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, :16] = 255  # white = may change
    mask_file = tmp_path / "mask.png"
    Image.fromarray(mask).save(mask_file)
    before_after, edited, files, summary, details, region = client.predict(
        image=handle_file(picture), mask=handle_file(str(mask_file)), mask_mode="drawn", **PROMPTS,
        **FAST_CONTROLS, api_name="/edit")
    assert [Path(p).name for p in files] == [Path(edited).name, Path(edited).stem + ".mask.png"]
    assert np.array_equal(np.asarray(Image.open(files[1])) > 127, mask > 127)
    assert details["mask"]["coverage"] == pytest.approx(0.25) and details["mask"]["pasted_back"] is True
    assert "drawn mask: 25.0 % of the image, pasted back" in summary and Path(region).is_file()
    outside = mask == 0
    assert np.array_equal(np.asarray(Image.open(edited))[outside], np.asarray(Image.open(picture))[outside])


def test_bad_masks_reach_the_client_as_messages_without_a_traceback(client, picture, tmp_path, capfd):
    colour = tmp_path / "colour.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(colour)
    capfd.readouterr()
    with pytest.raises(AppError, match=r"Mask image: the mask is a colour \(RGB\) image with no transparency"):
        client.predict(image=handle_file(picture), mask=handle_file(str(colour)), mask_mode="drawn", **PROMPTS,
                       **FAST_CONTROLS, api_name="/compare")
    with pytest.raises(AppError, match="was given but Mask is 'none': choose 'drawn'"):
        client.predict(image=handle_file(picture), mask=handle_file(str(colour)), **PROMPTS, api_name="/edit")
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_errors_reach_the_client_as_messages_and_the_server_keeps_serving(client, picture, tmp_path):
    with pytest.raises(AppError, match="source prompt is empty"):
        client.predict(image=handle_file(picture), source_prompt=" ", target_prompt="a cat", api_name="/edit")
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    with pytest.raises(AppError, match="not an image"):
        client.predict(image=handle_file(str(text)), **PROMPTS, **FAST_CONTROLS, api_name="/edit")
    with pytest.raises(AppError, match="cannot be larger than"):
        client.predict(image=handle_file(picture), **PROMPTS, **dict(FAST_CONTROLS, n_min=3, n_max=2),
                       api_name="/edit")
    edited = client.predict(image=handle_file(picture), **PROMPTS, **FAST_CONTROLS, api_name="/edit")[1]
    assert Path(edited).is_file()


def test_uploads_over_the_size_limit_are_refused(server, tmp_path):
    url, _ = server
    big = np.random.RandomState(0).randint(0, 255, (400, 400, 3), dtype=np.uint8)  # ~480 kB as PNG
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)
    with path.open("rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", handle, "image/png")})
    assert response.status_code == 413 and "maximum allowed size" in response.text


def test_zero_gpu_decorator_is_a_no_op_without_spaces():
    from app.ui import device_task, running_on_zero_gpu

    def work():
        return 1

    if running_on_zero_gpu():
        pytest.skip("the spaces package is installed here")
    assert device_task(work) is work
