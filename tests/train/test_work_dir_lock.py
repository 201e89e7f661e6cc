"""One trainer per work folder: a second process is refused, naming the first (context.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from model.train.context import LOCK_FILE, lock_work_dir
from tests.conftest import REPO

HOLD = """
import sys
from pathlib import Path
from model.train.context import lock_work_dir
lock_work_dir(Path(sys.argv[1]))
print('held', flush=True)
sys.stdin.read()  # hold until the test closes stdin or kills this process
"""


def _train(config: Path, work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lass", "train", "finetune", str(config), "--work-dir", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_second_trainer_in_a_work_folder_is_refused_until_the_first_ends(
    tmp_path: Path,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    config = tmp_path / "c.toml"
    config.write_text('name = "lock"\n[finetune]\nsteps = 1\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(work)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert (work / LOCK_FILE).read_text().strip() == str(holder.pid)
        refused = _train(config, work)
        assert refused.returncode == 2
        assert f"another process (pid {holder.pid}) is training in" in refused.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # The kernel let go of a killed holder's lock: nothing stale is left behind.
    lock_work_dir(work)
    assert (work / LOCK_FILE).read_text().strip() != str(holder.pid)
    lock_work_dir(work)  # a folder this process already holds: no error


def test_a_process_holds_each_of_its_work_folders_once(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        lock_work_dir(tmp_path / name)
        lock_work_dir(tmp_path / name)
