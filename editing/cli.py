"""Command line: FlowEdit one image or a batch, with or without SoftREPA soft tokens.

    python -m editing --image cat.png --source "a cat on a sofa" --target "a dog on a sofa" --out edits/
    python -m editing --image cat.png --source ... --target ... --tokens sd3.safetensors --preset sd3-tokens
    python -m editing --batch edits.yaml --out edits/          # FlowEdit's edits.yaml format
    python -m editing --batch pairs.jsonl --out edits/         # data-prep rows: image, source_prompt, target_prompt
    python -m editing --image cat.png --source ... --target ... --mask cat-mask.png   # only the white region changes
    python -m editing --image cat.png --source ... --target ... --auto-mask           # the region found by the edit
    python -m editing --kind flux-dev --image cat.png --source ... --target ...       # FLUX.1-dev, the flux preset

Outputs are PNGs carrying every parameter (and the token file's sha256) as JSON text metadata
(``editing.editor.read_png_metadata``). Existing outputs are skipped, so an interrupted batch resumes
where it stopped; use one ``--out`` per setting (the file name holds the image, target and tokens
state, not every parameter; a masked edit adds ``__mask`` or ``__automask`` and writes its mask beside
it as ``<name>.mask.png``). Batch rows may carry a ``mask`` (a mask image path, or "auto"). A malformed batch row is reported with its line and the rest continue;
the exit status is 1 when any row failed.

Device and dtype are decided here only: the library code follows the pipeline it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from editing.editor import FlowEditor
from editing.flowedit import FAMILIES
from editing.params import GUIDANCE_MODES, TOKEN_BRANCHES, FlowEditParams, ParameterError
from editing.inputs import DEFAULT_MAX_SIDE
from editing.masks import AutoMask, MaskOptions
from editing.presets import PRESETS, default_preset_name, get_preset
from editing.token_file import TokenFile
from softrepa.atomic import atomic_write_text
from softrepa.images import ImageInputError
from softrepa.models import KINDS, get_kind, load_pipeline, resolve_model
from softrepa.runtime import (DTYPES, MODEL_DTYPE_HELP, add_memory_args, memory_from_args, model_dtype, process_device,
                              process_state)

DEFAULT_MODEL = KINDS["sd3"].hub_id
# command-line flag -> FlowEditParams field; None means "take the preset's value"
PARAM_FLAGS = {"steps": "steps", "n_max": "n_max", "n_min": "n_min", "n_avg": "n_avg", "src_cfg": "src_cfg",
               "tar_cfg": "tar_cfg", "seed": "seed", "src_negative": "src_negative_prompt",
               "tar_negative": "tar_negative_prompt", "guidance": "guidance", "token_branches": "token_branches"}


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
    params.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="inputs are downscaled to this long side")
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
    return args


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
    flags = [flag for flag, name in PARAM_FLAGS.items() if name == field]
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


# ----------------------------------------------------------------------------- batch files


@dataclass
class Job:
    image: Path
    source_prompt: str
    target_prompt: str
    name: str  # output file stem, already sanitized
    origin: str  # "file:line" for messages
    mask: Path | str | None = None  # a mask image, AUTO_MASK, or None (the whole image)

    def with_mask(self, mask: Path | str | None) -> "Job":
        """This job restricted to ``mask``; the output name says so (``__mask`` / ``__automask``)."""
        if mask is None:
            return self
        suffix = "__automask" if mask == AUTO_MASK else "__mask"
        return Job(self.image, self.source_prompt, self.target_prompt, self.name + suffix, self.origin, mask)


AUTO_MASK = "auto"  # the batch files' and the jobs' word for editing.masks.AutoMask()


def safe_name(text: str, max_length: int = 80) -> str:
    """A file-name stem with no path separators, no leading dots and only portable characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:max_length].rstrip("._-")
    return name or "edit"


def output_path(out_dir: Path, name: str) -> Path:
    """``out_dir / <safe name>.png``; refuses anything that would land outside ``out_dir``."""
    path = out_dir / f"{safe_name(name, 160)}.png"
    if path.resolve().parent != out_dir.resolve():
        raise ValueError(f"output name {name!r} escapes the output folder {out_dir}")
    return path


def job_name(image: Path, target_prompt: str, code: str | None = None) -> str:
    # without a code: a short slug plus a hash of the prompt, stable when the batch file is edited
    if code:
        label = safe_name(str(code), 60)
    else:
        label = f"{safe_name(target_prompt, 40)}-{hashlib.sha256(target_prompt.encode()).hexdigest()[:8]}"
    return f"{safe_name(image.stem, 60)}__{label}"


def _resolve_image(value: Any, batch_dir: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"image path must be a non-empty string, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute() and (batch_dir / path).exists():  # FlowEdit's paths are relative to its repo
        return batch_dir / path
    return path


def _row_mask(entry: dict, batch_dir: Path) -> Path | str | None:
    """A row's optional ``mask``: "auto", or a mask image path (relative to the batch file like images)."""
    value = entry.get("mask")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO_MASK:
        return AUTO_MASK
    try:
        return _resolve_image(value, batch_dir)
    except ValueError:
        raise ValueError(f"'mask' must be a mask image path or \"auto\", got {value!r}") from None


def _text(entry: dict, key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string, got {value!r}")
    return value


def _yaml_jobs(entry: Any, batch_dir: Path, origin: str) -> list[Job]:
    if not isinstance(entry, dict):
        raise ValueError(f"expected a mapping with input_img, source_prompt, target_prompts; got {type(entry).__name__}")
    image_key = "input_img" if "input_img" in entry else "init_img"
    image = _resolve_image(entry.get(image_key), batch_dir)
    mask = _row_mask(entry, batch_dir)
    source = _text(entry, "source_prompt")
    targets = entry.get("target_prompts")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"'target_prompts' must be a non-empty list of prompts, got {targets!r}")
    codes = entry.get("target_codes")
    if codes is not None and (not isinstance(codes, list) or len(codes) != len(targets)):
        raise ValueError(f"'target_codes' must be a list as long as target_prompts ({len(targets)}), got {codes!r}")
    jobs = []
    for j, target in enumerate(targets):
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"target_prompts[{j}] must be a non-empty string, got {target!r}")
        code = str(codes[j]) if codes is not None else None
        jobs.append(Job(image, source, target, job_name(image, target, code), origin).with_mask(mask))
    return jobs


def read_yaml_batch(path: Path) -> tuple[list[Job], list[str]]:
    """Jobs and error messages ("file:line: ...") from a FlowEdit edits.yaml."""
    import yaml

    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
        try:
            root = loader.get_single_node()  # nodes keep their line numbers; entries are built one by one
            if root is None:
                return [], [f"{path}: the file is empty"]
            if not isinstance(root, yaml.SequenceNode):
                return [], [f"{path}:{root.start_mark.line + 1}: expected a list of edits"]
            jobs, errors = [], []
            for node in root.value:
                origin = f"{path}:{node.start_mark.line + 1}"
                try:
                    jobs.extend(_yaml_jobs(loader.construct_document(node), path.parent, origin))
                except (ValueError, yaml.YAMLError) as exc:
                    errors.append(f"{origin}: {exc}")
            return jobs, errors
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        return [], [f"{path}:{line}: not valid YAML ({exc.problem})"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return [], [f"{path}: cannot read ({exc})"]


def read_jsonl_batch(path: Path) -> tuple[list[Job], list[str]]:
    """Jobs and error messages from data-prep rows {"image", "source_prompt", "target_prompt"[, "id"]}."""
    jobs, errors = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read ({exc})"]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        origin = f"{path}:{number}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            image = _resolve_image(row.get("image"), path.parent)
            target = _text(row, "target_prompt")
            code = str(row["id"]) if row.get("id") is not None else None
            job = Job(image, _text(row, "source_prompt"), target, job_name(image, target, code), origin)
            jobs.append(job.with_mask(_row_mask(row, path.parent)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            errors.append(f"{origin}: {exc}")
    return jobs, errors


def read_batch(path: str | Path) -> tuple[list[Job], list[str]]:
    path = Path(path)
    if not path.is_file():
        return [], [f"batch file {path} does not exist"]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl_batch(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        return read_yaml_batch(path)
    return [], [f"{path}: unknown batch format (use .yaml/.yml or .jsonl)"]


# ----------------------------------------------------------------------------- running


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    fatal: int = 0  # processes that could not start (model, tokens or parameters)


def run_jobs(editor: FlowEditor, jobs: list[Job], params: FlowEditParams, use_tokens: bool, outputs: list[Path],
             overwrite: bool = False, log=print, mask_options: MaskOptions | None = None) -> Summary:
    """Edit each job into its output path; errors are logged with the job's origin and skipped."""
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
            result = editor.edit(job.image, job.source_prompt, job.target_prompt, params, use_tokens=use_tokens,
                                 mask=mask, mask_options=mask_options, progress=progress)
            result.save(out, extra={"input_image": str(job.image),
                                    "input_mask": None if job.mask in (None, AUTO_MASK) else str(job.mask)})
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


def plan_outputs(jobs: list[Job], out: Path, use_tokens: bool, single_file: bool) -> tuple[list[Job], list[Path], list[str]]:
    """Output path per job (``__tokens`` marks tokens-on edits); duplicates within a batch are errors."""
    if single_file:
        return jobs, [out], []
    kept, paths, errors, seen = [], [], [], {}
    for job in jobs:
        try:
            path = output_path(out, job.name + ("__tokens" if use_tokens else ""))
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
    jobs, outputs, plan_errors = plan_outputs(jobs, out, use_tokens, single_file)
    errors += plan_errors
    found = [job.image.is_file() and (not isinstance(job.mask, Path) or job.mask.is_file()) for job in jobs]
    errors += [f"{job.origin}: image file {job.image} does not exist" if not job.image.is_file() else
               f"{job.origin}: mask file {job.mask} does not exist" for job, ok in zip(jobs, found) if not ok]
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
                ) -> tuple[FlowEditor, FlowEditParams, MaskOptions]:
    """The editor, the parameters and the mask options; ``ValueError`` / ``ParameterError`` / ``OSError``."""
    # read and hashed once: the kind comes from it, the editor attaches it, the PNGs record its sha256
    token_file = TokenFile.load(args.tokens) if use_tokens else None
    model, kind = model_and_kind(args.model, args.kind, token_file.kind if token_file is not None else None)
    params = params_from_args(args, kind, use_tokens)
    mask_options = mask_options_from_args(args)
    dtype = model_dtype(args.dtype, device, kind)
    memory = memory_from_args(args, device)
    log(f"loading {model} on {device} ({str(dtype).replace('torch.', '')})")
    pipe = load_pipeline(model, kind, dtype, device, without_t5=True if args.no_t5 else None, memory=memory)
    editor = FlowEditor(pipe, tokens=token_file, max_side=args.max_side,
                        model_name=model, kind=kind)  # the kind's T5 length
    return editor, params, mask_options


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
            editor, params, mask_options = load_editor(args, use_tokens, process_device(args.device, state), log)
            summary = dataclasses.replace(run_jobs(editor, [job for job, _ in mine], params, use_tokens,
                                                   [path for _, path in mine], overwrite=args.overwrite, log=log,
                                                   mask_options=mask_options), skipped=summary.skipped)
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
