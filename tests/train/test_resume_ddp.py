"""Crash safety and scale-out, through the real command line in subprocesses.

* A run killed with SIGKILL resumes from its last checkpoint: it ends with exactly the
  weights of an uninterrupted run and one metrics row per step.
* ``torchrun`` with 2 processes (gloo, CPU) ends with the weights of one process that
  sees the same global batches, under each data-parallel engine (``$LASS_DATA_PARALLEL``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.train import checkpoint as ckpt
from model.train.metrics import read_metrics
from tests.train.stage_helpers import micro_config, micro_corpus  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def finetune_cmd(config: Path, work: Path, *sets: str) -> list[str]:
    cmd = [sys.executable, "-m", "lass", "train", "finetune", str(config), "--work-dir", str(work)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def final_weights(work: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(work / "finetune" / "model.pt")["state_dict"]  # type: ignore[no-any-return]


def assert_same_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float
) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol, rtol=0), key


@pytest.mark.slow
def test_sigkill_resumes_from_last_checkpoint(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    config, _ = micro_config(tmp_path, micro_corpus, method="dense")
    # 12 utterances in batches of 3: 4 batches per epoch, so the run crosses epochs.
    sets = (
        "finetune.steps=14",
        "finetune.checkpoint_every=4",
        "finetune.log_every=1",
        "finetune.lid_steps=0",
        "finetune.max_batch_size=3",
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        finetune_cmd(config, killed, *sets), cwd=REPO, env=ENV, stderr=subprocess.PIPE
    )
    metrics = killed / "finetune"
    deadline = time.monotonic() + 240
    last = 0
    while time.monotonic() < deadline and proc.poll() is None:
        rows = read_metrics(metrics)
        last = int(rows[-1]["step"]) if rows else 0
        if last >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"finished before it could be killed: {proc.stderr}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = ckpt.load(killed / "finetune" / "checkpoint.pt")["state"]["step"]
    last = int(read_metrics(metrics)[-1]["step"])
    assert saved % 4 == 0 and 4 <= saved <= last < saved + 4, (saved, last)
    assert not (killed / "finetune" / "model.pt").exists()

    resumed = subprocess.run(
        finetune_cmd(config, killed, *sets), cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {saved}" in resumed.stderr
    steps = [int(r["step"]) for r in read_metrics(metrics)]
    assert steps == list(range(1, 15)), "each step logged exactly once"

    straight = tmp_path / "straight"
    done = subprocess.run(
        finetune_cmd(config, straight, *sets), cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert_same_weights(final_weights(killed), final_weights(straight), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one(
    engine: str,
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config, _ = micro_config(tmp_path, micro_corpus, method="dense")
    sets = ("finetune.steps=4", "finetune.lid_steps=0", "finetune.max_batch_size=4")
    single = tmp_path / "single"
    one = subprocess.run(
        finetune_cmd(config, single, *sets), cwd=REPO, env=ENV, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr
    ddp = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    two = subprocess.run(
        torchrun + finetune_cmd(config, ddp, *sets)[1:],
        cwd=REPO,
        env={**ENV, "LASS_DATA_PARALLEL": engine},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"finetune: 2 ranks, {engine}" in two.stderr
    a, b = final_weights(single), final_weights(ddp)
    assert_same_weights(a, b, atol=2e-5)
    saved = ckpt.load(ddp / "finetune" / "checkpoint.pt")
    assert saved["state"]["step"] == 4
    assert len(saved["rng"]) == 2, "the run did not have 2 ranks"
