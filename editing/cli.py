"""Command line: FlowEdit one image or a batch, with or without SoftREPA soft tokens.

    python -m editing --image cat.png --source "a cat on a sofa" --target "a dog on a sofa" --out edits/
    python -m editing --image cat.png --source ... --target ... --tokens sd3.safetensors --preset sd3-tokens
    python -m editing --batch edits.yaml --out edits/          # FlowEdit's edits.yaml format
    python -m editing --batch pairs.jsonl --out edits/         # data-prep rows: image, source_prompt, target_prompt
    python -m editing --image cat.png --source ... --target ... --mask cat-mask.png   # only the white region changes
    python -m editing --image cat.png --source ... --target ... --auto-mask           # the region found by the edit
    python -m editing --kind flux-dev --image cat.png --source ... --target ...       # FLUX.1-dev, the flux preset
    python -m editing --image cat.png --source ... --target ... --auto                # the strength picked per image

Outputs are PNGs carrying every parameter (and the token file's sha256) as JSON text metadata
(``editing.editor.read_png_metadata``). Existing outputs are skipped, so an interrupted batch resumes
where it stopped; use one ``--out`` per setting (the file name holds the image, target and tokens
state, not every parameter; a masked edit adds ``__mask`` or ``__automask`` and writes its mask beside
it as ``<name>.mask.png``; ``--auto`` adds ``__auto`` and records the sweep, every candidate's scores
and the pick, ``editing.auto``). Batch rows may carry a ``mask`` (a mask image path, or "auto"). A malformed batch row is reported with its line and the rest continue;
the exit status is 1 when any row failed. What a row is checked for: ``editing.batch``.

Device and dtype are decided here only: the library code follows the pipeline it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# the batch files' reader; safe_name stays an editing.cli name too (the app's result files use it)
from editing.auto import DEFAULT_MARGIN, AutoResult, Sweep, edit_auto, sweep_runs
from editing.batch import AUTO_MASK, Job, job_name, missing_input, output_path, read_batch, safe_name  # noqa: F401
from editing.editor import FlowEditor
from editing.flowedit import FAMILIES
from editing.params import GUIDANCE_MODES, TOKEN_BRANCHES, FlowEditParams, ParameterError
from editing.inputs import DEFAULT_MAX_SIDE
from editing.masks import AutoMask, MaskOptions
from editing.presets import PRESETS, default_preset_name, get_preset
from editing.token_file import TokenFile
from softrepa.atomic import atomic_write_text
from softrepa.compile import COMPILE_MODES
from softrepa.images import ImageInputError
from softrepa.models import KINDS, get_kind, load_pipeline, resolve_model
from softrepa.runtime import (DTYPES, MODEL_DTYPE_HELP, add_memory_args, add_threads_arg, apply_threads,
                              memory_from_args, model_dtype, process_device, process_state)

DEFAULT_MODEL = KINDS["sd3"].hub_id
# command-line flag -> FlowEditParams field; None means "take the preset's value"
PARAM_FLAGS = {"steps": "steps", "n_max": "n_max", "n_min": "n_min", "n_avg": "n_avg", "src_cfg": "src_cfg",
               "tar_cfg": "tar_cfg", "seed": "seed", "src_negative": "src_negative_prompt",
               "tar_negative": "tar_negative_prompt", "guidance": "guidance", "token_branches": "token_branches",
               "noise_offset": "noise_offset"}
# command-line flag -> editing.auto.Sweep field
SWEEP_FLAGS = {"auto_strengths": "strengths", "auto_tar_cfgs": "tar_cfgs", "auto_seeds": "seeds",
               "auto_tokens": "tokens", "auto_margin": "margin"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m editing", description="FlowEdit on SD3, SD3.5 and FLUX.1, with "
                                     "SoftREPA soft tokens",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    what = parser.add_argument_group("what to edit (one image, or --batch)")
    what.add_argument("--image", help="input image (any format PIL reads)")
    what.add_argument("--source", help="prompt describing the input image")
    what.add_argument("--target", help="prompt describing the wanted result")
    what.add_argument("--batch", help="FlowEdit edits.yaml (input_img/init_img, source_prompt, target_prompts, "
                                      "target_codes) or a .jsonl of {image, source_prompt, target_prompt}; both "
                                      "take an optional 'mask' (image path or \"auto\")")
    local = parser.add_argument_group("local edits (default: the whole image may change)")
    region = local.add_mutually_exclusive_group()
    region.add_argument("--mask", help="mask image drawn on --image: white (or opaque) = may change")
    region.add_argument("--auto-mask", action="store_true", help="find the region from the edit itself (for "
                                                                 "--batch: rows without a 'mask')")
    local.add_argument("--mask-feather", type=float, default=0.0, help="blur the mask's edge by this many pixels "
                                                                       "(sigma) before editing")
    local.add_argument("--paste-back", choices=("auto", "on", "off"), default="auto",
                       help="copy the source pixels back outside the mask after decoding (auto: for hard masks)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="Hub id or local diffusers folder of an SD3, SD3.5 or FLUX.1 "
                       f"pipeline (default: the kind's model, {DEFAULT_MODEL} for sd3)")
    tokens = model.add_mutually_exclusive_group()
    tokens.add_argument("--tokens", help="soft-token file (.safetensors, python -m softrepa.tokens)")
    tokens.add_argument("--no-tokens", action="store_true", help="edit without soft tokens (the default)")
    model.add_argument("--kind", default=None, help="model kind, for loading and the default preset: "
                       f"{', '.join(k for k, spec in KINDS.items() if spec.arch in FAMILIES)} "
                       "(default: the tokens' kind, else a local folder's by its pipeline class, FLUX dev / schnell "
                       "by its guidance embedding, else sd3)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    model.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=MODEL_DTYPE_HELP)
    add_threads_arg(model)
    model.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                       help="torch.compile the transformer's blocks (default mode when given alone; the first "
                            "edit compiles, the rest of a batch reuses it; eager with a note where no compiler is "
                            "present; docs/editing.md#speed-a-compiled-editor)")
    add_memory_args(parser)
    params = parser.add_argument_group("FlowEdit parameters (default: the preset's)")
    params.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="named settings (default: the kind's, e.g. sd3 / sd3-tokens with --tokens, flux for "
                             "flux-dev)")
    params.add_argument("--steps", type=int, help="T, total scheduler steps")
    params.add_argument("--n-max", type=int, help="editing steps out of T: the edit strength")
    params.add_argument("--n-min", type=int, help="last steps that sample the target plainly (adds detail)")
    params.add_argument("--n-avg", type=int, help="noise samples averaged per step")
    params.add_argument("--src-cfg", type=float, help="source guidance scale")
    params.add_argument("--tar-cfg", type=float, help="target guidance scale")
    params.add_argument("--seed", type=int, help="seed of all noise")
    params.add_argument("--src-negative", help="source negative prompt")
    params.add_argument("--tar-negative", help="target negative prompt")
    params.add_argument("--guidance", choices=GUIDANCE_MODES, help="standard: u + w (c - u); authors: target "
                                                                  "c + w (c - u) as SoftREPA's code")
    params.add_argument("--token-branches", choices=TOKEN_BRANCHES, help="tokens on both branches or the target only")
    params.add_argument("--noise-offset", type=int, help="noise draws skipped before the first step (an auto pick's "
                        "replay: its PNG records it)")
    params.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="inputs are downscaled to this long side")
    _add_auto_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="edits", help="output folder (single edit: a .png path also works)")
    out.add_argument("--overwrite", action="store_true", help="redo edits whose output exists")
    args = parser.parse_args(argv)
    single = [args.image, args.source, args.target]
    if args.batch is None and not all(v is not None for v in single):
        parser.error("give --image, --source and --target, or --batch FILE")
    if args.batch is not None and any(v is not None for v in single + [args.mask]):
        parser.error("--batch cannot be combined with --image/--source/--target/--mask (give masks in a 'mask' "
                     "column)")
    given = [f"--{flag.replace('_', '-')}" for flag in (*SWEEP_FLAGS, "scorer")
             if getattr(args, flag) not in (None, False, DEFAULT_MARGIN)]
    if given and not args.auto:
        parser.error(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} up the auto-strength sweep: add --auto")
    return args


def _add_auto_args(parser: argparse.ArgumentParser) -> None:
    auto = parser.add_argument_group("auto strength (editing.auto): a sweep of candidates in one batch, scored, one "
                                     "kept")
    auto.add_argument("--auto", action="store_true", help="edit at several strengths in one batched run and keep the "
                      "one the scorer picks: the least change within --auto-margin of the best target alignment; the "
                      "PNG records every candidate's scores and the pick")
    auto.add_argument("--auto-strengths", type=int, nargs="+", help="n_max values (default: 0.7, 0.85, 1 and 1.2 "
                      "times the preset's)")
    auto.add_argument("--auto-tar-cfgs", type=float, nargs="+", help="target guidance values (default: the edit's)")
    auto.add_argument("--auto-seeds", type=int, nargs="+", help="seeds (default: the edit's)")
    auto.add_argument("--auto-tokens", action="store_true", help="sweep tokens off and on too: the log says whether "
                      "the tokens won for each image (needs --tokens)")
    auto.add_argument("--auto-margin", type=float, default=DEFAULT_MARGIN, help="alignment points (x100 CLIP) the "
                      "pick gives up for preservation")
    auto.add_argument("--scorer", help="CLIP folder or Hub id that scores the candidates (default: the kind's: "
                      "openai/clip-vit-large-patch14; the bundled shapes scorer for shapes-sd3)")


def sweep_from_args(args: argparse.Namespace, use_tokens: bool) -> Sweep | None:
    """The ``--auto`` sweep (None without --auto); ``ValueError`` naming the flag that cannot run."""
    if not args.auto:
        return None
    if args.auto_tokens and not use_tokens:
        raise ValueError("--auto-tokens compares the soft tokens off and on: give --tokens FILE")
    return Sweep(strengths=tuple(args.auto_strengths or ()), tar_cfgs=tuple(args.auto_tar_cfgs or ()),
                 seeds=tuple(args.auto_seeds or ()), tokens=(False, True) if args.auto_tokens else (),
                 margin=args.auto_margin)


def mask_options_from_args(args: argparse.Namespace) -> MaskOptions:
    options = MaskOptions(feather_px=args.mask_feather, paste_back={"auto": None, "on": True, "off": False}[
        args.paste_back])
    try:
        options.check()
    except ValueError as exc:
        raise ValueError(f"--mask-feather: {exc}") from None
    return options


# ----------------------------------------------------------------------------- parameters and model


def flag_of(field: str) -> str:
    """The command-line flag that sets a ``FlowEditParams`` field ("n_max" -> "--n-max")."""
    flags = [flag for flag, name in PARAM_FLAGS.items() if name == field] or \
        [flag for flag, name in SWEEP_FLAGS.items() if name == field]
    if not flags:
        raise ValueError(f"no flag sets the FlowEdit parameter {field!r}; flags: {sorted(PARAM_FLAGS)}")
    return "--" + flags[0].replace("_", "-")


def params_from_args(args: argparse.Namespace, kind: str, use_tokens: bool) -> FlowEditParams:
    """The preset (named, or the default for this kind and tokens state) with explicit flags on top."""
    preset = get_preset(args.preset or default_preset_name(kind, use_tokens))
    overrides = {field: getattr(args, flag) for flag, field in PARAM_FLAGS.items() if getattr(args, flag) is not None}
    params = preset.params.replace(**overrides)
    params.check()  # before the (slow) model load; the editor checks each edit's again
    family = FAMILIES.get(get_kind(kind).arch)
    if family is not None:  # and what the kind's family refuses (FLUX.1: negative prompts)
        family.check(params, None)
    return params


# ----------------------------------------------------------------------------- running


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    fatal: int = 0  # processes that could not start (model, tokens or parameters)


def run_jobs(editor: FlowEditor, jobs: list[Job], params: FlowEditParams, use_tokens: bool, outputs: list[Path],
             overwrite: bool = False, log=print, mask_options: MaskOptions | None = None,
             auto: tuple[Sweep, Any] | None = None) -> Summary:
    """Edit each job into its output path; errors are logged with the job's origin and skipped.
    auto: (the sweep, its ``editing.scoring.EditScorer``) to keep each job's picked candidate."""
    from tqdm import tqdm

    summary = Summary()
    for job, out in zip(jobs, outputs):
        if out.exists() and not overwrite:
            summary.skipped += 1
            log(f"skip {out} (exists)")
            continue
        bar = tqdm(total=params.n_max, desc=out.name, unit="step", leave=False, file=sys.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            mask = AutoMask() if job.mask == AUTO_MASK else job.mask
            extra = {"input_image": str(job.image),
                     "input_mask": None if job.mask in (None, AUTO_MASK) else str(job.mask)}
            if auto is None:
                result = editor.edit(job.image, job.source_prompt, job.target_prompt, params, use_tokens=use_tokens,
                                     mask=mask, mask_options=mask_options, progress=progress)
            else:
                picked = edit_auto(editor, job.image, job.source_prompt, job.target_prompt, auto[1], params,
                                   sweep=auto[0], use_tokens=use_tokens, mask=mask, mask_options=mask_options,
                                   progress=progress)
                result, extra = picked.chosen, {**extra, **picked.metadata()}
                log(describe_pick(picked))
            result.save(out, extra=extra)
            summary.done += 1
            notes = result.input_report.notes + (result.mask_info["notes"] if result.mask_info else [])
            if result.mask_info:
                notes.append(f"{result.mask_info['mode']} mask: {result.mask_info['coverage']:.0%} of the image"
                             + (", source pasted back outside" if result.mask_info["pasted_back"] else ""))
            note = f" [{'; '.join(notes)}]" if notes else ""
            log(f"wrote {out} ({result.stats.seconds:.1f}s){note}")
        except (ImageInputError, ValueError, OSError, torch.OutOfMemoryError) as exc:
            summary.failed += 1
            log(f"{job.origin}: {exc}", file=sys.stderr)
        finally:
            bar.close()
    return summary


def describe_pick(picked: AutoResult) -> str:
    """The sweep in a few lines: each candidate's setting and two scores, the pick marked."""
    lines = [f"auto: {len(picked.candidates)} candidates (alignment / preservation, x100 CLIP)"]
    for row in picked.rows():
        tokens = f" tokens {'on' if row['use_tokens'] else 'off'}" if picked.tokens_won is not None else ""
        lines.append(f"  {'*' if row['picked'] else ' '} n_max {row['n_max']:>3} tar_cfg {row['tar_cfg']:g} seed "
                     f"{row['seed']}{tokens}: {row['alignment']:.2f} / {row['preservation']:.2f}")
    if picked.tokens_won is not None:
        lines.append(f"  the tokens {'won' if picked.tokens_won else 'lost'} for this image")
    return "\n".join(lines)


def plan_outputs(jobs: list[Job], out: Path, use_tokens: bool, single_file: bool, auto: bool = False
                 ) -> tuple[list[Job], list[Path], list[str]]:
    """Output path per job (``__tokens`` marks tokens-on edits, ``__auto`` a picked candidate); duplicates
    within a batch are errors."""
    if single_file:
        return jobs, [out], []
    kept, paths, errors, seen = [], [], [], {}
    for job in jobs:
        try:
            path = output_path(out, job.name + ("__tokens" if use_tokens else "") + ("__auto" if auto else ""))
        except ValueError as exc:
            errors.append(f"{job.origin}: {exc}")
            continue
        if path in seen:
            errors.append(f"{job.origin}: output {path.name} is also produced by {seen[path]}; give target_codes/ids")
            continue
        seen[path] = job.origin
        kept.append(job)
        paths.append(path)
    return kept, paths, errors


def plan_jobs(args: argparse.Namespace, use_tokens: bool, log) -> tuple[list[Job], list[Path], list[str]]:
    """The jobs (rows or the one edit), their outputs, and the errors found before any model loads
    (bad rows, clashing names, missing images and masks)."""
    if args.batch is not None:
        jobs, errors = read_batch(args.batch)
    else:
        mask = Path(args.mask) if args.mask else (AUTO_MASK if args.auto_mask else None)
        jobs, errors = [Job(Path(args.image), args.source, args.target,
                            job_name(Path(args.image), args.target), "command line").with_mask(mask)], []
    if args.batch is not None and args.auto_mask:
        jobs = [job if job.mask is not None else job.with_mask(AUTO_MASK) for job in jobs]
    out = Path(args.out)
    single_file = args.batch is None and out.suffix.lower() == ".png"
    if not single_file:
        out.mkdir(parents=True, exist_ok=True)
    jobs, outputs, plan_errors = plan_outputs(jobs, out, use_tokens, single_file, auto=args.auto)
    errors += plan_errors
    missing = [missing_input(job) for job in jobs]  # "image file X does not exist", never an exception
    errors += [f"{job.origin}: {problem}" for job, problem in zip(jobs, missing) if problem is not None]
    found = [problem is None for problem in missing]
    return ([job for job, ok in zip(jobs, found) if ok], [path for path, ok in zip(outputs, found) if ok], errors)


def model_and_kind(model: str | None, kind: str | None, token_kind: str | None) -> tuple[str, str]:
    """(what to load, its kind) from ``--model`` and ``--kind``. The kind: ``--kind``, else the token
    file's, else ``--model``'s when it is a kind name or a local folder (``resolve_model``: by its
    pipeline class, FLUX dev / schnell by its guidance embedding), else sd3. The model: ``--model``
    (a kind name stands for its Hub id or folder), else the kind's."""
    known = model is not None and (model in KINDS or (Path(model) / "model_index.json").is_file())
    kind = kind or token_kind or (resolve_model(model)[1] if known else None) or "sd3"
    if model is None:
        return get_kind(kind).hub_id, kind
    return (KINDS[model].hub_id if model in KINDS else model), kind


def load_editor(args: argparse.Namespace, use_tokens: bool, device: torch.device, log
                ) -> tuple[FlowEditor, FlowEditParams, MaskOptions, tuple[Sweep, Any] | None]:
    """The editor, the parameters, the mask options and (``--auto``) the sweep with its scorer;
    ``ValueError`` / ``ParameterError`` / ``OSError``."""
    # read and hashed once: the kind comes from it, the editor attaches it, the PNGs record its sha256
    token_file = TokenFile.load(args.tokens) if use_tokens else None
    model, kind = model_and_kind(args.model, args.kind, token_file.kind if token_file is not None else None)
    params = params_from_args(args, kind, use_tokens)
    mask_options = mask_options_from_args(args)
    sweep = sweep_from_args(args, use_tokens)
    if sweep is not None:
        sweep_runs(params, sweep, use_tokens)  # a sweep that cannot run fails before the (slow) model load
    dtype = model_dtype(args.dtype, device, kind)
    memory = memory_from_args(args, device)
    log(f"loading {model} on {device} ({str(dtype).replace('torch.', '')})")
    pipe = load_pipeline(model, kind, dtype, device, without_t5=True if args.no_t5 else None, memory=memory)
    editor = FlowEditor(pipe, tokens=token_file, max_side=args.max_side,
                        model_name=model, kind=kind, compile=args.compile)  # the kind's T5 length
    if editor.compile_info.note:
        log(f"note: {editor.compile_info.note}")
    if sweep is None:
        return editor, params, mask_options, None
    from editing.scoring import EditScorer  # transformers' CLIP: loaded only for --auto

    scorer = args.scorer or get_kind(kind).scorer
    log(f"loading the scorer {scorer}")
    return editor, params, mask_options, (sweep, EditScorer(scorer, device=device))


def _summary_path(out: Path, rank: int) -> Path:
    folder = out.parent if out.suffix.lower() == ".png" else out
    return folder / f".softrepa-edit-summary.{rank}.json"


def merged_summary(state, out: Path, mine: Summary) -> Summary:
    """Every process's ``Summary`` summed (each writes its own file; all read them after a barrier)."""
    atomic_write_text(_summary_path(out, state.process_index), json.dumps(dataclasses.asdict(mine)))
    state.wait_for_everyone()
    total = Summary()
    for rank in range(state.num_processes):
        part = json.loads(_summary_path(out, rank).read_text())
        total = Summary(**{name: getattr(total, name) + part[name] for name in part})
    state.wait_for_everyone()  # everyone has read every file before the main process removes them
    if state.is_main_process:
        for rank in range(state.num_processes):
            _summary_path(out, rank).unlink(missing_ok=True)
    return total


def main(argv: list[str] | None = None) -> int:
    """One edit, or a batch split across the processes of ``accelerate launch -m editing --batch ...``:
    each process loads the model once and edits its share into the one output folder."""
    args = parse_args(argv)
    apply_threads(args.threads)  # before torch runs anything (under accelerate launch: its OMP_NUM_THREADS)
    state = process_state(args.device)
    rank = f"[process {state.process_index}] " if state.num_processes > 1 else ""

    def log(*parts: Any, file=sys.stdout) -> None:
        print(rank + " ".join(map(str, parts)), file=file, flush=True)

    use_tokens = args.tokens is not None and not args.no_tokens
    jobs, outputs, errors = plan_jobs(args, use_tokens, log)
    if state.is_main_process:
        for message in errors:
            log(message, file=sys.stderr)
    pending = [(job, path) for job, path in zip(jobs, outputs) if args.overwrite or not path.exists()]
    if not pending:  # the same in every process: none writes before all have listed them
        if state.is_main_process:
            log(f"nothing to do: {len(jobs)} outputs already exist, {len(errors)} failed")
        return 1 if errors else 0
    state.wait_for_everyone()  # every process lists the pending rows before any process writes one
    # an image's rows stay together, in file order, in every run: each process's caches then hit the
    # same way a single process's do, so the files are the same bytes however many processes run
    by_image: dict[Path, list[tuple[Job, Path]]] = {}
    for job, path in pending:
        by_image.setdefault(job.image.resolve(), []).append((job, path))
    with state.split_between_processes(list(by_image.values())) as share:
        mine = [row for rows in share for row in rows]
    summary = Summary(skipped=len(jobs) - len(pending) if state.is_main_process else 0)
    if mine:
        try:
            editor, params, mask_options, auto = load_editor(args, use_tokens, process_device(args.device, state),
                                                             log)
            summary = dataclasses.replace(run_jobs(editor, [job for job, _ in mine], params, use_tokens,
                                                   [path for _, path in mine], overwrite=args.overwrite, log=log,
                                                   mask_options=mask_options, auto=auto), skipped=summary.skipped)
        except ParameterError as exc:  # FlowEditParams.check: the message goes with the flag that sets the field
            log(f"error: {flag_of(exc.field)}: {exc}", file=sys.stderr)
            summary.fatal = 1
        except (ValueError, OSError, RuntimeError) as exc:
            log(f"error: {exc}", file=sys.stderr)
            summary.fatal = 1
    total = merged_summary(state, Path(args.out), summary)
    if total.fatal:
        return 2
    if state.is_main_process:
        processes = f" by {state.num_processes} processes" if state.num_processes > 1 else ""
        log(f"done{processes}: {total.done} written, {total.skipped} skipped (exist), "
            f"{total.failed + len(errors)} failed")
    return 1 if total.failed or errors else 0
