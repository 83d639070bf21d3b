"""Append-only JSONL files that survive crashes (used by the Appendix C caption pipeline).

* Every row is written as ONE ``write`` of ``json + "\\n"``, then flushed and fsync'd, so a
  crash (kill -9, power loss, ``os._exit``) can only leave a partial LAST line.
* Readers tolerate that partial last line; :func:`repair_tail` cuts it off before the
  file is appended to again, so the next row does not get glued onto the fragment.
* A damaged line in the MIDDLE of a file is not a crash remnant: it raises ``ValueError``
  naming the file and line, rather than silently dropping rows.
* :func:`merge_rows` folds per-process shard files into one file without duplicates; it is
  safe to rerun after a crash half-way through (rows already there are skipped).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

from softrepa.atomic import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


def read_rows(path: Path | str) -> list[dict]:
    """All complete rows of a JSONL file (``[]`` when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    # The piece after the last "\n" is either empty or a row cut short by a crash.
    complete, tail = lines[:-1], lines[-1]
    rows: list[dict] = []
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}:{number} is not valid JSON ({error.msg}). Only the last line of a "
                "file can be cut short by a crash; fix or delete this line and rerun."
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number} is not a JSON object; fix or delete this line and rerun.")
        rows.append(row)
    if tail.strip():
        try:
            row = json.loads(tail)
        except json.JSONDecodeError:
            logger.warning("%s: ignoring a truncated last line (left by an interrupted run)", path)
        else:
            if isinstance(row, dict):
                rows.append(row)
    return rows


def repair_tail(path: Path | str) -> None:
    """Make ``path`` end with a complete line: drop a cut-short last row, or add the
    missing newline after a complete one. No-op for a missing or empty file."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1  # 0 when the whole file is one partial line
        tail = data[cut:]
        try:
            json.loads(tail)
        except json.JSONDecodeError:
            logger.warning("%s: removing a truncated last line (%d bytes)", path, len(tail))
            handle.truncate(cut)
        else:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
        handle.flush()
        os.fsync(handle.fileno())


class JsonlAppender:
    """Appends rows to a JSONL file, each one durable (flush + fsync) when ``append``
    returns. Use as a context manager."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        repair_tail(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_rows_atomically(path: Path | str, rows: Iterable[dict]) -> None:
    """Replace ``path`` with ``rows`` in one step (``softrepa.atomic``: temp file, fsync, rename):
    a crash leaves either the old or the new file, never a mix."""
    with atomic_path(path) as temp, temp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_text_atomically(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (``softrepa.atomic``: temp file, fsync, rename)."""
    atomic_write_text(path, text)


def merge_rows(
    target: Path | str,
    shards: Iterable[Path | str],
    key: Callable[[dict], Hashable],
    delete_shards: bool = True,
) -> int:
    """Append to ``target`` every shard row whose ``key`` is not in it yet; return how
    many were added. Shards are deleted only after their rows are durable in ``target``."""
    target = Path(target)
    shard_paths = [Path(s) for s in shards if Path(s) != target]
    if not shard_paths:
        return 0  # nothing to fold in; do not create an empty target either
    seen = {key(row) for row in read_rows(target)}
    added = 0
    with JsonlAppender(target) as appender:
        for shard in shard_paths:
            for row in read_rows(shard):
                row_key = key(row)
                if row_key in seen:
                    continue
                seen.add(row_key)
                appender.append(row)
                added += 1
    if delete_shards:
        for shard in shard_paths:
            shard.unlink(missing_ok=True)
    return added
