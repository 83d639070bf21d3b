"""One command that fills docs/benchmarks.md "What GPU do I need?" on one lent GPU (issue #26, item 4).

    python benchmarks/gpu_suite.py                            # one H100 / H200: within 9 minutes, nothing downloaded
    python benchmarks/gpu_suite.py --out $OUT/gpu_table.md    # on the device tool (docs/benchmarks.md, The GPU suite)
    python benchmarks/gpu_suite.py --models flux-dev --compile default max-autotune-no-cudagraphs
    python benchmarks/gpu_suite.py --scale tiny --device cpu  # the same code at tiny widths on a CPU (CI: seconds)

SD3-medium, SD3.5-large and FLUX.1-dev, one at a time, each built from random weights at its published
size (``softrepa.random_models``: what the real weights cost, not their images) in bfloat16 on the GPU,
edited at 1024 px with its kind's FlowEdit preset (SD3 family: T 50, n_max 33; FLUX.1-dev: T 28, n_max
24), tokens off unless a row says so. The rows of each model (``cases``):

* all on the device: a first edit (cold caches) and its peak memory; the transformer floor (n_max x one
  call at a step's batch: 4 items on SD3, 2 on FLUX) and edit / floor;
* soft tokens on (m 4 on the first 7 blocks; FLUX: the first 5 double-stream blocks): the overhead;
* no T5 (SD3 family), VAE tiling, model offload, sequential offload: a first edit's seconds and peak;
* one SoftREPA training step with chunked pairs at each ``--train-batches`` (512 px, the authors' size);
* compiled (``FlowEditor(compile=MODE)``, each ``--compile`` mode): the first edit (the compile in it),
  a second first edit and the floor through the compiled blocks; where FlowEditor has no ``compile=``,
  the row says so;
* 4 candidates (one batched run) against 4 single edits on a warm editor, at n_max ``--compare-n-max``.

Time: ``--budget-s`` (default 540, so the whole run stays within 10 minutes) is shared among the models
by ``WEIGHTS`` (what one model leaves goes to the next). Each row's cost is estimated from its model's
first edit and transformer call; a row that would not fit, keeping back the time of the model's later
rows of higher priority, is skipped, and an alarm stops any row at its share's end: the table says
which and why. The table file (``--out``, default ``runs/gpu_suite/<device>.md``) is rewritten after
every row, with the device's name and this command, so a run stopped from outside leaves what it measured.

Peak GB: ``torch.cuda.max_memory_allocated`` during the row, weights included (on a CPU the process's
resident-set high-water mark). The last line is ``RESULT rows=.. measured=.. device=.. scale=..
dtype=.. elapsed_s=.. <model>_edit_s=.. <model>_peak_gb=.. out=..``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import os
import re
import shlex
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from editing.editor import FlowEditor
from editing.presets import default_preset_name, get_preset
from softrepa.atomic import atomic_write_text
from softrepa.models import execution_device
from softrepa.random_models import MODELS, Meter, build_pipeline, measure_training, token_layers
from softrepa.runtime import DTYPES, add_threads_arg, apply_threads, resolve_device
from softrepa.tokens import new_tokens

SOURCE, TARGET = "a photo of a red car parked on a street", "a photo of a blue car parked on a street"
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")  # FlowEditor(compile=...)
WEIGHTS = {"sd3-medium": 1.5, "sd3.5-large": 3.0, "flux-dev": 3.0}  # budget shares: about what an edit costs
TRANSFER_BYTES_S = 8e9  # host <-> device copies of pageable memory, for the offload rows' estimates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("real", "tiny"), default="real", help="tiny: reduced widths, for a CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--resolution", type=int, default=None, help="edit size in px (default 1024; tiny: 64)")
    parser.add_argument("--train-resolution", type=int, default=None, help="default 512 (tiny: 32)")
    parser.add_argument("--train-batches", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--pair-chunk", type=int, default=16, help="training: most pair items per forward")
    parser.add_argument("--compare-n-max", type=int, default=8, help="n_max of 4 candidates vs 4 single edits")
    parser.add_argument("--compile", nargs="+", choices=[*COMPILE_MODES, "none"], default=None,
                        help="compiled rows' modes (default: default; tiny scale: none)")
    parser.add_argument("--compile-estimate-s", type=float, default=60.0,
                        help="seconds a compile is expected to take, for the budget (default 60)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop measuring after this many seconds")
    parser.add_argument("--out", default=None, help="the table file (default: runs/gpu_suite/<device>.md)")
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    tiny = args.scale == "tiny"
    args.resolution = args.resolution or (64 if tiny else 1024)
    args.train_resolution = args.train_resolution or (32 if tiny else 512)
    args.compile = [m for m in (args.compile or (["none"] if tiny else ["default"])) if m != "none"]
    return args


# time -----------------------------------------------------------------------------------------------

MIN_SHARE_S = 1.0  # a model whose share of the time is shorter is not built (every row says so)


class OutOfTime(BaseException):
    """Raised by the alarm in the main thread: a BaseException, so no library's ``except Exception`` keeps it."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise ``OutOfTime`` in the block after ``seconds`` (SIGALRM; no alarm outside the main thread)."""
    if seconds <= 0:
        raise OutOfTime
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def ring(signum, frame):
        raise OutOfTime

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Skip(Exception):
    """A row that cannot be measured here; the message is the table's note."""


def free(device: torch.device) -> None:
    """Give the accelerator's cached blocks back between rows (a CPU keeps its heap: nothing to do)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


# the table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One row of a model: ``mode`` and ``flags`` are the table's ({dtype}: the run's dtype)."""

    key: str
    mode: str
    flags: str
    priority: int = 1  # 1 keeps its time before any 2 when a model's share runs short


def cases_for(args: argparse.Namespace) -> list[Case]:
    cases = [Case("eager", "{dtype}, all on the device, with T5", "--dtype {dtype}"),
             Case("tokens", "the same, soft tokens on", "--tokens FILE"),
             Case("no-t5", "{dtype}, no T5", "--no-t5"),
             Case("vae-tiling", "{dtype}, VAE tiling", "--vae-tiling")]
    cases += [Case(f"train-{b}", f"training step, batch {b} ({b * b} pairs)", f"softrepa.train --batch-size {b}",
                   1 if i == 0 else 2) for i, b in enumerate(args.train_batches)]
    cases += [Case(f"compiled-{m}", f"{{dtype}}, compiled ({m})", f'FlowEditor(compile="{m}")')
              for m in args.compile or ["none"]]
    cases.append(Case("candidates", "4 candidates vs 4 single edits", "FlowEditor.edit_candidates", 2))
    cases += [Case("offload-model", "{dtype}, model offload", "--offload model"),
              Case("offload-sequential", "{dtype}, sequential offload", "--offload sequential", 2)]
    return cases


@dataclass
class Row:
    model: str
    resolution: int
    mode: str
    flags: str
    peak_gb: float | None = None
    seconds: float | None = None
    notes: str = "not measured: not reached"
    measured: bool = False

    def cells(self) -> list[str]:
        number = (lambda x: "-" if x is None else f"{x:.2f}")
        notes = " ".join(self.notes.split()).replace("|", "\\|")  # one line; an error's pipes escaped
        return [self.model, str(self.resolution), self.mode, f"`{self.flags}`", number(self.peak_gb),
                number(self.seconds), notes]


class Table:
    """The rows of "What GPU do I need?", the device and the command; rewritten after each row."""

    COLUMNS = ("model", "resolution", "mode", "flags", "peak GB", "s / edit (training: s / step)", "measured")

    def __init__(self, path: Path, header: list[str]):
        self.path, self.header = path, header
        self.rows: dict[tuple[str, str], Row] = {}
        self.notes: list[str] = []

    def plan(self, name: str, cases: list[Case], args: argparse.Namespace, dtype: str) -> None:
        for case in cases:
            px = args.train_resolution if case.key.startswith("train-") else args.resolution
            self.rows[name, case.key] = Row(MODELS[name].label, px, case.mode.format(dtype=dtype),
                                            case.flags.format(dtype=dtype))

    def put(self, name: str, key: str, peak: float | None, seconds: float | None, notes: str) -> None:
        row = self.rows[name, key]
        row.peak_gb, row.seconds, row.notes, row.measured = peak, seconds, notes, True

    def skip(self, name: str, key: str, why: str) -> None:
        self.rows[name, key].notes = why

    def markdown(self) -> str:
        lines = [*self.header, "", "| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(row.cells()) + " |" for row in self.rows.values()]
        return "\n".join(lines + [""] + [f"* {note}" for note in self.notes]) + "\n"

    def write(self) -> None:
        atomic_write_text(self.path, self.markdown())


# one model's rows -----------------------------------------------------------------------------------

class ModelRun:
    """One model's rows on one pipeline, in ``cases`` order, within its share of the time (ends at ``end``)."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                 table: Table, end: float):
        self.name, self.args, self.device, self.dtype, self.table, self.end = name, args, device, dtype, table, end
        self.model, self.meter = MODELS[name], Meter(device)
        self.params = get_preset(default_preset_name(self.model.kind, False)).params
        pixels = np.random.RandomState(0).rand(args.resolution, args.resolution, 3) * 255
        self.image = Image.fromarray(pixels.astype(np.uint8))
        self.pipe = self.tokens = None
        self.edit_s = self.call_s = None  # the first edit and one transformer call: what estimates scale
        self.step_batch, self.trained = 4, False

    def left(self) -> float:
        return self.end - time.monotonic()

    def run(self, cases: list[Case]) -> None:
        start = time.monotonic()
        try:
            if self.left() < MIN_SHARE_S:  # no model builds in less; an alarm that short races the build itself
                raise OutOfTime
            with deadline(self.left()):
                self.pipe = build_pipeline(self.name, self.args.scale, device=self.device, dtype=self.dtype)
        except (OutOfTime, Exception) as exc:  # noqa: BLE001 - said in every row of the model
            why = "its time share ran out" if isinstance(exc, OutOfTime) else f"{type(exc).__name__}: {exc}"
            for case in cases:
                self.table.skip(self.name, case.key, f"not measured: the model was not built ({why[:150]})")
            self.table.write()
            return
        self.table.notes.append(f"{self.model.label}: built in {time.monotonic() - start:.1f} s; its share of the "
                                f"time {self.end - start:.0f} s")
        self.tokens = new_tokens(self.pipe, self.model.kind, num_layers=token_layers(self.pipe))
        try:
            for i, case in enumerate(tqdm(cases, desc=self.model.label, leave=False)):
                self._run_case(case, cases[i + 1:])
        finally:
            self.pipe = self.tokens = None
            free(self.device)

    def _run_case(self, case: Case, later: list[Case]) -> None:
        reserve = sum(self.estimate(c) for c in later if c.priority < case.priority)
        need, left = self.estimate(case), self.left() - reserve
        if need > left:
            self.table.skip(self.name, case.key, f"not measured: needs about {need:.1f} s, "
                                                 f"{max(left, 0):.1f} s left of its share")
            self.table.write()
            return
        start = time.monotonic()
        try:
            with deadline(left):
                self.table.put(self.name, case.key, *self.measure(case))
        except OutOfTime:
            self.table.skip(self.name, case.key, f"stopped after {time.monotonic() - start:.0f} s: out of its time")
        except Skip as why:
            self.table.skip(self.name, case.key, str(why))
        except torch.OutOfMemoryError as exc:
            self.table.skip(self.name, case.key, f"out of memory ({str(exc).splitlines()[0][:120]})")
        except Exception as exc:  # noqa: BLE001 - one row's failure is its note; the others still run
            self.table.skip(self.name, case.key, f"failed: {type(exc).__name__}: {str(exc)[:150]}")
        finally:
            free(self.device)
            self.table.write()

    def measure(self, case: Case) -> tuple[float | None, float | None, str]:
        """(peak GB, seconds, notes) of one row."""
        key = case.key
        if key.startswith("train-"):
            return self._train(int(key.split("-")[1]))
        if key.startswith("compiled-"):
            return self._compiled(key.split("-", 1)[1])
        if key.startswith("offload-"):
            return self._offload(key.split("-", 1)[1])
        return {"eager": self._eager, "tokens": self._tokens, "no-t5": self._no_t5, "vae-tiling": self._vae_tiling,
                "candidates": self._candidates}[key]()

    # estimates ------------------------------------------------------------------------------------

    def _bytes(self, *parts: str) -> int:
        modules = [getattr(self.pipe, part, None) for part in parts] if parts else list(self.pipe.components.values())
        return sum(p.numel() * p.element_size() for m in modules if isinstance(m, torch.nn.Module)
                   for p in m.parameters())

    def estimate(self, case: Case) -> float:
        """Seconds ``case`` is expected to take, scaled from the first edit (0 before it)."""
        if self.edit_s is None:
            return 0.0
        edit, call, n_max, key = self.edit_s, self.call_s, self.params.n_max, case.key
        if key.startswith("train-"):
            batch = int(key.split("-")[1])
            pair = call / self.step_batch * (self.args.train_resolution / self.args.resolution) ** 2
            return batch * batch * pair * 4 * (1 if self.trained else 2)  # forward, again, backward (2)
        if key.startswith("compiled-"):
            return self.args.compile_estimate_s + 2.5 * edit
        if key == "candidates":
            return 9 * (max(edit - n_max * call, 0.0) + min(self.args.compare_n_max, n_max) * call)
        if key == "no-t5":
            return 1.2 * edit + 2 * self._bytes("text_encoder_3") / TRANSFER_BYTES_S
        if key == "offload-model":
            return 1.5 * edit + 2 * self._bytes() / TRANSFER_BYTES_S
        if key == "offload-sequential":
            return edit + ((n_max + 2) * self._bytes("transformer") + self._bytes()) / TRANSFER_BYTES_S
        return 1.2 * edit

    # the rows -------------------------------------------------------------------------------------

    def _editor(self, tokens=None, **options) -> FlowEditor:
        return FlowEditor(self.pipe, tokens, kind=self.model.kind, max_side=self.args.resolution, **options)

    def _first_edit(self, editor: FlowEditor, use_tokens: bool = False, warm_up: bool = False) -> tuple[float, float]:
        """(seconds, peak GB) of an edit with cold caches (``warm_up``: after a short one, untimed)."""
        if warm_up:  # kernels, the allocator
            editor.edit(self.image, SOURCE, "warm-up", self.params.replace(n_max=2), use_tokens=use_tokens)
        editor.clear_cache()
        return self.meter.run(lambda: editor.edit(self.image, SOURCE, TARGET, self.params, use_tokens=use_tokens))

    def _call_seconds(self, editor: FlowEditor) -> float:
        """One transformer call at a step's batch (median of 3, after one): the floor's unit."""
        pipe, family = self.pipe, editor.family
        device, dtype = execution_device(pipe), pipe.transformer.dtype
        self.step_batch = batch = 2 if family.distilled else 4  # FLUX: src, tar; SD3: each with its uncond
        text = family.encode_prompt(pipe, SOURCE, editor.max_sequence_length)
        side = self.args.resolution // int(pipe.vae_scale_factor)
        latent = torch.randn(batch, 16, side, side, device=device, dtype=dtype)
        embeds, pooled = text.embeds.expand(batch, -1, -1).to(device, dtype), text.pooled.expand(batch, -1).to(device, dtype)
        guidance = torch.full((batch,), 3.5) if family.distilled else None
        timestep = torch.full((1,), 500.0, device=device)

        @torch.no_grad()
        def call():
            family.velocity(pipe.transformer, latent, timestep, embeds, pooled, guidance)

        call()
        return statistics.median(self.meter.run(call)[0] for _ in range(3))

    def _floor_notes(self, seconds: float, call: float) -> str:
        floor = self.params.n_max * call
        return f"floor {floor:.2f} s ({self.params.n_max} calls of {self.step_batch}); edit / floor {seconds / floor:.3f}"

    def _eager(self):
        editor = self._editor()
        try:
            seconds, peak = self._first_edit(editor, warm_up=True)
            self.call_s = self._call_seconds(editor)
        finally:
            editor.close()
        self.edit_s = seconds
        return peak, seconds, self._floor_notes(seconds, self.call_s)

    def _tokens(self):
        editor = self._editor(self.tokens)
        try:
            seconds, peak = self._first_edit(editor, use_tokens=True, warm_up=True)
        finally:
            editor.close()
        layers = self.tokens.config.num_layers
        return peak, seconds, f"tokens overhead {(seconds / self.edit_s - 1) * 100:+.1f} % (m 4 on {layers} blocks)"

    def _plain(self, **options):
        """(peak, seconds, notes) of a first edit on a fresh editor, tokens off, against the eager row."""
        editor = self._editor(**options)
        try:
            seconds, peak = self._first_edit(editor)
        finally:
            editor.close()
        return peak, seconds, f"{seconds / self.edit_s:.2f}x the all-on-device edit's seconds"

    def _no_t5(self):
        if self.model.arch == "flux":
            raise Skip("n/a: FLUX.1's text stream is T5's (load_pipeline refuses without_t5)")
        t5 = self.pipe.text_encoder_3
        self.pipe.text_encoder_3 = None  # as load_pipeline(without_t5=True): T5's positions read zeros
        t5.to("cpu")
        free(self.device)
        try:
            return self._plain()
        finally:
            self.pipe.text_encoder_3 = t5.to(self.device)

    def _vae_tiling(self):
        self.pipe.vae.enable_tiling()
        try:
            return self._plain()
        finally:
            self.pipe.vae.disable_tiling()

    def _offload(self, mode: str):
        """The pipeline stays offloaded afterwards: these are the model's last rows."""
        if mode == "sequential" and self.device.type != "cuda":
            raise Skip("not measured: needs CUDA (accelerate's per-layer hooks fail when the accelerator is the CPU)")
        if mode == "model":
            self.pipe.enable_model_cpu_offload(device=self.device)
        else:
            self.pipe.enable_sequential_cpu_offload(device=self.device)
        return self._plain()

    def _train(self, batch: int):
        """The step at ``--pair-chunk``; where that runs out of memory, at pair chunks 4, then 1."""
        args, failed = self.args, []
        for chunk in [args.pair_chunk, *(c for c in (4, 1) if args.pair_chunk == 0 or c < args.pair_chunk)]:
            free(self.device)  # after the except clause: the failed step's tensors are gone
            try:
                seconds, peak = measure_training(self.pipe, self.model.kind, batch, args.train_resolution, chunk,
                                                 self.meter, warm_up=not self.trained)
            except torch.OutOfMemoryError:
                failed.append(str(chunk))
                continue
            self.trained = True
            tried = f" (out of memory at {', '.join(failed)})" if failed else ""
            return peak, seconds, f"--pair-chunk {chunk}{tried}; tokens m 4 on {token_layers(self.pipe)} blocks"
        raise Skip(f"not measured: out of memory at pair chunks {', '.join(failed)}")

    def _compiled(self, mode: str):
        if mode == "none":
            raise Skip("not measured: --compile none")
        if "compile" not in inspect.signature(FlowEditor).parameters:
            raise Skip("not measured: this checkout's FlowEditor has no compile= (issue #26, item 1)")
        import torch._dynamo

        from softrepa.compile import uncompile

        editor = self._editor(compile=mode)
        try:
            first, _ = self._first_edit(editor)  # the compile happens here
            seconds, peak = self._first_edit(editor)
            info = editor.compile_info
            call = self._call_seconds(editor) if info.mode else None  # through the blocks compiled in place
        finally:
            editor.close()
            uncompile(self.pipe.transformer)
            torch._dynamo.reset()
        if call is None:
            return peak, seconds, f"ran eager: {info.note}"
        return peak, seconds, (f"{seconds / self.edit_s:.3f}x eager; first edit {first:.1f} s with the compile; "
                               f"{self._floor_notes(seconds, call)}; floor {call / self.call_s:.3f}x eager's")

    def _candidates(self):
        params = self.params.replace(n_max=min(self.args.compare_n_max, self.params.n_max))
        editor = self._editor()

        def edit(seed: int):
            return editor.edit(self.image, SOURCE, TARGET, params.replace(seed=seed), use_tokens=False)

        try:
            edit(0)  # a warm editor: the image's latents and the prompts cached
            singles, _ = self.meter.run(lambda: [edit(seed) for seed in (1, 2, 3, 4)])
            seconds, peak = self.meter.run(lambda: editor.edit_candidates(self.image, SOURCE, TARGET, params,
                                                                          seeds=[5, 6, 7, 8], use_tokens=False))
        finally:
            editor.close()
        return peak, seconds, (f"4 single edits {singles:.2f} s: candidates / singles {seconds / singles:.3f} "
                               f"(n_max {params.n_max}, batch {4 * self.step_batch} per step)")


# the run --------------------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return f"{names[0] if names else device.type.upper()} ({os.cpu_count()} cores)"


def header(args: argparse.Namespace, device: torch.device, dtype: str, command: str) -> list[str]:
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    presets = ", ".join(f"{MODELS[m].label} {default_preset_name(MODELS[m].kind, False)}" for m in args.models)
    return ["# What GPU do I need? (benchmarks/gpu_suite.py)", "",
            f"device: **{device_name(device)}**; torch {torch.__version__}{cuda}, diffusers {version('diffusers')}, "
            f"transformers {version('transformers')}; {dtype}; random weights at the {args.scale} sizes", "",
            f"command: `{command}`", "",
            f"edits at {args.resolution} px with each kind's FlowEdit preset ({presets}), tokens off unless the row "
            f"says so; training at {args.train_resolution} px; budget {args.budget_s:.0f} s"]


def command_line(argv: list[str] | None) -> str:
    given = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "benchmarks/gpu_suite.py", *map(shlex.quote, given)])


def result_line(table: Table, args: argparse.Namespace, device: torch.device, dtype: str, elapsed: float) -> str:
    measured = sum(row.measured for row in table.rows.values())
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device_name(device)).strip("-")
    parts = [f"rows={len(table.rows)}", f"measured={measured}", f"device={slug}", f"scale={args.scale}",
             f"dtype={dtype}", f"elapsed_s={elapsed:.0f}"]
    for name in args.models:
        row = table.rows[name, "eager"]
        parts += [f"{name}_edit_s={row.seconds:.2f}" if row.measured else f"{name}_edit_s=not-measured",
                  f"{name}_peak_gb={row.peak_gb:.2f}" if row.measured else f"{name}_peak_gb=not-measured"]
    return "RESULT " + " ".join(parts + [f"out={table.path}"])


def main(argv: list[str] | None = None) -> dict:
    start = time.monotonic()
    args = parse_args(argv)
    apply_threads(args.threads)
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    dtype_name = str(dtype).replace("torch.", "")
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", device_name(device)).strip("-").lower()
    table = Table(Path(args.out or f"runs/gpu_suite/{slug}.md"), header(args, device, dtype_name, command_line(argv)))
    cases = cases_for(args)
    for name in args.models:
        table.plan(name, cases, args, dtype_name)
    table.write()
    for i, name in enumerate(args.models):
        left = args.budget_s - (time.monotonic() - start)
        share = left * WEIGHTS[name] / sum(WEIGHTS[m] for m in args.models[i:])
        ModelRun(name, args, device, dtype, table, time.monotonic() + share).run(cases)
    elapsed = time.monotonic() - start
    table.notes.append(f"finished in {elapsed:.0f} s of a {args.budget_s:.0f} s budget")
    table.write()
    print(table.markdown())
    print(result_line(table, args, device, dtype_name, elapsed))
    return {"rows": table.rows, "out": table.path, "elapsed_s": elapsed}


if __name__ == "__main__":
    main()
