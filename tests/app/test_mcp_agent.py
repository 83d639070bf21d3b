"""An agent's session through MCP only, on the bundled model (issue #28).

The app is served with ``--mcp`` as ``python app.py --mcp`` serves it (the bundled shapes model and
its soft tokens) and driven with the ``mcp`` package's client: no language model, a fixed sequence
of calls an agent makes. Files go in the way Gradio intends: ``gradio upload-mcp`` (Gradio's
file-upload MCP server, its tool ``upload_file_to_gradio``) uploads the bundled example and returns
its ``/gradio_api/file=`` URL, which the app's tools take (``app/agents.py``). The session's
transcript is written to ``test-artifacts/mcp-agent-session.txt`` (docs/app.md#agents shows one).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from app.controls import FILE_PARAMETERS
from app.settings import parse_settings
from app.testing import free_port
from editing.editor import read_png_metadata

pytest.importorskip("mcp")
from mcp import ClientSession, types  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "assets" / "examples" / "shapes-sd3"
EXAMPLE = EXAMPLES / "shapes-01-shape.png"  # a small solid orange triangle and a small outlined blue star
TRANSCRIPT = REPO_ROOT / "test-artifacts" / "mcp-agent-session.txt"
MAX_FILE_SIZE = "200kb"
# an edit long enough to be cancelled midway on the bundled model (100 steps of 8 noise samples each)
LONG_EDIT = dict(steps=100, n_max=100, n_avg=8, seed=1)


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory):
    """(URL, service) of the app as ``python app.py --mcp`` serves it (bundled model and tokens), on a free port."""
    from app.ui import create_app

    temp_dir = tmp_path_factory.mktemp("mcp-agent")
    settings = parse_settings(["--mcp", "--eager-load", "--threads", "1", "--port", str(free_port()), "--temp-dir",
                               str(temp_dir), "--max-file-size", MAX_FILE_SIZE], env={})
    assert settings.is_bundled_model and settings.tokens is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(settings.uploads_dir))  # create_app sets it; restored afterwards
        web = create_app(settings)
        url = web.launch(block=False)
        try:
            yield url, web.service
        finally:
            web.close()


@contextlib.asynccontextmanager
async def app_session(url: str):
    async with streamablehttp_client(f"{url}gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def returns(result: types.CallToolResult) -> list[Any]:
    """A tool's returns as an agent reads them: Gradio sends each return as text (``str()`` of the
    value: read back as a literal where it is one), an image as the image and a line with its URL."""
    values = []
    for item in result.content:
        if item.type == "image":
            values.append(Image.open(io.BytesIO(base64.b64decode(item.data))))
        elif item.text.startswith("Image URL: "):
            values.append(item.text.removeprefix("Image URL: "))
        else:
            try:
                values.append(ast.literal_eval(item.text))
            except (ValueError, SyntaxError):
                values.append(item.text)
    return values


def text(result: types.CallToolResult) -> str:
    return " ".join(getattr(item, "text", "") for item in result.content)


class Transcript:
    """The calls of a session and what came back, for the test's artifact and docs/app.md."""

    def __init__(self, url: str):
        self.url, self.lines = url, []

    def call(self, tool: str, arguments: dict[str, Any], said: str) -> None:
        shown = {name: self.short(value) for name, value in arguments.items()}
        self.lines += [f"-> {tool}({', '.join(f'{k}={v!r}' for k, v in shown.items())})", f"<- {' '.join(said.split())}"]

    def short(self, value: Any) -> Any:
        if isinstance(value, str):
            value = value.replace(self.url, "<server>/")
            if "/gradio_api/file=" in value:
                value = "<server>/gradio_api/file=.../" + value.rsplit("/", 1)[-1]
            return value if len(value) <= 100 else value[:95] + "..."
        return value

    def write(self) -> None:
        TRANSCRIPT.parent.mkdir(exist_ok=True)
        TRANSCRIPT.write_text("\n".join(self.lines) + "\n")
        print("\n".join(self.lines))


async def upload(url: str, path: Path, log: Transcript) -> str:
    """The file's URL on the app, from Gradio's file-upload MCP server (``gradio upload-mcp``)."""
    gradio_cli = Path(sys.executable).with_name("gradio")
    command = [str(gradio_cli), "upload-mcp"] if gradio_cli.is_file() else ["-m", "gradio.cli.commands.upload_mcp"]
    executable, args = (command[0], command[1:]) if gradio_cli.is_file() else (sys.executable, command)
    parameters = StdioServerParameters(command=executable, args=[*args, url, str(path.parent)], cwd=str(REPO_ROOT))
    async with stdio_client(parameters) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            assert [tool.name for tool in (await session.list_tools()).tools] == ["upload_file_to_gradio"]
            result = await session.call_tool("upload_file_to_gradio", {"file": str(path)})
    assert not result.isError, text(result)
    file_url = text(result)
    log.call("upload_file_to_gradio (gradio upload-mcp)", {"file": path.name}, log.short(file_url))
    return file_url


async def tool(session: ClientSession, log: Transcript, name: str, arguments: dict[str, Any],
               said: Callable[[list[Any]], str], progress: list | None = None) -> list[Any]:
    """The call's returns (``returns``); the transcript gets the call and ``said(returns)``."""
    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    result = await session.call_tool(name, arguments, progress_callback=on_progress if progress is not None else None)
    assert not result.isError, f"{name}: {text(result)}"
    values = returns(result)
    log.call(name, arguments, said(values))
    return values


def edited(values: list[Any]) -> str:
    """What an edit's returns say: the summary line, the image's size."""
    return f"{values[4]} (image {values[1].size[0]}x{values[1].size[1]}, {len(values[3])} PNG files)"


def download(url: str) -> Image.Image:
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def png_metadata(url: str, folder: Path) -> dict[str, Any]:
    path = folder / url.rsplit("/", 1)[-1]
    path.write_bytes(httpx.get(url, timeout=30).content)
    return read_png_metadata(path)


async def agent_session(url: str, folder: Path, log: Transcript) -> dict[str, Any]:
    """The scripted agent: upload, describe, instruct, edit with variations, pick one, edit it
    again, replay the final PNG and run its settings again; returns what the checks need."""
    picture = await upload(url, EXAMPLE, log)
    async with app_session(url) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert "/gradio_api/upload" in tools["edit"].description  # how to pass a file, in the tool's description
        source, _ = await tool(session, log, "describe", {"image": picture}, lambda v: f"source prompt {v[0]!r}")
        target, _, verdict = await tool(session, log, "instruct", {
            "instruction": "make the star red", "source_prompt": source, "image": picture},
            lambda v: f"target prompt {v[0]!r}; {v[2].splitlines()[0]}")
        # the strength: the app's own pick from a sweep around the preset's n_max (Auto strength)
        _, _, _, auto_files, _, auto, _ = await tool(session, log, "edit", {
            "image": picture, "source_prompt": source, "target_prompt": target, "seed": 11, "auto": True},
            lambda v: f"{edited(v)}; picked n_max {v[5]['params']['n_max']} of "
                      f"{[c['n_max'] for c in v[5]['auto']['candidates']]}")
        progress: list = []
        _, first, _, files, summary, details, _ = await tool(session, log, "edit", {
            "image": picture, "source_prompt": source, "target_prompt": target, "seed": 11, "variations": 3},
            lambda v: f"{edited(v)}; {len(progress)} progress notifications", progress)
        picked = details["candidates"][1]  # not the first: the agent's choice
        picked_url = next(file["url"] for file in files if file["url"].endswith("/" + picked["file"]))
        log.lines.append(f"   (the agent picks candidate 2 of 3: seed {picked['seed']}, {log.short(picked_url)})")
        again_target = target.replace("triangle", "circle")
        _, final, final_url, _, _, again, _ = await tool(session, log, "edit_again", {
            "result": picked_url, "target_prompt": again_target},
            lambda v: f"{edited(v)}; parent {v[5]['parent']['file']}")
        settings, _, replayed_input, mask, _ = await tool(
            session, log, "replay", {"png": final_url},
            lambda v: f"settings seed {v[0]['seed']}, steps {v[0]['steps']}, n_max {v[0]['n_max']}, tar_cfg "
                      f"{v[0]['tar_cfg']}, ... (/edit's arguments); input image {log.short(v[2])}; mask {v[3]}")
        _, rerun, _, _, _, rerun_details, _ = await tool(session, log, "edit", {"image": replayed_input, **settings},
                                                         edited)
    return dict(source=source, target=target, verdict=verdict, auto=auto, auto_files=auto_files, first=first,
                files=files, details=details,
                picked=picked, picked_image=download(picked_url), again_target=again_target, final=final,
                final_metadata=png_metadata(final_url, folder), again=again, settings=settings, mask=mask,
                replayed_input=download(replayed_input),
                rerun=rerun, rerun_details=rerun_details, progress=progress)


def test_a_scripted_agent_edits_a_bundled_example_through_mcp_alone(agent_server, tmp_path, capfd):
    url, _ = agent_server
    log = Transcript(url)
    capfd.readouterr()
    session = asyncio.run(agent_session(url, tmp_path, log))
    captured = capfd.readouterr()
    log.write()
    assert "Traceback" not in captured.out + captured.err  # the server log: every call was answered cleanly
    # describe and instruct: the picture's prompt, one change of it
    assert "triangle" in session["source"] and "blue star" in session["source"]
    assert session["target"] == session["source"].replace("blue star", "red star") and "Valid" in session["verdict"]
    # Auto strength: four scored candidates around the preset's n_max 20, the pick the result
    auto = session["auto"]
    rows = auto["auto"]["candidates"]
    assert [row["n_max"] for row in rows] == [14, 17, 20, 24] and len(session["auto_files"]) == 4
    assert auto["params"]["n_max"] == rows[auto["auto"]["picked"]]["n_max"] and auto["chosen"] == auto["auto"]["picked"]
    # the edit: 3 candidates of the example's size, each a PNG carrying its seed and prompts
    details = session["details"]
    assert [c["seed"] for c in details["candidates"]] == [11, 12, 13] and session["first"].size == (64, 64)
    assert [file["url"].rsplit("/", 1)[-1] for file in session["files"]] == [c["file"] for c in details["candidates"]]
    assert any(message and "Progress Editing: Step" in message for message in session["progress"])
    # edit again from the candidate picked: its seed and settings, the candidate as the parent
    again, metadata = session["again"], session["final_metadata"]
    assert session["final"].size == (64, 64) and again["seed"] == session["picked"]["seed"] == 12
    assert again["parent"]["file"] == session["picked"]["file"] and metadata["app"]["parent"] == again["parent"]
    assert again["source_prompt"] == session["target"] and again["target_prompt"] == session["again_target"]
    assert metadata["params"] == again["params"] and metadata["target_prompt"] == session["again_target"]
    # replay: the settings used, the picked candidate as the input, and the same edit again
    settings = session["settings"]
    assert settings["seed"] == 12 and settings["mask_mode"] == "none" and session["mask"] is None
    assert {name: settings[name] for name in again["params"] if name in settings} == \
        {name: value for name, value in again["params"].items() if name in settings}
    assert (settings["source_prompt"], settings["target_prompt"]) == (session["target"], session["again_target"])
    assert np.array_equal(np.asarray(session["replayed_input"]), np.asarray(session["picked_image"]))
    rerun = session["rerun_details"]
    assert (rerun["params"], rerun["seed"], rerun["target_prompt"]) == (again["params"], 12, session["again_target"])
    # the same picture to float rounding: the rerun reuses the source velocities the editor cached
    difference = np.abs(np.asarray(session["rerun"], np.int16) - np.asarray(session["final"], np.int16))
    assert difference.max() <= 2 and difference.mean() < 0.01


# ----------------------------------------------------------------------------- bad files


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format)
    return buffer.getvalue()


PROMPTS = dict(source_prompt="a red square on a white background", target_prompt="a blue square on a white background")
TOO_LARGE = png_bytes(Image.fromarray(np.random.RandomState(0).randint(0, 255, (300, 300, 3), dtype=np.uint8)))
# (tool, arguments, the message's start, a word it holds): what a careless or hostile agent sends
BAD_FILES = [
    ("edit", dict(image=data_url(b"this is not a picture"), **PROMPTS), "Source image: ", "not an image"),
    ("edit", dict(image=data_url(png_bytes(Image.new("RGB", (1, 1)))), **PROMPTS), "Source image: ", "1x1"),
    ("edit", dict(image="http://10.0.0.1/picture.png", **PROMPTS), "Source image: the app cannot fetch",
     "local or private address"),
    ("describe", dict(image="<server>/gradio_api/file=/etc/hostname"), "Source image: the app cannot fetch",
     "must name a file it serves"),
    ("describe", dict(image="https://softrepa.invalid/picture.png"), "Source image: the app cannot fetch",
     "does not resolve"),
    ("describe", dict(image="picture.png"), "Source image: 'picture.png' is not a URL", "/gradio_api/upload"),
    ("describe", dict(image=data_url(TOO_LARGE)), "Source image: the data URL holds", "limit of 200 kB"),
    ("describe", dict(image="data:image/png;base64,iVBOR$$"), "Source image: the data URL's base64 is damaged",
     "data:image/png;base64"),
    ("describe", dict(image="data:text/plain,hello"), "Source image: a data URL must hold base64", "base64"),
    ("describe", dict(image=5), "Source image: image must be a URL", "got int"),
    ("replay", dict(png=data_url(png_bytes(Image.new("RGB", (8, 8)), "JPEG"), "image/jpeg")),
     "Replay a result: this is a JPEG image", "JPEG"),
    ("edit_again", dict(result="result.png", target_prompt="a cat"), "Result PNG: 'result.png' is not a URL", "URL"),
    ("edit", dict(image=data_url(EXAMPLE.read_bytes()), **PROMPTS, mask="http://192.168.1.1/m.png", mask_mode="drawn"),
     "Mask image: the app cannot fetch", "local or private address"),
]


def test_bad_files_through_mcp_get_a_message_naming_the_file_and_no_traceback(agent_server, capfd):
    url, _ = agent_server

    async def calls() -> list[types.CallToolResult]:
        async with app_session(url) as session:
            return [await session.call_tool(name, {key: value.replace("<server>/", url) if isinstance(value, str)
                                                   else value for key, value in arguments.items()})
                    for name, arguments, _, _ in BAD_FILES]

    assert {"image", "mask", "png", "result"} == set(FILE_PARAMETERS)  # each file parameter is tried
    capfd.readouterr()
    results = asyncio.run(calls())
    captured = capfd.readouterr()
    for (name, _, start, word), result in zip(BAD_FILES, results):
        message = text(result)
        assert result.isError and message.startswith(start) and word in message, (name, message)
        assert "upstream Gradio app" not in message and "internal error" not in message
    assert "Traceback" not in captured.out + captured.err


def test_an_upload_is_taken_by_its_url_or_its_bare_path_and_a_data_url_too(agent_server, capfd):
    """What ``POST /gradio_api/upload`` returns (a path on the server), as it is or as its URL, and the
    same picture sent as a data URL: one picture, one description."""
    url, _ = agent_server
    with EXAMPLE.open("rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (EXAMPLE.name, handle, "image/png")})
    path = response.json()[0]

    async def describe_each() -> list[types.CallToolResult]:
        async with app_session(url) as session:
            return [await session.call_tool("describe", {"image": image}) for image in
                    (path, f"{url}gradio_api/file={path}", data_url(EXAMPLE.read_bytes()))]

    capfd.readouterr()
    results = asyncio.run(describe_each())
    assert "Traceback" not in "".join(capfd.readouterr())
    assert not any(result.isError for result in results), [text(result) for result in results]
    assert len({result.content[0].text for result in results}) == 1 and "blue star" in results[0].content[0].text


# ----------------------------------------------------------------------------- progress and cancel


async def stopped_within(service, since: float, timeout: float) -> float:
    """Seconds from ``since`` until the service runs no edit; fails after ``timeout``."""
    while service.running():
        if time.perf_counter() - since > timeout:
            pytest.fail(f"the edit still runs {timeout} s after the cancel")
        await anyio.sleep(0.02)
    return time.perf_counter() - since


async def steps_done(progress: list[str], service, steps: int = 2) -> None:
    """Until the progress notifications say the edit has done ``steps`` steps."""
    with anyio.fail_after(120):
        while sum("Progress Editing: Step" in message for message in progress) < steps:
            await anyio.sleep(0.02)
    assert service.running() == 1


def test_a_cancelled_mcp_call_stops_its_edit_within_a_step(agent_server, capfd):
    """Streamable HTTP (Gradio's is stateless: a ``notifications/cancelled`` would reach a session of
    its own): the agent gives up, its session and the request's stream close, as when an agent is
    stopped or times out. SSE: the client sends ``notifications/cancelled`` for the call."""
    url, service = agent_server
    picture = data_url(EXAMPLE.read_bytes())
    long_edit = dict(image=picture, **PROMPTS, **LONG_EDIT)
    stopped: dict[str, float] = {}

    async def streamable_http() -> None:
        progress: list[str] = []

        async def agent() -> None:
            async with app_session(url) as session:
                await session.call_tool("edit", long_edit, progress_callback=lambda _d, _t, m: note(progress, m))

        async with anyio.create_task_group() as group:
            group.start_soon(agent)
            await steps_done(progress, service)
            since = time.perf_counter()
            group.cancel_scope.cancel()  # the agent stops
        stopped["streamable HTTP"] = await stopped_within(service, since, 10)

    async def sse() -> None:
        progress: list[str] = []
        answers: list[str] = []

        async def call(session: ClientSession) -> None:
            try:
                await session.call_tool("edit", long_edit, progress_callback=lambda _d, _t, m: note(progress, m))
            except Exception as exc:  # noqa: BLE001 - the answer to a cancelled request: McpError
                answers.append(str(exc))

        async with sse_client(f"{url}gradio_api/mcp/sse") as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                async with anyio.create_task_group() as group:
                    group.start_soon(call, session)
                    await steps_done(progress, service)
                    request_id = session._request_id - 1  # the edit's: the session's last request
                    since = time.perf_counter()
                    await session.send_notification(types.ClientNotification(types.CancelledNotification(
                        params=types.CancelledNotificationParams(requestId=request_id, reason="the agent stopped"))))
                stopped["SSE"] = await stopped_within(service, since, 10)  # the connection still open
        assert answers == ["Request cancelled"]

    async def next_edit() -> types.CallToolResult:
        async with app_session(url) as session:
            return await session.call_tool("edit", dict(image=picture, **PROMPTS, steps=4, n_max=2))

    capfd.readouterr()
    asyncio.run(streamable_http())
    asyncio.run(sse())
    start = time.perf_counter()
    after = asyncio.run(next_edit())
    captured = capfd.readouterr()
    assert not after.isError and "Done in" in text(after)
    assert "Traceback" not in captured.out + captured.err
    assert set(stopped) == {"streamable HTTP", "SSE"} and all(seconds < 3 for seconds in stopped.values()), stopped
    print(f"cancelled MCP edits stopped {stopped} s after the cancel; the next edit took "
          f"{time.perf_counter() - start:.2f} s")


async def note(progress: list[str], message: str | None) -> None:
    progress.append(message or "")


def test_mcp_call_errors_keep_their_message_with_progress(agent_server):
    """A call with a progress token takes Gradio's other path: a refusal still names its control."""
    url, _ = agent_server

    async def call() -> types.CallToolResult:
        async with app_session(url) as session:
            return await session.call_tool("edit", dict(image=data_url(EXAMPLE.read_bytes()), **PROMPTS, n_max=999),
                                           progress_callback=lambda *_: asyncio.sleep(0))

    result = asyncio.run(call())
    assert result.isError and "Edit strength (n_max): n_max is 999" in text(result)

