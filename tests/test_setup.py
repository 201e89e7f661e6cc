"""The set-up behind `make serve` and `make test`: a second run does none of it, a changed
dependency spec does it again, and missing Debian packages without root get a clear message.

Checked on a copy of the Makefile with ``make -n`` (nothing is installed): the real
set-up is what `make test` itself runs before these tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

SETUP_STEPS = ("python3 -m venv", "pip install", "apt-ensure.sh")


def make_dry_run(tree: Path, target: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-C", str(tree), target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def stamp_spec(dry_run: str) -> str:
    match = re.search(r"\.stamp-dev-([0-9a-f]{12})", dry_run)
    assert match, dry_run
    return match.group(1)


def test_second_setup_does_nothing_and_a_new_spec_sets_up_again(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(REPO / name, tmp_path / name)
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "apt-ensure.sh", tmp_path / "scripts" / "apt-ensure.sh")

    # From nothing: a venv, the Debian packages and both pip installs.
    fresh = make_dry_run(tmp_path, "setup-dev")
    for step in SETUP_STEPS:
        assert step in fresh, fresh
    assert "'.[dev]'" in fresh
    # both installs take the tested versions (constraints.txt), not each package's newest
    installs = [line for line in fresh.splitlines() if "pip install" in line]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs), fresh
    spec = stamp_spec(fresh)

    # What the first run leaves behind: the venv's python and both stamps (dev newer).
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    run_stamp, dev_stamp = venv / f".stamp-run-{spec}", venv / f".stamp-dev-{spec}"
    run_stamp.touch()
    dev_stamp.touch()
    mtime = run_stamp.stat().st_mtime
    os.utime(dev_stamp, (mtime + 1, mtime + 1))
    for target in ("setup", "setup-dev", "test"):
        again = make_dry_run(tmp_path, target)
        for step in SETUP_STEPS:
            assert step not in again, (target, again)
    assert "lass serve" in make_dry_run(tmp_path, "serve")

    # make lock rewrites the pins from the venv and keeps the header (a stand-in python
    # answers `-m pip freeze`); the set-up is current, so nothing is installed first. pip is
    # left out: it comes with the interpreter.
    (venv / "bin" / "python").write_text(
        "#!/bin/sh\nprintf 'alpha==1.0\\npip==23.2.1\\nbeta==2.1\\n'\n"
    )
    (venv / "bin" / "python").chmod(0o755)
    header = [
        line for line in (REPO / "constraints.txt").read_text().splitlines() if line[:1] == "#"
    ]
    locked = subprocess.run(
        ["make", "-C", str(tmp_path), "lock"], capture_output=True, text=True, timeout=60
    )
    assert locked.returncode == 0 and "lock: 2 pins" in locked.stdout, locked
    assert (tmp_path / "constraints.txt").read_text().splitlines() == [
        *header,
        "alpha==1.0",
        "beta==2.1",
    ]
    shutil.copy2(REPO / "constraints.txt", tmp_path / "constraints.txt")

    # A changed dependency spec (pyproject.toml) is a new stamp: set-up runs again.
    with (tmp_path / "pyproject.toml").open("a") as f:
        f.write("# changed\n")
    changed = make_dry_run(tmp_path, "setup-dev")
    assert "pip install" in changed and "apt-ensure.sh" in changed, changed
    assert stamp_spec(changed) != spec

    # So is a changed lock: a moved pin reinstalls.
    with (tmp_path / "constraints.txt").open("a") as f:
        f.write("# changed\n")
    relocked = make_dry_run(tmp_path, "setup-dev")
    assert "pip install" in relocked
    assert stamp_spec(relocked) not in (spec, stamp_spec(changed))


def run_apt_ensure(*packages: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "apt-ensure.sh"), *packages],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_apt_ensure_is_silent_when_everything_is_installed() -> None:
    result = run_apt_ensure("bash", "coreutils")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_apt_ensure_without_root_prints_the_command_to_run(tmp_path: Path) -> None:
    # A non-root user without password-less sudo: stand-ins for `id` and `sudo`.
    (tmp_path / "id").write_text("#!/bin/sh\necho 1000\n")
    (tmp_path / "sudo").write_text("#!/bin/sh\nexit 1\n")
    for stub in ("id", "sudo"):
        (tmp_path / stub).chmod(0o755)
    result = run_apt_ensure("bash", "lass-no-such-package", path=f"{tmp_path}:{os.environ['PATH']}")
    assert result.returncode == 1
    assert "needs root" in result.stderr
    assert "apt-get install -y lass-no-such-package" in result.stderr
    assert "bash" not in result.stderr.split("apt-get install -y", 1)[1]
