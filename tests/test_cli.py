"""The ``lass`` command: version, help, and groups that say when they are empty."""

from __future__ import annotations

import subprocess
import sys

from lass import __version__


def run_lass(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lass", *args], capture_output=True, text=True, timeout=120
    )


def test_version() -> None:
    result = run_lass("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"lass {__version__}"


def test_help_lists_groups() -> None:
    result = run_lass("--help")
    assert result.returncode == 0, result.stderr
    for group in ("serve", "train", "bench"):
        assert group in result.stdout


def test_lass_entry_point_installed() -> None:
    bin_dir = __import__("pathlib").Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "lass"), "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert __version__ in result.stdout


def test_group_without_subcommand_fails() -> None:
    for group in ("train", "bench"):
        result = run_lass(group)
        assert result.returncode != 0
