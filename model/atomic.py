"""Atomic file writes: a temporary file in the target's folder, fsync, then ``os.replace``.

A process killed at any instant leaves either the old file or the new one, never a torn
one (checkpoints, manifests, reports, language models). Bundles, being folders, are
written the same way one level up (``model/bundle.py``).
"""

from __future__ import annotations

import os
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
