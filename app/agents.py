"""Agents over MCP: the files they send and the calls they cancel.

Gradio 6.31 serves the public endpoints as MCP tools (``launch(mcp_server=True)``, ``gradio/mcp.py``).
A tool's file parameter is a string there: a ``data:`` URL, which Gradio saves to a file, or an
http(s) URL, which the app downloads through Gradio's SSRF guard (``safehttpx``: public addresses
only). What an agent needs and Gradio does not do, this module adds at the app's edges:

* **The app's own files by URL** (``reads_served_files``). Gradio's way to hand an agent's file to
  a tool is an upload (``POST /gradio_api/upload``, which ``gradio upload-mcp`` does as the MCP tool
  ``upload_file_to_gradio``) and then the URL of the returned path, ``<server>/gradio_api/file=<path>``.
  On a local server the guard refuses that URL (``Hostname 127.0.0.1 failed validation``, a
  traceback in the log, "The upstream Gradio app has raised an exception" for the agent), and a
  result URL the app itself returned cannot be edited again. A ``/gradio_api/file=`` URL naming a
  file this server's file route serves (its rule, ``served_file``: uploads, results, examples) is
  read from the disk instead, whatever the host: no download, and no file the route would refuse.
  Any other URL is fetched as before; a refusal or a failed download is a message headed by the
  parameter's control (``Source image: ...``), not a traceback.
* **File arguments checked before Gradio reads them** (``checked_file``): a data URL must be
  base64 and at most the upload limit (``--max-file-size``; Gradio would write any size to its
  cache first), a bare path must be one the file route serves (the path an upload returns), anything
  else is refused naming the parameter and saying how to pass a file; each file-taking tool's
  description ends with the same instructions.
* **A cancelled call stops its edit** (``cancels_with_the_call``). Gradio runs a tool as a
  ``gradio_client`` job on its own server and waits for it; when the MCP request is cancelled (the
  client closes the request's stream on streamable HTTP, or sends ``notifications/cancelled`` on the
  SSE transport) the job runs on, the edit with it (and without a progress token the call's handler
  waits for it in a thread). Here the job is cancelled as ``job.cancel()`` does for a script, so
  the edit stops after its current step. The same replacement hands an endpoint's returns on as
  one MCP item each (Gradio sends them as one text when the call has no progress token).

The MCP server's handlers are replaced through the ``mcp`` package's public ``Server.request_handlers``;
the job is reached through two private methods of Gradio's ``GradioMCPServer`` (``gradio`` is pinned;
``tests/app/test_mcp_agent.py`` cancels calls, and a startup warning says when they are gone).

Progress needs nothing: for a call with a ``progressToken`` Gradio sends a notification per status
update of the job, the edit's steps included (``Progress Editing: Step 3 of 20``).

``serve_agents`` installs the file reader on the endpoints' file inputs when the page is built, and
the rest once the MCP server exists (a Gradio startup event, ``Blocks.extra_startup_events``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, unquote, urlsplit

import anyio
import gradio as gr
from gradio import utils as gradio_utils
from gradio.components import Component
from gradio.data_classes import _StaticFiles
from gradio.route_utils import API_PREFIX
from gradio_client.utils import is_http_url_like

from app.controls import FILE_PARAMETERS, LABELS, UserInputError
from editing.params import shown

log = logging.getLogger(__name__)

FILE_ROUTE = f"{API_PREFIX}/file="  # Gradio's route serving uploads, results and allowed files
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # when the app was launched without an upload limit
# the control heading a message about each file parameter of the tools
FILE_LABELS = {"image": LABELS["image"], "mask": LABELS["mask"], "png": LABELS["replay"], "result": LABELS["result"]}
DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*),(?P<payload>.*)", re.S)


def how_to_send(max_bytes: int | None) -> str:
    """What an agent can send as a file, for the end of a message."""
    return ("Pass a file as the URL of an upload (POST it to /gradio_api/upload, then "
            "<server>/gradio_api/file=<the returned path>, or the path itself), as a URL this server may fetch (a "
            f"public address), or as a data:image/png;base64,... URL of at most {size_text(max_bytes)}.")


def size_text(n_bytes: int | None) -> str:
    n_bytes = DEFAULT_MAX_BYTES if n_bytes is None else n_bytes
    for unit, size in (("MB", 1024 * 1024), ("kB", 1024)):
        if n_bytes >= size:
            return f"{n_bytes / size:.3g} {unit}"
    return f"{n_bytes} bytes"


# ----------------------------------------------------------------------------- the app's own files by URL


def served_file(url_or_path: str, blocks: gr.Blocks) -> str | None:
    """The local file behind ``url_or_path`` when Gradio's file route of ``blocks`` serves it, else None.

    ``url_or_path``: a ``.../gradio_api/file=<path>`` URL (any host: the file is read here) or a
    bare path. The rule is the route's own (``gradio.route_utils.file_fetch``): an existing file, not
    in ``blocked_paths``, inside ``allowed_paths`` (the app's temporary folder and examples), a static
    path, Gradio's upload folder or its cache."""
    path = url_or_path
    if is_http_url_like(url_or_path):
        route_path = unquote(urlsplit(url_or_path).path)
        if FILE_ROUTE not in route_path:
            return None
        path = route_path.split(FILE_ROUTE, 1)[1]
    if not path or is_http_url_like(path) or "\x00" in path:
        return None
    try:
        local = gradio_utils.abspath(path)
        if not local.is_file():
            return None
    except (OSError, ValueError):
        return None
    allowed, _ = gradio_utils.is_allowed_file(
        local, blocked_paths=blocks.blocked_paths or [], allowed_paths=list(blocks.allowed_paths or []) +
        _StaticFiles.all_paths, created_paths=[gradio_utils.get_upload_folder(), str(gradio_utils.get_cache_folder())])
    return str(local) if allowed else None


def refused_download(label: str, url: str, exc: Exception, max_bytes: int | None) -> str:
    """The message for a URL the app could not or may not fetch (Gradio's guard, DNS, HTTP)."""
    reason = str(exc)
    if "failed validation" in reason:
        why = ("its host is a local or private address, which Gradio's download guard refuses (a /gradio_api/file= URL "
               "of this server must name a file it serves: an upload, a result, an example)")
    elif "resolve hostname" in reason:
        why = "its host name does not resolve"
    elif match := re.search(r"Status code: (\d+)", reason):
        why = f"the server answered HTTP {match.group(1)}"
    else:
        why = f"the download failed ({type(exc).__name__})"
    return f"{label}: the app cannot fetch {shown(url)}: {why}. {how_to_send(max_bytes)}"


def reads_served_files(component: Component, label: str, blocks: gr.Blocks) -> None:
    """Make ``component`` (a file input of the API) read a ``/gradio_api/file=`` URL of a file
    ``blocks`` serves from the disk, and turn a URL it cannot fetch into a message headed by ``label``.

    Gradio moves an input's file into the component's cache with
    ``Block.async_move_resource_to_block_cache`` before anything of the app runs (a URL: downloaded
    through its SSRF guard); the instance's method is replaced, as ``unopened_image`` replaces
    ``preprocess``, and a local file goes the stock way (copied into the cache)."""
    stock = component.async_move_resource_to_block_cache

    async def move_to_cache(url_or_file_path: str | Path | None) -> str | None:
        if not isinstance(url_or_file_path, str) or not is_http_url_like(url_or_file_path):
            return await stock(url_or_file_path)
        local = served_file(url_or_file_path, blocks)
        if local is not None:
            return await stock(local)
        try:
            return await stock(url_or_file_path)
        except Exception as exc:  # noqa: BLE001 - every failed fetch is the agent's to fix: a message, no traceback
            raise gr.Error(refused_download(label, url_or_file_path, exc, blocks.max_file_size), title="Check the inputs",
                           print_exception=False) from None

    component.async_move_resource_to_block_cache = move_to_cache


# ----------------------------------------------------------------------------- file arguments of a tool call


def checked_file(name: str, value: Any, blocks: gr.Blocks, base_url: str) -> Any:
    """The file argument ``name`` of a tool call as Gradio may take it, or ``UserInputError`` naming it.

    A data URL must be base64 and at most the upload limit; an http(s) URL passes (``reads_served_files``
    reads or fetches it); a bare path the file route serves (an upload's returned path) becomes its
    ``/gradio_api/file=`` URL on ``base_url``; None passes (a parameter left out)."""
    label = FILE_LABELS.get(name, name)
    if value is None or (isinstance(value, str) and is_http_url_like(value)):
        return value
    if not isinstance(value, str):
        raise UserInputError(f"{label}: {name} must be a URL (a string), got {type(value).__name__}. "
                             f"{how_to_send(blocks.max_file_size)}")
    if value.startswith("data:"):
        check_data_url(label, value, blocks.max_file_size)
        return value
    local = served_file(value.strip(), blocks)
    if local is not None:
        return f"{base_url.rstrip('/')}{FILE_ROUTE}{quote(local)}"
    raise UserInputError(f"{label}: {shown(value)} is not a URL or a file this server holds (the server cannot read "
                         f"the agent's disk). {how_to_send(blocks.max_file_size)}")


def check_data_url(label: str, value: str, max_bytes: int | None) -> None:
    """``UserInputError`` unless ``value`` is a base64 data URL of at most ``max_bytes`` decoded bytes."""
    match = DATA_URL.fullmatch(value)
    if match is None or ";base64" not in match.group("params"):
        raise UserInputError(f"{label}: a data URL must hold base64, as data:image/png;base64,..., got "
                             f"{shown(value)}. {how_to_send(max_bytes)}")
    payload = "".join(match.group("payload").split())
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > (DEFAULT_MAX_BYTES if max_bytes is None else max_bytes):
        raise UserInputError(f"{label}: the data URL holds {size_text(size)}, over this server's limit of "
                             f"{size_text(max_bytes)} (--max-file-size). {how_to_send(max_bytes)}")
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserInputError(f"{label}: the data URL's base64 is damaged ({exc}). {how_to_send(max_bytes)}") from None


# ----------------------------------------------------------------------------- the MCP server's additions


def serve_agents(blocks: gr.Blocks, file_inputs: dict[str, Component]) -> None:
    """Serve agents well: ``file_inputs`` (each API file input, by the parameter it is for) read this
    server's file URLs; once the app starts, its MCP server (with ``--mcp``) checks file arguments,
    tells agents how to pass files and stops the edit of a cancelled call."""
    for name, component in file_inputs.items():
        reads_served_files(component, FILE_LABELS[name], blocks)
    blocks.extra_startup_events.append(functools.partial(_on_startup, blocks))


async def _on_startup(blocks: gr.Blocks) -> None:
    server = getattr(blocks, "mcp_server_obj", None)  # Gradio's GradioMCPServer, made by launch(mcp_server=True)
    if server is None or getattr(server, "_softrepa_agents", False):
        return
    server._softrepa_agents = True
    checks_file_arguments(server, blocks)
    if not cancels_with_the_call(server):
        log.warning("Gradio's MCP server has changed: a cancelled MCP call no longer stops its edit")


def _text_result(message: str, is_error: bool = True) -> Any:
    from mcp import types

    return types.ServerResult(types.CallToolResult(content=[types.TextContent(type="text", text=message)],
                                                   isError=is_error))


def checks_file_arguments(server: Any, blocks: gr.Blocks) -> None:
    """Wrap the MCP server's ``tools/call`` handler (``mcp.server.lowlevel.Server.request_handlers``)
    to check each file argument first (``checked_file``), and its ``tools/list`` handler to say in each
    file-taking tool's description how to pass a file."""
    from mcp import types

    handlers = server.mcp_server.request_handlers
    call_tool, list_tools = handlers[types.CallToolRequest], handlers[types.ListToolsRequest]

    async def checked_call(request: types.CallToolRequest) -> types.ServerResult:
        arguments = dict(request.params.arguments or {})
        base_url = server.local_url or "http://127.0.0.1/"
        try:
            for name in FILE_PARAMETERS:
                if name in arguments:
                    arguments[name] = checked_file(name, arguments[name], blocks, base_url)
        except UserInputError as exc:
            return _text_result(str(exc))
        request.params.arguments = arguments
        return await call_tool(request)

    async def listed_tools(request: types.ListToolsRequest) -> types.ServerResult:
        result = await list_tools(request)
        for tool in result.root.tools:
            if set(FILE_PARAMETERS) & set(tool.inputSchema.get("properties", {})):
                tool.description = f"{(tool.description or '').rstrip('.')}. {how_to_send(blocks.max_file_size)}"
        return result

    handlers[types.CallToolRequest], handlers[types.ListToolsRequest] = checked_call, listed_tools


def cancels_with_the_call(server: Any) -> bool:
    """Make a cancelled MCP call cancel its ``gradio_client`` job (the app then stops the edit after
    its current step, ``app.components.client_gone``); False when Gradio's methods are not there.

    Gradio 6.31 waits for the job in ``_execute_tool_without_progress`` (a thread that a cancel
    cannot end: the call waits for the edit) or ``_execute_tool_with_progress`` (the job's updates);
    the instance's two are replaced by ones that cancel the job when the wait is cancelled. Gradio's
    first also hands an endpoint's returns on as one item (the tuple's ``str()``: one text, no
    image); the replacement hands on one per return, as the second does."""
    with_progress = getattr(server, "_execute_tool_with_progress", None)
    if with_progress is None or not hasattr(server, "_execute_tool_without_progress"):
        return False

    async def without_progress(job: Any) -> list[Any]:
        result = await _cancelling(job, lambda: anyio.to_thread.run_sync(job.result, abandon_on_cancel=True))
        return list(result) if isinstance(result, tuple) else [result]  # one item per return, as with progress

    async def progressing(job: Any, progress_token: str | int) -> Any:
        return await _cancelling(job, lambda: with_progress(job, progress_token))

    server._execute_tool_without_progress, server._execute_tool_with_progress = without_progress, progressing
    return True


async def _cancelling(job: Any, wait: Callable[[], Awaitable[Any]]) -> Any:
    """``await wait()``; when that is cancelled, cancel ``job`` first (``job.cancel()`` posts to this
    same server, so it runs in a thread, shielded from the cancellation under way)."""
    try:
        return await wait()
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(job.cancel)
        log.info("an MCP call was cancelled: its job is cancelled, the edit stops after its current step")
        raise
