"""Atomic writes: a failure mid-write leaves the old file and no temporary file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.atomic import atomic_write_text, atomic_writer


def test_replaces_on_success_and_keeps_old_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    assert atomic_write_text(target, "first") == target
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_writer(target) as f:
        f.write("half of the second")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]
    with atomic_writer(target, binary=True) as f:
        f.write(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
