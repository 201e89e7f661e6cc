"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A process killed at any instant leaves either the old file or the new one, never a torn
one (checkpoints, manifests, reports, language models). Folders (bundles, language packs)
are written the same way one level up: :func:`atomic_directory`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_writer(path: Path | str, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` (text is UTF-8); on a clean exit it replaces
    ``path``, on an exception it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_writer(path) as f:
        f.write(text)
    return Path(path)


def fsync_path(path: Path | str) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(out_dir: Path | str) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` to fill (fsync what you write); on a clean
    exit it is renamed into place, an existing ``out_dir`` first renamed aside and removed
    after. On an exception it is removed and ``out_dir`` is untouched. A crash leaves the
    old folder or the new one, plus at worst a hidden temporary folder (between the two
    renames the old one sits in ``.<name>.old-*/<name>``)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / out_dir.name)
        os.rename(tmp, out_dir)
        fsync_path(out_dir.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
