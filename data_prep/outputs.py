"""The caption pipeline's output files: the pair rows and rejects (each row durable when written,
with a crash test hook), the per-process shard files of a multi-process run, and the export of
the rows to FlowEdit's ``edits.yaml``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from data_prep.images import ImageItem
from data_prep.jsonl_store import JsonlAppender, read_rows, write_text_atomically

logger = logging.getLogger("data_prep.caption")  # the pipeline's one logger: its messages keep one name

# Test hook: exit hard (no cleanup, like a crash) after this many rows are written.
CRASH_AFTER_ROWS_ENV = "SOFTREPA_CAPTION_CRASH_AFTER_ROWS"
CRASH_EXIT_CODE = 75


def row_key(row: dict) -> tuple[str, str | None]:
    """The key of the image a row (pair, reject or stage-1 caption) was made from: ``ImageItem.key``."""
    return (row["image_name"], row.get("image_sha256"))


def shard_path(path: Path, process_index: int) -> Path:
    """Where process ``process_index`` of a multi-process run writes rows meant for ``path``."""
    return path.with_name(f"{path.stem}.rank{process_index}{path.suffix}")


def shard_paths(path: Path) -> list[Path]:
    """The shard files of ``path`` that exist (left by a multi-process run, finished or not)."""
    return sorted(path.parent.glob(f"{glob_escape(path.stem)}.rank*{glob_escape(path.suffix)}"))


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


class RowWriter:
    """Appends finished rows and rejects (each durable on return) and counts them."""

    def __init__(self, rows_path: Path, rejects_path: Path):
        self.rows = JsonlAppender(rows_path)
        self.rejects = JsonlAppender(rejects_path)
        self.written = 0
        self.rejected = 0
        crash_after = os.environ.get(CRASH_AFTER_ROWS_ENV)
        self._crash_after = int(crash_after) if crash_after else None

    def _after_write(self) -> None:
        if self._crash_after is not None and self.written + self.rejected >= self._crash_after:
            logger.error("%s=%d reached: exiting hard (test hook)", CRASH_AFTER_ROWS_ENV, self._crash_after)
            os._exit(CRASH_EXIT_CODE)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        self.written += 1
        self._after_write()

    def reject(self, item: ImageItem, stage: str, reason: str, **details: Any) -> None:
        logger.warning("rejected %s (%s): %s", item.name, stage, reason)
        self.rejects.append(
            {"image": str(item.path), "image_name": item.name, "image_sha256": item.sha256,
             "stage": stage, "reason": reason, **details}
        )
        self.rejected += 1
        self._after_write()

    def close(self) -> None:
        self.rows.close()
        self.rejects.close()


def _target_code(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "edit"


def export_flowedit_yaml(jsonl_path: Path, yaml_path: Path) -> int:
    """Write FlowEdit's ``edits.yaml`` format (a list of ``input_img``, ``source_prompt``,
    ``target_prompts``, ``target_codes``) for the rows of ``jsonl_path``; returns the count."""
    import yaml

    if not jsonl_path.exists():
        raise SystemExit(f"error: --jsonl {jsonl_path}: no such file (run the caption pipeline first)")
    if not yaml_path.parent.exists():
        raise SystemExit(f"error: --yaml {yaml_path}: folder {yaml_path.parent} does not exist; create it first")
    latest_by_image: dict[str, dict] = {}
    for row in read_rows(jsonl_path):
        latest_by_image[row["image"]] = row  # an image re-run after an edit keeps its last row
    entries = [
        {
            "input_img": row["image"],
            "source_prompt": row["source_prompt"],
            "target_prompts": [row["target_prompt"]],
            "target_codes": [_target_code((row.get("changed_span") or {}).get("target", "edit"))],
        }
        for row in latest_by_image.values()
    ]
    write_text_atomically(yaml_path, yaml.safe_dump(entries, sort_keys=False, allow_unicode=True, width=10**6))
    return len(entries)
