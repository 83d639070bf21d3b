"""The evaluation loop shared by the text-to-image and editing evaluations.

A task (``evaluation.t2i.T2ITask``, ``evaluation.edit.EditTask``) says which images
to make and how each is scored; ``run_task`` does the rest, on one process or many::

    accelerate launch -m evaluation t2i ...     # or: python -m evaluation t2i ...

1. Every process checks the run folder's settings against this run's (results made with other
   generation settings are never mixed); the main process writes ``settings.json`` and
   ``items.jsonl``.
2. Images: the items whose image file is missing are split between processes
   (``PartialState.split_between_processes``); each process loads the model only if its share has
   work. Image files are written atomically, so an existing file is a finished image.
3. Per-image metrics: all items are split between processes; each process scores the items of its
   share that lack a value (for that metric and metric model), one metric model loaded at a time,
   and appends the values to its own shard ``scores/rank<K>.jsonl``. Items that carry a mask of
   the edited region (``region_mask``) are also scored with the region metrics
   (``evaluation.region_metrics``).
4. The main process merges every shard, computes FID per group (features cached in ``fid/``),
   writes ``per_item.jsonl``, ``summary.json``, the table (md/csv/json) and, for editing, the plot.

Rerunning the same command resumes at whichever step was interrupted.
"""

from __future__ import annotations

import gc
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from evaluation.fid import InceptionFeatureCache
from evaluation.metrics import METRIC_ORDER, METRICS, MissingDependency, build_metric, get_spec, resolved_model_ids
from evaluation.region_metrics import (REGION_METRICS, REGION_ORDER, build_region_metric, get_region_spec,
                                       region_model_ids)
from evaluation.results import (ScoreStore, SettingsMismatch, check_or_write_settings, mean, missing_keys,
                                package_versions, read_jsonl, write_json_atomically, write_jsonl_atomically)
from evaluation.tables import plot_clip_vs_lpips, plot_series_from_rows, rows_from_summary, write_table
from softrepa.runtime import process_state
from softrepa.runtime import process_device as resolve_device
from softrepa.runtime import model_dtype
from softrepa.tokens import file_sha256

logger = logging.getLogger("evaluation")

SCORE_CHUNK = 64  # items scored between two appends to the shard (what a crash can lose)


@dataclass
class MetricSettings:
    """Which metrics run, with which models.

    names: registry names (``evaluation.metrics.METRICS``), in any order.
    region: region metrics (``evaluation.region_metrics.REGION_METRICS``), computed for items with a
    mask of the edited region.
    models / processors: metric name (either registry) -> Hub id or local folder replacing the
    default (the CLIP region metrics fall back to the "clip" entry).
    batch_size: images per metric forward pass.
    strict: a metric whose optional package is missing is an error (default: skipped with a note).
    """

    names: tuple[str, ...] = METRIC_ORDER
    region: tuple[str, ...] = REGION_ORDER
    models: dict[str, str] = field(default_factory=dict)
    processors: dict[str, str] = field(default_factory=dict)
    batch_size: int = 16
    strict: bool = False

    def __post_init__(self) -> None:
        self.names = tuple(dict.fromkeys(self.names))
        self.region = tuple(dict.fromkeys(self.region))
        for name in self.names:
            get_spec(name)  # unknown names fail here, before any work
        for name in self.region:
            get_region_spec(name)
        for name in (*self.models, *self.processors):
            if name not in METRICS and name not in REGION_METRICS:
                raise ValueError(f"unknown metric {name!r} in the model overrides; choose from "
                                 f"{', '.join([*METRICS, *REGION_METRICS])}")

    def ids(self, name: str) -> dict[str, str]:
        if name in REGION_METRICS and name not in METRICS:
            return region_model_ids(name, self.models, self.processors)
        return resolved_model_ids(name, self.models.get(name), self.processors.get(name))

    def record(self) -> dict[str, dict[str, str]]:
        return {name: self.ids(name) for name in (*self.names, *self.region)}


class Task(ABC):
    """One evaluation: its items (images to make and score), groups (table rows) and producer."""

    name: str  # "t2i" or "edit"
    run_dir: Path
    metrics: MetricSettings
    progress: bool = True

    def __init__(self, config) -> None:
        """What every task takes from its config (``T2IConfig``, ``EditConfig``): the run folder
        (``out``), the metric settings, the progress flag, and the token file's sha256 (``tokens``)."""
        self.config = config
        self.run_dir = Path(config.out)
        self.metrics = config.metrics
        self.progress = config.progress
        self.tokens_sha256 = file_sha256(config.tokens) if config.tokens else None

    @abstractmethod
    def items(self) -> list[dict]:
        """Rows with at least: key, group, prompt (what prompt metrics score against), image (path
        relative to the run folder), reference (absolute path or None: the pair metrics' reference)."""

    @abstractmethod
    def groups(self) -> list[dict]:
        """One dict per table row: name, method, reference_set (the name FID reference features are
        cached under), and the row's settings."""

    @abstractmethod
    def generation_settings(self) -> dict:
        """Everything the images depend on (checked on resume)."""

    @property
    @abstractmethod
    def model_kind(self) -> str:
        """The model kind the images are made with: its dtype is ``--dtype auto``'s (``model_dtype``)."""

    @abstractmethod
    def produce(self, items: list[dict], device: torch.device, dtype: torch.dtype) -> None:
        """Make the (missing) images of ``items``."""

    @abstractmethod
    def fid_reference(self, items: list[dict], group: str) -> list[str] | None:
        """The reference image set FID compares a group with (None: no FID for it)."""

    def summary_extra(self) -> dict:
        return {}

    def pair_size(self) -> tuple[int, int] | None:
        """The size pair metrics compare at (None: the reference is resized to the image)."""
        return None

    def notes(self) -> list[str]:
        return []

    def after_summary(self, summary: dict, rows: list[dict]) -> None:
        """Extra outputs (the editing plot); may add to ``summary["notes"]``."""

    def is_made(self, item: dict) -> bool:
        """Whether the files an item needs exist (image files are written atomically)."""
        return (self.run_dir / item["image"]).is_file()

    def work_units(self, items: list[dict]) -> list[list[dict]]:
        """How missing images are split between processes: items that share work (e.g. one source
        image's edits) belong in one unit. Default: one item per unit."""
        return [[item] for item in items]


# ----------------------------------------------------------------------------- process state


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- steps


PATH_FIELDS = ("reference", "original")  # absolute paths: moving the data or the run folder changes no image


def _content(item: dict) -> dict:
    return {k: v for k, v in item.items() if k not in PATH_FIELDS}


def _check_items(run_dir: Path, items: list[dict]) -> None:
    """An item key must keep its content across runs (same prompt, seed, source): its image and
    scores were made for that content."""
    previous = {row["key"]: row for row in read_jsonl(run_dir / "items.jsonl")}
    changed = [item["key"] for item in items
               if item["key"] in previous and _content(previous[item["key"]]) != _content(item)]
    if changed:
        raise SettingsMismatch(f"{len(changed)} items of {run_dir} changed since its images were made (e.g. "
                               f"{changed[0]}: prompt, seed or source differ); use another --out folder")


def _merged_items(run_dir: Path, items: list[dict]) -> list[dict]:
    """This run's items plus earlier runs' items that this run does not list (a smaller --n)."""
    current = {item["key"] for item in items}
    return items + [row for row in read_jsonl(run_dir / "items.jsonl") if row["key"] not in current]


def make_images(task: Task, items: list[dict], state, device: torch.device, dtype: torch.dtype) -> None:
    missing = [item for item in items if not task.is_made(item)]
    state.wait_for_everyone()  # every process lists the missing images before any process writes one
    with state.split_between_processes(task.work_units(missing)) as units:
        mine = [item for unit in units for item in unit]
    if mine:
        logger.info("process %d: making %d of %d images", state.process_index, len(mine), len(items))
        task.produce(mine, device, dtype)
    free_memory()
    state.wait_for_everyone()


def scored_metrics(task: Task, items: list[dict]) -> list[tuple[str, Any]]:
    """(name, spec) of every per-image metric of a run: the paper's prompt and pair metrics, then the
    region metrics when any item carries a mask of the edited region."""
    specs = [(name, get_spec(name)) for name in task.metrics.names if get_spec(name).kind != "set"]
    if any(item.get("region_mask") for item in items):
        specs += [(name, get_region_spec(name)) for name in task.metrics.region]
    return specs


def _score_chunk(metric, spec_kind: str, items: list[dict], run_dir: Path, pair_size) -> list[float]:
    images = [str(run_dir / item["image"]) for item in items]
    if spec_kind == "prompt":
        return metric.score(images, [item["prompt"] for item in items])
    if spec_kind == "pair":
        return metric.distance(images, [item["reference"] for item in items], size=pair_size)
    if spec_kind == "region":
        return metric.region_scores(images, [item["reference"] for item in items],
                                    [str(run_dir / item["region_mask"]) for item in items],
                                    [item["prompt"] for item in items])
    raise ValueError(f"metric kind {spec_kind!r} is not scored per image")


def _candidates(kind: str, items: list[dict]) -> list[dict]:
    if kind == "pair":
        return [item for item in items if item.get("reference")]
    if kind == "region":
        return [item for item in items if item.get("reference") and item.get("region_mask")]
    return list(items)


def score_items(task: Task, items: list[dict], state, device: torch.device, notes: list[str]) -> None:
    """Per-image metrics (prompt, pair and region kinds) over this process's share of ``items``."""
    store = ScoreStore(task.run_dir, state.process_index)
    specs = scored_metrics(task, items)  # from all items: every process scores the same metrics
    with state.split_between_processes(items) as mine:
        mine = list(mine)
    for name, spec in specs:
        ids = task.metrics.ids(name)
        candidates = _candidates(spec.kind, mine)
        if spec.kind == "pair" and len(candidates) < len(mine):
            notes.append(f"{spec.label}: {len(mine) - len(candidates)} items have no reference image, not scored")
        todo_keys = set(missing_keys(store.load(), [item["key"] for item in candidates], name, ids["model"]))
        todo = [item for item in candidates if item["key"] in todo_keys]
        if not todo:
            continue
        build = build_region_metric if spec.kind == "region" else build_metric
        metric = build(name, ids["model"], ids["processor"], device=device, batch_size=task.metrics.batch_size,
                       progress=task.progress)
        try:
            for start in range(0, len(todo), SCORE_CHUNK):
                chunk = todo[start:start + SCORE_CHUNK]
                values = _score_chunk(metric, spec.kind, chunk, task.run_dir, task.pair_size())
                store.append(name, ids["model"], [item["key"] for item in chunk], values)
        except MissingDependency as exc:  # a missing package, or (WeightsUnavailable) missing weights
            if task.metrics.strict:
                raise
            notes.append(f"{spec.label} not computed: {exc}")
            logger.warning("%s", exc)
        finally:
            del metric
            free_memory()


def compute_fid(task: Task, items: list[dict], device: torch.device, notes: list[str]) -> dict[str, float]:
    """FID of each group against its reference set (main process only; features cached)."""
    if "fid" not in task.metrics.names:
        return {}
    ids = task.metrics.ids("fid")
    metric = build_metric("fid", ids["model"] or None, device=device, batch_size=task.metrics.batch_size,
                          progress=task.progress)
    results: dict[str, float] = {}
    try:
        for group in task.groups():
            members = [item for item in items if item["group"] == group["name"]]
            reference = task.fid_reference(members, group["name"])
            if len(members) < 2 or not reference or len(reference) < 2:
                notes.append(f"FID of {group['name']}: needs at least 2 images and 2 reference images, not computed")
                continue
            fid_dir = task.run_dir / "fid"
            generated = InceptionFeatureCache(fid_dir / f"{group['name']}.npz").features(
                [str(task.run_dir / item["image"]) for item in members], metric.extractor, desc=f"FID {group['name']}")
            real = InceptionFeatureCache(fid_dir / f"reference-{group['reference_set']}.npz").features(
                reference, metric.extractor, desc="FID reference")
            results[group["name"]] = metric.distance_from_features(generated, real)
            if len(members) < 2048:  # rank-deficient covariance: FID is biased upward at small n
                notes.append(f"FID on {len(members)} images (< 2048) is biased upward; compare only at equal n "
                             "(the paper: 5,000 for COCO, 800 for DIV2K)")
    except MissingDependency as exc:
        if task.metrics.strict:
            raise
        notes.append(f"FID not computed: {exc}")
    return results


def summarize(task: Task, items: list[dict], fid: dict[str, float], notes: list[str]) -> dict:
    scores = ScoreStore(task.run_dir).load()
    names = [name for name, _ in scored_metrics(task, items)]
    models = {name: task.metrics.ids(name)["model"] for name in names}
    per_item = []
    for item in items:
        values = {}
        for name in names:
            entry = scores.get(item["key"], {}).get(name)
            if entry is not None and entry["model"] == models[name]:
                values[name] = entry["value"]
        per_item.append({**item, "scores": values})
    write_jsonl_atomically(task.run_dir / "per_item.jsonl", per_item)
    groups = []
    for group in task.groups():
        members = [row for row in per_item if row["group"] == group["name"]]
        metrics = {name: mean([row["scores"][name] for row in members if name in row["scores"]],
                              keep_infinite=name in REGION_METRICS) for name in names}
        if group["name"] in fid:
            metrics["fid"] = fid[group["name"]]
        groups.append({**group, "n": len(members), "metrics": metrics})
    identical = sum(math.isinf(row["scores"].get("psnr_unedited", 0.0)) for row in per_item)
    if identical:
        notes.append(f"PSNR: {identical} of {len(per_item)} edits keep the unedited region bit-identical to the "
                     "source (infinite PSNR; their group's mean PSNR is infinite too)")
    settings = {"task": task.name, "generation": task.generation_settings(), "metrics": task.metrics.record(),
                "versions": package_versions()}
    return {"task": task.name, **task.summary_extra(), "groups": groups, "notes": list(dict.fromkeys(notes)),
            "settings": settings}


def run_task(task: Task, device_spec: str = "auto", dtype_spec: str = "auto", state=None) -> dict | None:
    """Run (or resume) ``task``; returns the summary on the main process, None on the others."""
    state = state or process_state(device_spec)
    device = resolve_device(device_spec, state)
    dtype = model_dtype(dtype_spec, device, task.model_kind)  # auto: the kind's (bfloat16 for SD3.5, FLUX.1)
    task.run_dir.mkdir(parents=True, exist_ok=True)
    items = task.items()
    settings = {"task": task.name, "generation": task.generation_settings()}
    # every process checks (so a mismatch stops all of them, none is left waiting); the main writes
    check_or_write_settings(task.run_dir, settings, write=state.is_main_process)
    _check_items(task.run_dir, items)
    if state.is_main_process:
        write_jsonl_atomically(task.run_dir / "items.jsonl", _merged_items(task.run_dir, items))
    state.wait_for_everyone()

    make_images(task, items, state, device, dtype)
    notes = task.notes()
    score_items(task, items, state, device, notes)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    fid = compute_fid(task, items, device, notes)
    summary = summarize(task, items, fid, notes)
    rows = rows_from_summary(summary)
    task.after_summary(summary, rows)
    write_json_atomically(task.run_dir / "summary.json", summary)
    write_table(rows, task.name, task.run_dir / "table", dataset=summary.get("dataset"), notes=summary["notes"],
                settings=summary["settings"])
    return summary


def write_edit_plot(rows: Sequence[dict], path: Path, dataset: str | None) -> Path | None:
    """Fig. 5 for editing rows; None (and nothing written) when no row has both CLIP and LPIPS."""
    series = plot_series_from_rows(rows)
    if not series:
        return None
    title = f"CLIP vs LPIPS{f', {dataset}' if dataset else ''} (dots: target CFG)"
    return plot_clip_vs_lpips(series, path, title=title)
