"""The image's Python build, without Docker: the Dockerfile's two pip steps run on a copy of
exactly the files its COPY lines send, and the wheel carries every module and data file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.service.test_deploy import copy_sources, dockerignored

PACKAGES = ("lass", "model", "service", "bench")


def pip_wheel(context: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` offline, with the venv's setuptools; returns the wheel."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"),
            *("--no-build-isolation", "--no-index", "-w", str(out), str(context)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("lass_asr-*.whl")
    return wheel


def copy_context(sources: list[str], dest: Path) -> None:
    """Copy COPY sources as the Docker build context would send them (.dockerignore)."""
    for source in sources:
        src = REPO / source
        if src.is_file():
            (dest / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / source)
            continue
        for path in src.rglob("*"):
            rel = path.relative_to(REPO).as_posix()
            if path.is_file() and not dockerignored(rel):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest / rel)


@pytest.mark.slow
def test_dependency_layer_builds_from_the_stub_tree(tmp_path: Path) -> None:
    # The builder installs the dependencies from pyproject + README + lass/__init__.py and
    # empty package folders, so a code edit does not reinstall torch.
    context = tmp_path / "stub"
    context.mkdir()
    copy_context(["pyproject.toml", "README.md", "lass/__init__.py"], context)
    for package in ("model", "service", "bench"):
        (context / package).mkdir()
        (context / package / "__init__.py").touch()
    wheel = pip_wheel(context, tmp_path / "wheels")
    assert wheel.name.startswith("lass_asr-")


@pytest.mark.slow
def test_image_wheel_has_every_module_and_data_file(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    sources = [s for s in copy_sources() if s != "model/default_bundle/"]
    copy_context(sources, context)
    wheel = pip_wheel(context, tmp_path / "wheels")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "--", *PACKAGES], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "service/audio.py" in tracked
    expected = [
        rel
        for rel in tracked
        if not rel.startswith("model/default_bundle") and not dockerignored(rel)
    ]
    missing = [rel for rel in expected if rel not in names]
    assert not missing, f"files the image would lack: {missing}"
