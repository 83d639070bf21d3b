"""One command-line edit on the bundled model, on a quiet machine and beside two CPU-bound processes.

    python benchmarks/edit_under_load.py                  # the CLI's default threads (auto), 3 repeats
    python benchmarks/edit_under_load.py --compare 2      # also --threads 2 (torch's default on 2 cores), same run
    python benchmarks/edit_under_load.py --threads 1 --repeats 5

Each run is README tour step 2: ``python -m editing --model assets/shapes-sd3 --kind shapes-sd3 --tokens
assets/shapes-sd3-softrepa.safetensors --image assets/examples/shapes-sd3/shapes-01-shape.png --source ...
--target ... --out <temp folder>``, a fresh process each time. "Loaded" runs start ``--load`` Python
busy loops first (each ends by itself after ``--load-seconds``, and the script kills them as soon as the
loaded runs are done, also on an error or Ctrl-C). The repeats interleave: quiet runs of every setting,
then loaded runs of every setting, then again.

What is timed: the edit itself, as the CLI reports it (``wrote ... (0.6s)``: the editor's own seconds
for the edit, model loading and imports excluded; 0.1 s resolution), which is what the thread count
changes; the whole command's wall seconds (imports and model loading included) are in the table too.
The children run without ``SOFTREPA_THREADS`` and ``OMP_NUM_THREADS``, so "default" is the shipped
default whatever this shell sets; ``--threads`` / ``--compare`` pass ``--threads N`` (or ``auto``).
Medians over ``--repeats``. The last line is::

    RESULT loaded_vs_quiet=<loaded / quiet edit seconds> quiet_s=<median> loaded_s=<median>
           command_loaded_vs_quiet=<the same for whole commands> threads=<setting> cores=<n> load=<n>
           repeats=<r> [compare_threads=<setting> compare_loaded_vs_quiet=<..> compare_quiet_s=<..>
           compare_loaded_s=<..>]

Goal (issue #24): loaded_vs_quiet <= 2 on 2 cores at the default setting.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from softrepa.runtime import AUTO_THREADS, THREADS_ENV, available_cores, parse_threads, threads_for

REPO = Path(__file__).resolve().parent.parent
EDIT = ["--model", "assets/shapes-sd3", "--kind", "shapes-sd3", "--tokens", "assets/shapes-sd3-softrepa.safetensors",
        "--image", "assets/examples/shapes-sd3/shapes-01-shape.png",
        "--source", "a star that is tiny and blue and a triangle that is solid and orange",
        "--target", "a star that is tiny and blue and a star that is solid and orange"]
EDIT_SECONDS = re.compile(r"wrote .*\(([0-9.]+)s\)")  # the CLI's line for a written edit
BUSY_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
DEFAULT = "default"  # the setting that passes no --threads


def threads_setting(text: str) -> str:
    """``--threads`` / ``--compare``: what the CLI accepts (checked here, before minutes of runs)."""
    try:
        return str(parse_threads(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=threads_setting, default=None,
                        help="pass --threads N (or auto) to the CLI for the RESULT setting (default: pass nothing, "
                             "the CLI's default)")
    parser.add_argument("--compare", type=threads_setting, default=None, metavar="THREADS",
                        help="also time --threads THREADS in the same run, e.g. 2 (torch's default on 2 cores)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting, quiet and loaded each")
    parser.add_argument("--load", type=int, default=2, help="CPU-bound background processes of a loaded run")
    parser.add_argument("--load-seconds", type=float, default=600.0,
                        help="longest a background process lives (it is killed as soon as its runs are done)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one command may take")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.load < 0 or args.load_seconds <= 0:
        parser.error("--repeats must be >= 1, --load >= 0 and --load-seconds > 0")
    return args


@contextlib.contextmanager
def busy_processes(count: int, seconds: float):
    """``count`` Python busy loops for at most ``seconds``; killed on leaving, whatever happens."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)]) for _ in range(count)]
    try:
        yield loops
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def child_env() -> dict[str, str]:
    """This environment without the thread settings, so each run gets exactly its setting's threads."""
    return {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, "OMP_NUM_THREADS")}


def run_edit(setting: str, out: Path, timeout: float) -> tuple[float, float]:
    """One ``python -m editing`` run: (the edit's seconds as the CLI reports them, the command's wall seconds)."""
    command = [sys.executable, "-m", "editing", *EDIT, "--out", str(out)]
    if setting != DEFAULT:
        command += ["--threads", setting]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    found = EDIT_SECONDS.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")
    return float(found.group(1)), wall


def measure(args: argparse.Namespace, settings: list[str]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(setting, "quiet" | "loaded") -> [(edit s, command s)] per repeat, interleaved as the docstring says."""
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="edit-under-load-") as folder, \
            tqdm(total=2 * len(settings) * args.repeats, desc="edits", unit="run", file=sys.stderr) as bar:
        for repeat in range(args.repeats):
            for state in ("quiet", "loaded"):
                with busy_processes(args.load if state == "loaded" else 0, args.load_seconds):
                    for setting in settings:
                        out = Path(folder) / f"{setting}-{state}-{repeat}"
                        runs.setdefault((setting, state), []).append(run_edit(setting, out, args.timeout))
                        bar.update()
    return runs


def describe(setting: str) -> str:
    """What a setting means on this machine (the CLI's rule, ``softrepa.runtime.threads_for``)."""
    count = threads_for(AUTO_THREADS if setting == DEFAULT else setting, environ=child_env())
    name = "default (auto)" if setting == DEFAULT else f"--threads {setting}"
    return f"{name}: {count if count is not None else 'torch default'} thread(s)"



def summarise(runs, setting: str) -> dict[str, float]:
    """Medians of one setting and its loaded / quiet ratios."""
    median = {state: [statistics.median(r[i] for r in runs[(setting, state)]) for i in (0, 1)]
              for state in ("quiet", "loaded")}
    return {"quiet_s": median["quiet"][0], "loaded_s": median["loaded"][0],
            "loaded_vs_quiet": median["loaded"][0] / median["quiet"][0],
            "command_quiet_s": median["quiet"][1], "command_loaded_s": median["loaded"][1],
            "command_loaded_vs_quiet": median["loaded"][1] / median["quiet"][1]}


def print_table(runs, settings: list[str], args: argparse.Namespace) -> None:
    print(f"\none command-line edit on the bundled model, {available_cores()} cores, {args.load} busy processes "
          f"when loaded, medians of {args.repeats} (load average now {os.getloadavg()[0]:.1f})")
    print("| setting | quiet edit s | loaded edit s | loaded / quiet | quiet command s | loaded command s | "
          "loaded / quiet (command) | loaded edits, each |")
    print("|---|---|---|---|---|---|---|---|")
    for setting in settings:
        row = summarise(runs, setting)
        each = ", ".join(f"{edit:.1f}" for edit, _ in runs[(setting, "loaded")])
        print(f"| {describe(setting)} | {row['quiet_s']:.2f} | {row['loaded_s']:.2f} | {row['loaded_vs_quiet']:.2f} | "
              f"{row['command_quiet_s']:.1f} | {row['command_loaded_s']:.1f} | "
              f"{row['command_loaded_vs_quiet']:.2f} | {each} |")


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    primary = args.threads or DEFAULT
    settings = [primary] + ([args.compare] if args.compare and args.compare != primary else [])
    print(f"load average before: {os.getloadavg()[0]:.1f}; settings: {', '.join(describe(s) for s in settings)}")
    runs = measure(args, settings)  # its progress bar is closed before the table and RESULT
    print_table(runs, settings, args)
    result = summarise(runs, primary)
    words = [f"loaded_vs_quiet={result['loaded_vs_quiet']:.2f}", f"quiet_s={result['quiet_s']:.2f}",
             f"loaded_s={result['loaded_s']:.2f}", f"command_loaded_vs_quiet={result['command_loaded_vs_quiet']:.2f}",
             f"threads={primary}", f"cores={available_cores()}", f"load={args.load}", f"repeats={args.repeats}"]
    if len(settings) > 1:
        compare = summarise(runs, settings[1])
        words += [f"compare_threads={settings[1]}", f"compare_loaded_vs_quiet={compare['loaded_vs_quiet']:.2f}",
                  f"compare_quiet_s={compare['quiet_s']:.2f}", f"compare_loaded_s={compare['loaded_s']:.2f}"]
    print("RESULT " + " ".join(words))
    return result


if __name__ == "__main__":
    main()
