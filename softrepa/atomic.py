"""Atomic file writes: a temp file beside the target, fsync'd, then ``os.replace``'d over it.

Every file the project writes that a crash must not leave half-written (token files, feature
caches, generated and edited PNGs, evaluation JSON/JSONL, datasets, app examples) goes through
:func:`atomic_path`, so a killed process leaves either the old file or the new one, never a mix,
and "the file exists" can safely mean "the file is finished" (resumable runs rely on that)::

    with atomic_path("out/image.png") as temp:
        image.save(temp)                      # any writer that takes a path
    atomic_write_bytes("out/data.bin", data)  # the common case in one call
    atomic_write_text("out/table.md", text)

The temp file is ``.<name>.tmp-<random><suffix>`` in the target's folder: unique per call
(concurrent writers do not collide), on the same file system (so the rename is atomic), and
ending with the target's suffix, so PIL infers the format and ``numpy.savez`` does not append a
second ``.npz``. A run killed mid-write can leave one behind; :data:`TEMP_GLOB` matches them.
Finished files get mode 0o644 (``mkstemp`` creates 0600; outputs are meant to be shared).
Directory swaps (checkpoint or staging folders) are not file writes and do not use this module.
``file_sha256`` hashes a finished file (token files are recorded by it); this module imports no
torch, so the web page can use it before the model loads.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o644
TEMP_GLOB = ".*.tmp-*"  # matches the temp files a killed writer may leave behind


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp path beside ``path`` (creating the folder) for the block to write.

    On normal exit the temp file is fsync'd, given mode 0o644 and renamed over ``path``; on any
    exception (``KeyboardInterrupt`` included) it is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=path.suffix)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)  # the writer may have replaced the file mkstemp made
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(temp, FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path`` as a ``Path``."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Replace ``path`` with ``text`` atomically; returns ``path`` as a ``Path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (token files are recorded by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
