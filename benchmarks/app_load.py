"""Load test of the web app: cold start, then concurrent API clients.

    python benchmarks/app_load.py                      # the bundled shapes model if built, else a tiny SD3
    python benchmarks/app_load.py --threads 1          # torch threads of the server (busy shared machines)
    python benchmarks/app_load.py --clients 8 --edits 3 --model FOLDER --kind sd3 --tokens FILE

Starts ``python app.py`` as a fresh process on a free port, measures the time from process start to
the first served edit (cold start: imports, model load, server start, first edit with cold caches),
then runs ``--clients`` concurrent ``gradio_client`` clients, each making ``--edits`` edits of its own
shapes-world picture with the app's default settings (the model's preset, tokens on when the model
has them). Every edit must come back. Prints a table per client and ends with::

    RESULT cold_start_s=<x> edit_s=<median seconds of one edit on the server> completed=<n>/<clients x edits>
           model=<shapes-sd3 | tiny-sd3 | --model> clients=<c> edits=<e>

Goals (bundled shapes model, 2 CPU cores): cold start <= 15 s, edit <= 3 s, all edits complete.
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


def cold_start(url: str, work: Path, started: float, process: subprocess.Popen,
               first_input: tuple[str, str, str]) -> float:
    """Seconds from process start to the first served edit; prints what the server logged on the way."""
    from gradio_client import Client, handle_file

    wait_until_served(url, process, started + STARTUP_TIMEOUT_S)
    served_s = time.perf_counter() - started
    image, source_prompt, target_prompt = first_input
    first = Client(url, verbose=False).predict(image=handle_file(image), source_prompt=source_prompt,
                                               target_prompt=target_prompt, api_name="/edit")
    cold_start_s = time.perf_counter() - started
    loaded = [line.split(": ", 1)[-1] for line in (work / "server.log").read_text().splitlines()
              if "loaded in" in line]
    print(f"page served after {served_s:.1f} s; {'; '.join(loaded) or 'model load time not logged'}; first "
          f"edit served after {cold_start_s:.1f} s (that edit: {first[4]['seconds']:.2f} s on the server)\n")
    return cold_start_s


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


def serve_and_load(args: argparse.Namespace, work: Path, flags: list[str],
                   inputs: list[tuple[str, str, str]]) -> tuple[float, list[ClientLog], float]:
    """Start the app, time its cold start, run the load test, stop it: (cold start s, logs, load s)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, str(REPO / "app.py"), "--port", str(port), "--temp-dir", str(work / "app"), *flags]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"server: {' '.join(command[1:])}")
    with (work / "server.log").open("w") as server_log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            cold_start_s = cold_start(url, work, started, process, inputs[0])
            logs, load_s = load_test(url, inputs, args)
        except Exception:
            print((work / "server.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)
    return cold_start_s, logs, load_s


def report(name: str, args: argparse.Namespace, cold_start_s: float, logs: list[ClientLog], load_s: float) -> bool:
    """Print the per-client table and the RESULT line; True when every edit came back."""
    print(f"{'client':>6} {'done':>5} {'edit s (server)':>16} {'latency s (min/median/max)':>28}  errors   ({name})")
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
    print(f"RESULT cold_start_s={cold_start_s:.1f} edit_s={edit_s:.2f} completed={completed}/{total} model={name} "
          f"clients={args.clients} edits={args.edits}")
    return completed == total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="app-load-") as tmp:
        work = Path(tmp)
        name, described, flags = model_flags(args, work)
        inputs = edit_inputs(max(args.clients, 1), work)
        print(f"model: {described}")
        cold_start_s, logs, load_s = serve_and_load(args, work, flags, inputs)
    return 0 if report(name, args, cold_start_s, logs, load_s) else 1


if __name__ == "__main__":
    sys.exit(main())
