"""Load test of the web app: start-up (page, model, first edit), concurrent API clients, a cancelled edit.

    python benchmarks/app_load.py                      # the bundled shapes model if built, else a tiny SD3
    python benchmarks/app_load.py --threads 1          # torch threads of the server (busy shared machines)
    python benchmarks/app_load.py --clients 8 --edits 3 --model FOLDER --kind sd3 --tokens FILE
    python benchmarks/app_load.py --clients 1 --edits 1 --repeats 5    # start-up only, 5 fresh starts (medians)

Starts ``python app.py`` as a fresh process on a free port and times, from the process start: the page
served (the first HTTP 200 of ``/``), the model ready (the server's "loaded in" log line appears) and the
first served edit (sent as soon as the page is served, so it waits for the model: what a person who
clicks at once gets; cold caches included). Then ``--clients`` concurrent ``gradio_client`` clients
each make ``--edits`` edits of their own shapes-world picture with the app's default settings (the
model's preset, tokens on when the model has them); every edit must come back. Last, a cancelled
edit: one client submits a long edit (n_avg 8: about 8 edits long), cancels it (``job.cancel()``)
after it ran ``--cancel-after`` seconds, and at once asks for an ordinary edit; ``cancel_free_s`` is
the time from the cancel to that edit's result (``cancel_ref_s``: the same edit on the idle server,
just before), and the server's CPU use before the cancel and after that edit shows whether the long
edit ran and whether it stopped. Without a cancel that stops the running edit, the new edit waits
for the long one (or shares the CPU with it). Prints the start-up table, a table per client and
ends with::

    RESULT cold_start_s=<x> edit_s=<median seconds of one edit on the server> completed=<n>/<clients x edits>
           model=<shapes-sd3 | tiny-sd3 | --model> clients=<c> edits=<e>
           page_s=<page served> model_s=<model ready> first_edit_s=<first edit served (= cold_start_s)>
           cancel_free_s=<cancel to the next edit's result> cancel_ref_s=<that edit, idle server>
           cancel_running_cores=<server CPU while the long edit ran> cancel_busy_cores=<server CPU in the 2 s
           after the next edit: ~0 when the cancelled edit stopped>
           page_cpu_s=<server CPU seconds when the page was served> first_edit_cpu_s=<... at the first edit>
           model_ready_s=<model ready, warmed up (= model_s)> first_edit_own_s=<the first edit's own seconds on
           the server, its wait for the model excluded> first_vs_later=<first_edit_own_s / edit_s> repeats=<r>

CPU seconds (Linux /proc) count the server's own work, all threads, whatever else runs on the machine:
on a shared machine they compare runs better than wall seconds.

With ``--repeats R`` the start-up runs R times (fresh processes); the RESULT's start-up figures are
medians, the load test and the cancel run on the last start.

Goals (bundled shapes model, 2 CPU cores): page <= 5 s, edit <= 3 s, all edits complete, cancel_free_s
about cancel_ref_s, and the first edit on a ready model an ordinary edit: first_vs_later <= 1.5 (the
app warms the model up before it reports it ready, ``editing.compile.warm_up``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

from app.settings import BUNDLED_MODEL_DIR
from app.testing import free_port

STARTUP_TIMEOUT_S = 600.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or Hub id (default: bundled shapes model, else a tiny SD3)")
    parser.add_argument("--kind", help="model kind (with --model)")
    parser.add_argument("--tokens", help="soft-token file (with --model)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--edits", type=int, default=3, help="edits per client")
    parser.add_argument("--threads", type=int, help="torch threads of the app (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh starts timed (medians in RESULT)")
    parser.add_argument("--cancel-after", type=float, default=1.0,
                        help="seconds the long edit runs before it is cancelled (default 1)")
    parser.add_argument("--no-cancel", action="store_true", help="skip the cancelled edit (start-up and load only)")
    return parser.parse_args(argv)


def tiny_model(folder: Path) -> list[str]:
    """Write the tiny random-weight SD3 and its tokens; the app flags that serve them."""
    import torch

    from softrepa.tiny import save_tiny_pipeline, tiny_sd3_pipeline
    from softrepa.tokens import new_tokens, save_tokens

    save_tiny_pipeline("sd3", folder / "tiny-sd3")
    torch.manual_seed(5)
    save_tokens(new_tokens(tiny_sd3_pipeline(), "sd3", num_layers=2), folder / "tokens.safetensors")
    # 8 zero "T5" tokens as the shapes model uses; the tiny SD3 has no T5 either
    return ["--model", str(folder / "tiny-sd3"), "--kind", "sd3", "--tokens", str(folder / "tokens.safetensors"),
            "--max-sequence-length", "8"]


def model_flags(args: argparse.Namespace, work: Path) -> tuple[str, str, list[str]]:
    """(name for RESULT, description, the app's model flags)."""
    if args.model:
        flags = ["--model", args.model] + (["--kind", args.kind] if args.kind else [])
        return "".join(args.model.split()), args.model, flags + (["--tokens", args.tokens] if args.tokens else [])
    if BUNDLED_MODEL_DIR.is_dir():
        return "shapes-sd3", "shapes-sd3 (the bundled shapes model, assets/shapes-sd3)", []
    return "tiny-sd3", "tiny-sd3 (tiny random-weight SD3; the bundled shapes model is not built yet)", tiny_model(work)


def edit_inputs(count: int, work: Path) -> list[tuple[str, str, str]]:
    """(image path, source prompt, target prompt) per client: shapes-world edit pairs."""
    from shapes.world import make_edit_pairs

    inputs = []
    for pair in make_edit_pairs(count, seed=1):
        path = work / f"input-{pair['index']}.png"
        pair["source_image"].save(path)
        inputs.append((str(path), pair["source_prompt"], pair["target_prompt"]))
    return inputs


@dataclass
class ClientLog:
    latencies: list[float] = field(default_factory=list)  # seconds from request to result, queue included
    edit_seconds: list[float] = field(default_factory=list)  # seconds the server spent editing
    errors: list[str] = field(default_factory=list)


def run_client(url: str, inputs: tuple[str, str, str], edits: int, log: ClientLog, start: threading.Barrier) -> None:
    from gradio_client import Client, handle_file

    image, source_prompt, target_prompt = inputs
    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        log.errors.append(f"connect: {exc}")
        return
    start.wait()
    for index in range(edits):
        began = time.perf_counter()
        try:
            # a new seed per edit: the source latents are cached, the edit itself is not
            details = client.predict(image=handle_file(image), source_prompt=source_prompt,
                                     target_prompt=target_prompt, seed=index, api_name="/edit")[4]
            log.latencies.append(time.perf_counter() - began)
            log.edit_seconds.append(details["seconds"])
        except Exception as exc:  # noqa: BLE001
            log.errors.append(str(exc)[:200])


def wait_until_served(url: str, process: subprocess.Popen, deadline: float) -> None:
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the app did not start in time")


class LogWatcher(threading.Thread):
    """Notes when lines with given words first appear in the server's log (seconds from ``started``)."""

    def __init__(self, path: Path, started: float, words: tuple[str, ...]):
        super().__init__(daemon=True)
        self.path, self.started, self.words = path, started, words
        self.seen: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set() and len(self.seen) < len(self.words):
            text = self.path.read_text(errors="replace") if self.path.is_file() else ""
            for word in self.words:
                if word not in self.seen and word in text:
                    self.seen[word] = time.perf_counter() - self.started
            time.sleep(0.05)


@dataclass
class StartTimes:
    page_s: float  # the page served (HTTP 200 of /)
    model_s: float | None  # the model's "loaded in" line in the server log (None: not seen)
    first_edit_s: float  # the first edit's result back (sent as soon as the page was served)
    first_edit_server_s: float  # that edit's own seconds on the server
    page_cpu_s: float | None = None  # the server's CPU seconds (all threads) when the page was served
    first_edit_cpu_s: float | None = None  # ... and when the first edit came back (None: no /proc)


def cold_start(url: str, work: Path, started: float, process: subprocess.Popen,
               first_input: tuple[str, str, str]) -> StartTimes:
    """Seconds from process start to the page, the model and the first served edit."""
    from gradio_client import Client, handle_file

    watcher = LogWatcher(work / "server.log", started, ("loaded in", "model not loaded"))
    watcher.start()
    wait_until_served(url, process, started + STARTUP_TIMEOUT_S)
    page_s = time.perf_counter() - started
    page_cpu_s = cpu_seconds(process.pid)
    image, source_prompt, target_prompt = first_input
    first = Client(url, verbose=False).predict(image=handle_file(image), source_prompt=source_prompt,
                                               target_prompt=target_prompt, api_name="/edit")
    first_edit_s = time.perf_counter() - started
    first_edit_cpu_s = cpu_seconds(process.pid)
    watcher.join(timeout=1.0)
    watcher.stopped.set()
    times = StartTimes(page_s, watcher.seen.get("loaded in"), first_edit_s, first[4]["seconds"], page_cpu_s,
                       first_edit_cpu_s)
    loaded = [line.split(": ", 1)[-1] for line in (work / "server.log").read_text().splitlines() if "loaded in" in line]
    model = f"{times.model_s:.1f} s" if times.model_s is not None else "not seen"
    print(f"page served after {page_s:.1f} s; model ready after {model} ({'; '.join(loaded) or 'not logged'}); "
          f"first edit served after {first_edit_s:.1f} s (that edit: {times.first_edit_server_s:.2f} s on the server)")
    warnings = [line for line in (work / "server.log").read_text().splitlines() if "warn" in line.lower()]
    print("server warnings at start-up: " + ("; ".join(warnings) if warnings else "none"))
    return times


def load_test(url: str, inputs: list[tuple[str, str, str]], args: argparse.Namespace) -> tuple[list[ClientLog], float]:
    """Every client's log and the seconds until the last client finished."""
    logs = [ClientLog() for _ in range(args.clients)]
    barrier = threading.Barrier(args.clients)
    threads = [threading.Thread(target=run_client, args=(url, inputs[i % len(inputs)], args.edits, logs[i], barrier))
               for i in range(args.clients)]
    load_started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return logs, time.perf_counter() - load_started


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) process ``pid`` has used; None where /proc is missing."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass
class CancelTimes:
    free_s: float  # from the cancel to the next edit's result
    reference_s: float  # the same edit on the idle server
    running_cores: float | None  # the server's CPU use while the long edit ran, before the cancel (cores)
    busy_cores: float | None  # ... in the BUSY_WINDOW_S after the next edit (None: unknown)


BUSY_WINDOW_S = 2.0  # an idle server uses ~0 cores; a cancelled edit still running uses about one thread's worth
LONG_EDIT = dict(n_avg=8, seed=8)  # the preset's T and n_max, 8 noise samples a step: ~8 edits long


def _cores(pid: int, seconds: float) -> float | None:
    """The server's CPU use (cores) over the next ``seconds``."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    after = cpu_seconds(pid)
    return (after - before) / seconds if before is not None and after is not None else None


def cancelled_edit(url: str, inputs: tuple[str, str, str], cancel_after: float, pid: int) -> CancelTimes:
    """An edit on the idle server (the reference), then a long edit (``LONG_EDIT``) cancelled after it ran
    ``cancel_after`` seconds and the same ordinary edit at once: seconds from the cancel to its result,
    and whether the server keeps computing afterwards (the cancelled edit still running)."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status

    image, source_prompt, target_prompt = inputs
    client = Client(url, verbose=False)

    def ordinary_edit() -> float:
        began = time.perf_counter()
        client.predict(image=handle_file(image), source_prompt=source_prompt, target_prompt=target_prompt, seed=7,
                       api_name="/edit")
        return time.perf_counter() - began

    ordinary_edit()  # the source latents of this picture cached, as for the timed edits
    reference_s = ordinary_edit()
    job = client.submit(image=handle_file(image), source_prompt=source_prompt, target_prompt=target_prompt,
                        api_name="/edit", **LONG_EDIT)
    deadline = time.perf_counter() + 120.0
    while job.status().code not in (Status.PROCESSING, Status.PROGRESS, Status.FINISHED):
        if time.perf_counter() > deadline:
            raise RuntimeError("the long edit did not start in 120 s")
        time.sleep(0.05)
    running = _cores(pid, cancel_after)
    if job.done():
        raise RuntimeError(f"the long edit ended before the cancel ({job.status().code.name}); it did not run as a "
                           "long edit: check LONG_EDIT against the app, or lower --cancel-after")
    cancelled = time.perf_counter()
    job.cancel()
    ordinary_edit()
    free_s = time.perf_counter() - cancelled
    busy = _cores(pid, BUSY_WINDOW_S)
    words = {name: f"{value:.2f} cores" if value is not None else "unknown"
             for name, value in (("running", running), ("busy", busy))}
    print(f"cancelled edit: the long edit used {words['running']} before the cancel; the next edit came back "
          f"{free_s:.1f} s after the cancel (the same edit on the idle server: {reference_s:.1f} s); the server's CPU "
          f"use in the {BUSY_WINDOW_S:.0f} s after it: {words['busy']} (about 0 when the cancelled edit stopped)")
    return CancelTimes(free_s, reference_s, running, busy)


def serve_once(args: argparse.Namespace, work: Path, flags: list[str], inputs: list[tuple[str, str, str]],
               final: bool) -> tuple[StartTimes, list[ClientLog], float, CancelTimes | None]:
    """Start the app and time its start-up; on the ``final`` start also the load test and the cancelled
    edit; stop it: (start times, client logs, load seconds, the cancelled edit's times)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--temp-dir", str(work / "app"), *flags]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"server: {' '.join(command[1:])}")
    logs, load_s, cancel = [], 0.0, None
    with (work / "server.log").open("w") as server_log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            times = cold_start(url, work, started, process, inputs[0])
            if final:
                logs, load_s = load_test(url, inputs, args)
                if not args.no_cancel:
                    cancel = cancelled_edit(url, inputs[0], args.cancel_after, process.pid)
        except Exception:
            print((work / "server.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)
    return times, logs, load_s, cancel


def median_times(runs: list[StartTimes]) -> StartTimes:
    def median(name: str) -> float | None:
        values = [getattr(run, name) for run in runs if getattr(run, name) is not None]
        return statistics.median(values) if values else None

    return StartTimes(median("page_s"), median("model_s"), median("first_edit_s"), median("first_edit_server_s"),
                      median("page_cpu_s"), median("first_edit_cpu_s"))


def figure(value: float | None, digits: int = 1) -> str:
    return "nan" if value is None else f"{value:.{digits}f}"


def report(name: str, args: argparse.Namespace, starts: list[StartTimes], logs: list[ClientLog], load_s: float,
           cancel: CancelTimes | None) -> bool:
    """Print the start-up table, the per-client table and the RESULT line; True when every edit came back."""
    print(f"\n{'start':>6} {'page s':>7} {'model s':>8} {'first edit s':>13} {'(on the server)':>16} "
          f"{'server CPU s: page':>19} {'first edit':>11}   ({name}; wall seconds from the process start)")
    start = median_times(starts)
    for index, run in [*enumerate(starts), ("median", start)]:
        print(f"{index:>6} {run.page_s:>7.1f} {figure(run.model_s):>8} {run.first_edit_s:>13.1f} "
              f"{run.first_edit_server_s:>16.2f} {figure(run.page_cpu_s):>19} {figure(run.first_edit_cpu_s):>11}")
    print(f"\n{'client':>6} {'done':>5} {'edit s (server)':>16} {'latency s (min/median/max)':>28}  errors")
    for index, log in enumerate(logs):
        edit = f"{statistics.median(log.edit_seconds):.2f}" if log.edit_seconds else "-"
        latency = (f"{min(log.latencies):.1f} / {statistics.median(log.latencies):.1f} / {max(log.latencies):.1f}"
                   if log.latencies else "-")
        print(f"{index:>6} {len(log.latencies):>5}/{args.edits:<2} {edit:>14} {latency:>28}  {'; '.join(log.errors)}")
    all_edits = [s for log in logs for s in log.edit_seconds]
    all_latencies = [s for log in logs for s in log.latencies]
    completed = len(all_latencies)
    total = args.clients * args.edits
    edit_s = statistics.median(all_edits) if all_edits else float("nan")
    if all_latencies:
        print(f"\n{completed} edits in {load_s:.1f} s ({completed / load_s:.2f} edits/s, one at a time on the "
              f"device); latency median {statistics.median(all_latencies):.1f} s, max {max(all_latencies):.1f} s "
              "(queue wait included)")
    cancel = cancel or CancelTimes(float("nan"), float("nan"), None, None)
    print(f"RESULT cold_start_s={start.first_edit_s:.1f} edit_s={edit_s:.2f} completed={completed}/{total} model={name} "
          f"clients={args.clients} edits={args.edits} page_s={start.page_s:.1f} model_s={figure(start.model_s)} "
          f"first_edit_s={start.first_edit_s:.1f} cancel_free_s={cancel.free_s:.1f} cancel_ref_s={cancel.reference_s:.1f} "
          f"cancel_running_cores={figure(cancel.running_cores, 2)} cancel_busy_cores={figure(cancel.busy_cores, 2)} "
          f"page_cpu_s={figure(start.page_cpu_s)} "
          f"first_edit_cpu_s={figure(start.first_edit_cpu_s)} "
          f"model_ready_s={figure(start.model_s)} first_edit_own_s={start.first_edit_server_s:.2f} "
          f"first_vs_later={start.first_edit_server_s / edit_s:.2f} "
          f"repeats={len(starts)}")
    return completed == total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="app-load-") as tmp:
        work = Path(tmp)
        name, described, flags = model_flags(args, work)
        inputs = edit_inputs(max(args.clients, 1), work)
        print(f"model: {described}")
        starts = []
        for repeat in range(args.repeats):
            times, logs, load_s, cancel = serve_once(args, work, flags, inputs, final=repeat == args.repeats - 1)
            starts.append(times)
    return 0 if report(name, args, starts, logs, load_s, cancel) else 1


if __name__ == "__main__":
    sys.exit(main())
