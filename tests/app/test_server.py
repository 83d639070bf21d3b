"""The app served on 127.0.0.1 and driven through its public API with ``gradio_client``."""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import inspect
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import api
from app.controls import API_HELP
from app.testing import FAST_CONTROLS, free_port, tiny_app_service
from app.ui import create_app
from editing.editor import METADATA_KEY, read_png_metadata
from softrepa.images import write_png

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS, README = REPO_ROOT / "docs" / "app.md", REPO_ROOT / "README.md"

MAX_FILE_SIZE = "300kb"


@contextlib.contextmanager
def serving(temp_dir: Path, **overrides):
    """(URL, settings, service) of the tiny app served on a free port until the block ends."""
    settings, service = tiny_app_service(temp_dir, port=free_port(), **overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(settings.uploads_dir))  # create_app sets it; restored afterwards
        web = create_app(settings, service)
        url = web.launch(block=False)
        try:
            yield url, settings, service
        finally:
            web.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the shapes model's kind: its preset's T is 28, so the page's n_max slider starts with 28 at its top,
    # which the API must not hold against a request that sends steps 50 and n_max 30 (docs/app.md)
    with serving(tmp_path_factory.mktemp("app-server"), kind="shapes-sd3", max_file_size=MAX_FILE_SIZE) as served:
        yield served


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False, download_files=str(server[1].temp_dir.parent / "client-downloads"))


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("client") / "picture.png"
    rng = np.random.RandomState(1)
    Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(path)
    return str(path)


# each endpoint and the API layer's action its description comes from
ENDPOINTS = {"edit": api.edit, "compare": api.compare, "describe": api.describe, "instruct": api.instruct,
             "replay": api.replay, "edit_again": api.edit_again}
EXAMPLE = "assets/examples/shapes-sd3/shapes-01-shape.png"  # a bundled picture (the shapes model's describer reads it)
PROMPTS = dict(source_prompt="a red square on a white background", target_prompt="a blue square on a white background")


def test_api_lists_the_named_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    # every action of the page; its helper events (presets, history, the mask's views) stay private
    assert set(endpoints) == {"/edit", "/compare", "/describe", "/instruct", "/replay", "/edit_again"}
    names = [p["parameter_name"] for p in endpoints["/edit"]["parameters"]]
    assert names[:4] == ["image", "source_prompt", "target_prompt", "use_tokens"]
    # the whole API, in order: the page matches components to these names, so none may move
    controls = ["tar_cfg", "src_cfg", "n_max", "steps", "n_min", "n_avg", "seed", "randomize_seed", "max_side",
                "guidance", "token_branches", "mask_mode", "mask"]  # the mask's two last: old positional calls work
    # new parameters come last, so calls that pass the others by position still work
    assert names == ["image", "source_prompt", "target_prompt", "use_tokens", *controls, "variations", "auto",
                     "noise_offset"]
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == ["image", "source_prompt",
                                                                                 "target_prompt", *controls, "auto",
                                                                                 "noise_offset"]
    defaults = {p["parameter_name"]: p["parameter_default"] for p in endpoints["/edit"]["parameters"]}
    assert defaults["mask_mode"] == "none" and defaults["mask"] is None and defaults["variations"] == 1
    assert defaults["auto"] is False and defaults["noise_offset"] == 0


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
    url = server[0]
    big = np.random.RandomState(0).randint(0, 255, (400, 400, 3), dtype=np.uint8)  # ~480 kB as PNG
    path = tmp_path / "big.png"
    Image.fromarray(big).save(path)
    with path.open("rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.png", handle, "image/png")})
    assert response.status_code == 413 and "maximum allowed size" in response.text


def test_zero_gpu_decorator_is_a_no_op_without_spaces():
    from app.runs import device_task, running_on_zero_gpu

    def work():
        return 1

    if running_on_zero_gpu():
        pytest.skip("the spaces package is installed here")
    assert device_task(work) is work


# ----------------------------------------------------------------------------- the API's values, checked by the app


def python_blocks(path: Path, heading: str) -> list[str]:
    """The Python blocks of ``path``'s section ``heading`` (level 2, with its subsections), in order,
    as a reader copies them."""
    section = path.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_as_written(url: str, blocks: list[str], source: str) -> None:
    """Run ``blocks`` one after the other in one namespace, from the repository root (their files
    are the bundled examples), with the server's URL for the documented one; a block with a
    top-level ``await`` (the MCP example, for ``python -m asyncio``) runs in an event loop."""
    namespace: dict = {}
    for block in blocks:
        code = compile(block.replace("http://127.0.0.1:7860/", url), source, "exec",
                       flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)  # noqa: S307 - the project's own documentation
        if inspect.iscoroutine(result):
            asyncio.run(result)


def test_the_readme_and_docs_api_examples_run_as_written(tmp_path, monkeypatch):
    readme, docs = python_blocks(README, "The API: scripts and agents"), python_blocks(DOCS, "API")
    assert len(readme) == 1 and len(docs) == 7
    assert 'Client("http://127.0.0.1:7860/")' in docs[0] and "n_max=30" in docs[0]  # beyond the page's T 28
    assert all(f'api_name="/{name}"' in "".join(docs) for name in ENDPOINTS)
    assert "streamablehttp_client" in docs[-1] and "call_tool" in docs[-1]
    monkeypatch.chdir(REPO_ROOT)
    # the shapes kind: its describer and instruction helper read the bundled pictures (the tiny model edits)
    with serving(tmp_path, mcp=True, kind="shapes-sd3") as (url, _, _):
        run_as_written(url, readme, "README.md")
        run_as_written(url, docs, "docs/app.md")


@pytest.mark.parametrize("overrides, expected", [
    (dict(src_cfg=-5), "Source guidance: src_cfg must be a finite number >= 0, got -5"),
    (dict(tar_cfg=-5), "Target guidance: tar_cfg must be a finite number >= 0, got -5"),
    (dict(tar_cfg=31), "Target guidance must be between 0 and 30, got 31."),
    (dict(steps=28, n_max=30), "Edit strength (n_max): n_max is 30 but there are only 28 steps (T)"),
    (dict(n_max="lots"), "Edit strength (n_max) must be a whole number, got 'lots'."),
    (dict(steps=101), "Steps (T) must be between 1 and 100, got 101."),
    (dict(seed=-5), "Seed: seed must be between 0 and"),
    (dict(max_side=100_000), "Max side (px) must be between"),
    (dict(guidance="mine"), "Guidance convention: guidance must be one of standard, authors, got 'mine'."),
    (dict(token_branches=3), "Tokens on: token_branches must be one of both, target, got 3."),
    (dict(mask_mode="brush"), "Mask must be one of none, drawn, auto, got 'brush'."),
    (dict(variations=9), "Variations must be between 1 and 8, got 9"),
], ids=["src-cfg", "tar-cfg", "cfg-cap", "n_max>T", "n_max-text", "steps-cap", "seed", "max-side", "guidance",
        "token-branches", "mask-mode", "variations"])
def test_refused_values_name_their_control_and_leave_no_traceback(client, picture, capfd, overrides, expected):
    capfd.readouterr()
    with pytest.raises(AppError) as excinfo:
        client.predict(image=handle_file(picture), **PROMPTS, **{**FAST_CONTROLS, **overrides}, api_name="/edit")
    message = str(excinfo.value)
    assert expected in message
    assert "minimum value" not in message and "maximum value" not in message and "type:" not in message
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err  # a person's mistake is not a server error


def test_values_beyond_the_sliders_start_pass_and_a_fractional_seed_is_rounded_with_a_note(client, picture):
    # the n_max slider starts at the shapes preset's T 28; steps 31 makes n_max 30 valid
    *_, details, region = client.predict(image=handle_file(picture), **PROMPTS,
                                         **dict(FAST_CONTROLS, steps=31, n_max=30, n_min=28, seed=3.6),
                                         api_name="/edit")
    assert details["params"]["n_max"] == 30 and details["seed"] == 4
    assert "Seed 3.6 was rounded to 4: seeds are whole numbers." in details["notices"]


def test_a_transparent_animated_picture_is_changed_with_a_note(client, tmp_path):
    frames = [Image.new("RGBA", (32, 32), (200, 30, 30, 255)), Image.new("RGBA", (32, 32), (30, 30, 200, 255))]
    frames[0].putpixel((0, 0), (0, 0, 0, 0))
    path = tmp_path / "animated.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])  # an animated PNG with a transparent pixel
    details = client.predict(image=handle_file(str(path)), **PROMPTS, **FAST_CONTROLS, api_name="/edit")[4]
    assert "The image was reduced to its first frame (an animated image of 2 frames)." in details["notices"]
    assert "The image was flattened on white (its transparent pixels are now white)." in details["notices"]
    assert len(details["input"]["notes"]) == 2


# ----------------------------------------------------------------------------- variations


def test_variations_are_one_batched_run_with_a_seed_each(client, picture):
    single = client.predict(image=handle_file(picture), **PROMPTS, **dict(FAST_CONTROLS, seed=5),
                            api_name="/edit")[4]
    before_after, edited, files, summary, details, region = client.predict(
        image=handle_file(picture), **PROMPTS, **dict(FAST_CONTROLS, seed=5), variations=3, api_name="/edit")
    assert [c["seed"] for c in details["candidates"]] == [5, 6, 7] and details["variations"] == 3
    assert [read_png_metadata(path)["params"]["seed"] for path in files] == [5, 6, 7]  # each candidate's PNG
    assert [Path(path).name for path in files] == [c["file"] for c in details["candidates"]]
    assert Path(edited).name == details["candidates"][0]["file"] and details["seed"] == 5
    # one run: the same transformer calls as a single edit (the candidates ride in the batch)
    assert {r["transformer_calls"] for r in details["results"]} == {single["results"][0]["transformer_calls"]}
    assert "3 variations, seeds 5, 6, 7" in summary


# ----------------------------------------------------------------------------- cancel and disconnect

LONG_EDIT = dict(FAST_CONTROLS, steps=100, n_max=100, n_avg=4)  # many seconds: it must be stopped, not end


def wait_until(condition, timeout: float) -> float:
    """Seconds until ``condition()`` held (polled); fails after ``timeout``."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            pytest.fail(f"still not so after {timeout} s")
        time.sleep(0.05)
    return time.perf_counter() - start


def test_a_cancelled_job_frees_the_server_within_two_seconds(server, client, picture):
    service = server[2]
    job = client.submit(image=handle_file(picture), **PROMPTS, **LONG_EDIT, api_name="/edit")
    wait_until(lambda: service.running() == 1, timeout=30)
    time.sleep(0.5)  # a few steps in
    assert job.cancel()
    stopped = wait_until(lambda: service.running() == 0, timeout=2)
    start = time.perf_counter()
    edited = client.predict(image=handle_file(picture), **PROMPTS, **FAST_CONTROLS, api_name="/edit")[1]
    assert Path(edited).is_file()
    print(f"cancelled edit stopped {stopped:.2f} s after cancel; the next edit took {time.perf_counter() - start:.2f} s")


def test_a_client_that_goes_away_stops_its_edit(server, picture):
    url, _, service = server
    script = textwrap.dedent(f"""
        import time
        from gradio_client import Client, handle_file
        Client({url!r}, verbose=False).submit(image=handle_file({picture!r}), **{dict(PROMPTS, **LONG_EDIT)!r},
                                              api_name="/edit")
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_until(lambda: service.running() == 1, timeout=60)
        time.sleep(0.5)
    finally:
        child.kill()
        child.wait()
    wait_until(lambda: service.running() == 0, timeout=5)


# ----------------------------------------------------------------------------- MCP


def test_the_mcp_schema_lists_the_edit_tool_with_its_parameters(tmp_path):
    with serving(tmp_path, mcp=True) as (url, _, _):
        response = httpx.get(f"{url}gradio_api/mcp/schema", timeout=30)
    assert response.status_code == 200
    tools = {tool["name"]: tool for tool in response.json()}
    assert set(tools) == set(ENDPOINTS)  # the public endpoints, nothing private
    edit = tools["edit"]
    assert edit["description"].startswith("Edit the image from the source prompt to the target prompt")
    properties = edit["inputSchema"]["properties"]
    for name in ("source_prompt", "target_prompt", "n_max", "tar_cfg", "seed", "mask_mode", "variations"):
        assert properties[name]["description"] == API_HELP[name], name
    assert "between" not in str(properties["n_max"])  # no range from the page's slider: the app checks
    assert properties["mask_mode"]["enum"] == ["none", "drawn", "auto"]


def data_url(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


async def _mcp_session_calls(url: str, calls: list[tuple[str, dict]]) -> tuple[list, list]:
    """(tools listed, results of ``calls``) of an MCP client session at the app's MCP server."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            return tools, [await session.call_tool(name, arguments) for name, arguments in calls]


def test_an_mcp_client_lists_every_action_and_edits_a_local_image_sent_as_a_data_url(tmp_path):
    picture = data_url(EXAMPLE)
    edit_call = dict(image=picture, **PROMPTS, **dict(FAST_CONTROLS, max_side=64))
    with serving(tmp_path, mcp=True, kind="shapes-sd3") as (url, _, _):
        tools, (described, edited, refused) = asyncio.run(_mcp_session_calls(url, [
            ("describe", {"image": picture}), ("edit", edit_call),
            ("edit", dict(edit_call, n_max=999))]))
    tools = {tool.name: tool for tool in tools}
    assert set(tools) == set(ENDPOINTS)
    for name, action in ENDPOINTS.items():  # each tool's description is its action's summary, then its parameters
        assert tools[name].description.startswith(api.summary(action)), name
    assert not described.isError and "on a white background" in described.content[0].text
    assert not edited.isError and "Done in" in str([getattr(c, "text", "") for c in edited.content])
    assert refused.isError and "Edit strength (n_max): n_max is 999" in refused.content[0].text


def test_tampered_pngs_replay_to_a_message_naming_the_field_with_no_traceback(client, picture, tmp_path, capfd):
    edited = client.predict(image=handle_file(picture), **PROMPTS, **FAST_CONTROLS, api_name="/edit")[1]
    settings, image, mask, note = client.predict(png=handle_file(edited), api_name="/replay")
    assert settings == {**settings, **PROMPTS, **{k: v for k, v in FAST_CONTROLS.items() if k != "max_side"}}
    assert Path(image).is_file() and mask is None and settings["mask_mode"] == "none"
    capfd.readouterr()
    for change, expected in ((dict(steps="many"), "Steps (T) must be a whole number, got 'many'."),
                             (dict(n_max=999), "Edit strength (n_max): n_max is 999 but there are only"),
                             (dict(tar_cfg=1e9), "Target guidance must be between 0 and 30, got 1e+09."),
                             (dict(seed=-5), "Seed: seed must be between 0 and")):
        metadata = read_png_metadata(edited)
        metadata["params"].update(change)
        tampered = write_png(Image.open(edited), tmp_path / "tampered.png", metadata, key=METADATA_KEY)
        with pytest.raises(AppError) as excinfo:
            client.predict(png=handle_file(str(tampered)), api_name="/replay")
        assert str(excinfo.value).startswith("Replay a result: its metadata holds a value") and expected in \
            str(excinfo.value)
        with pytest.raises(AppError, match=r"^Result PNG: its metadata holds a value"):
            client.predict(result=handle_file(str(tampered)), target_prompt="a cat", api_name="/edit_again")
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err  # the server log: a person's mistake is no error


def test_describe_instruct_and_edit_again_through_the_api(tmp_path):
    with serving(tmp_path, kind="shapes-sd3") as (url, _, _):
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        source, note = client.predict(image=handle_file(EXAMPLE), api_name="/describe")
        target, same_source, verdict = client.predict(instruction="make the star red", source_prompt=source,
                                                      image=handle_file(EXAMPLE), api_name="/instruct")
        assert same_source == source and target == source.replace("blue star", "red star") and "Valid" in verdict
        with pytest.raises(AppError, match="The instruction is empty"):
            client.predict(instruction=" ", source_prompt=source, image=handle_file(EXAMPLE), api_name="/instruct")
        first = client.predict(image=handle_file(EXAMPLE), source_prompt=source, target_prompt=target,
                               **dict(FAST_CONTROLS, max_side=64), api_name="/edit")
        again = client.predict(result=handle_file(first[1]), target_prompt=target.replace("star", "circle"),
                               api_name="/edit_again")
    details = again[4]
    assert details["source_prompt"] == target and details["params"] == first[4]["params"]  # its settings kept
    assert details["parent"]["file"] == Path(first[1]).name and details["parent"]["key"] is not None
    assert read_png_metadata(again[1])["app"]["parent"] == details["parent"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, client, picture) -> dict[str, str]:
    """Files a careless or hostile client sends: text named .png, a JPEG, a plain PNG, a result PNG."""
    folder = tmp_path_factory.mktemp("bad-files")
    (folder / "notes.png").write_text("this is not a picture")
    Image.new("RGB", (32, 32)).save(folder / "photo.jpg")
    Image.new("RGB", (32, 32)).save(folder / "plain.png")
    result = client.predict(image=handle_file(picture), **PROMPTS, **FAST_CONTROLS, api_name="/edit")[1]
    return {"text": str(folder / "notes.png"), "jpeg": str(folder / "photo.jpg"), "plain": str(folder / "plain.png"),
            "result": result, "picture": picture}


# (endpoint, arguments, the message's start): every action, the files it reads and its values
BAD_INPUTS = [
    ("/describe", dict(image=None), "Source image: there is no image to describe"),
    ("/describe", dict(image="text"), "Source image: "),
    ("/instruct", dict(instruction="", source_prompt="a cat", image="picture"), "The instruction is empty"),
    ("/instruct", dict(instruction=5, source_prompt="a cat", image="picture"), "Type an instruction: one change"),
    ("/instruct", dict(instruction="make it red", source_prompt="a cat", image=None), "Upload a source image first"),
    ("/replay", dict(png=None), "Replay a result: no PNG arrived"),
    ("/replay", dict(png="text"), "Replay a result: the file is not an image"),
    ("/replay", dict(png="jpeg"), "Replay a result: this is a JPEG image"),
    ("/replay", dict(png="plain"), "Replay a result: this PNG was not written by softrepa-edit"),
    ("/edit_again", dict(result="plain", target_prompt="a cat"), "Result PNG: this PNG was not written"),
    ("/edit_again", dict(result="result", target_prompt=""), "The target prompt is empty"),
    ("/edit_again", dict(result="result", target_prompt="a cat", n_max=999), "Edit strength (n_max): n_max is 999"),
    ("/edit_again", dict(result="result", target_prompt="a cat", use_tokens="yes"), "Soft tokens must be true or"),
    ("/edit_again", dict(result="result", target_prompt="a cat", mask="plain"), "A mask image was given but Mask"),
    ("/edit", dict(image="text", **PROMPTS), "Source image: "),
    ("/edit", dict(image="picture", source_prompt="x" * 5000, target_prompt="a cat"), "The source prompt is 5,000"),
    ("/edit", dict(image="picture", **PROMPTS, randomize_seed="no"), "Random seed must be true or false, got 'no'"),
    ("/compare", dict(image="picture", **PROMPTS, mask_mode="drawn"), "Mask is 'drawn' but there is no mask"),
]


@pytest.mark.parametrize("endpoint, arguments, expected", BAD_INPUTS,
                         ids=[f"{endpoint}-{index}" for index, (endpoint, _, _) in enumerate(BAD_INPUTS)])
def test_bad_input_to_any_endpoint_gets_a_message_naming_what_to_change(client, bad_files, capfd, endpoint,
                                                                        arguments, expected):
    arguments = {name: handle_file(bad_files[value]) if isinstance(value, str) and value in bad_files else value
                 for name, value in arguments.items()}
    capfd.readouterr()
    with pytest.raises(AppError) as excinfo:
        client.predict(**arguments, api_name=endpoint)
    assert str(excinfo.value).startswith(expected) and "internal error" not in str(excinfo.value)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
