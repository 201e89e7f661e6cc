"""The training loop's pieces: LR schedule, metrics CSV, bf16 autocast, the CLI's errors."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.train import checkpoint as ckpt
from model.train.artifacts import new_model
from model.train.config import LoopConfig, OptimConfig
from model.train.context import Context
from model.train.data.batching import collate
from model.train.finetune import ctc_step
from model.train.inputs import make_inputs
from model.train.loop import lr_factor, train_loop
from model.train.metrics import MetricsLog, read_metrics
from model.train.objectives import StepResult
from tests.train.stage_helpers import micro_config, micro_corpus  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def test_lr_schedule_warms_up_then_decays() -> None:
    optim = OptimConfig(warmup_steps=10, schedule="linear", final_lr_scale=0.1)
    factors = [lr_factor(s, 100, optim) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert lr_factor(100, 100, optim) == pytest.approx(0.1)
    cosine = OptimConfig(warmup_steps=0, schedule="cosine", final_lr_scale=0.0)
    assert lr_factor(50, 100, cosine) == pytest.approx(0.5)
    assert lr_factor(37, 100, OptimConfig(warmup_steps=0, schedule="constant")) == 1.0


def test_metrics_log_drops_rows_past_the_resume_step(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log({"step": step, "loss": 1.0 / step})
    log.close()
    MetricsLog(tmp_path, resume_step=3, tensorboard=False).log({"step": 4, "loss": 9.0})
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[-1]["loss"] == "9"


def test_bf16_autocast_ctc_step_is_close_to_fp32(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    _, cfg = micro_config(tmp_path, micro_corpus)
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    model = new_model(cfg.model, ctx.vocab())
    inputs = make_inputs(ctx, "train", cfg.finetune)
    batch = collate([inputs.dataset[i] for i in range(4)])
    fp32 = ctc_step(model, batch, None).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = ctc_step(model, batch, None)
    assert bf16.loss.dtype == torch.float32  # CTC runs in fp32 under autocast
    assert float(bf16.loss.detach()) == pytest.approx(float(fp32.detach()), rel=0.05)
    bf16.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_cli_names_a_bad_config_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[finetune]\nstepz = 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "lass", "train", "finetune", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "finetune.stepz" in result.stderr


def test_cli_says_what_a_stage_is_missing(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    config, _ = micro_config(tmp_path, micro_corpus)  # method lass: adapt needs masks
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lass",
            "train",
            "adapt",
            str(config),
            "--work-dir",
            str(tmp_path / "w"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "run the prune stage first" in result.stderr


def test_elapsed_seconds_go_on_across_a_resume(tmp_path: Path) -> None:
    """``elapsed_s`` counts from step 0, not from the call that resumed: the checkpoint
    keeps the training time, so a run killed and resumed logs one rising column."""
    model = torch.nn.Linear(2, 1)
    data = [torch.randn(2) for _ in range(4)]

    def step_fn(batch: torch.Tensor, step: int) -> StepResult:
        time.sleep(0.05)  # each step takes at least this long
        return StepResult(loss=model(batch).pow(2).mean(), weight=float(len(batch)))

    cfg = LoopConfig(steps=6, log_every=1, checkpoint_every=1)
    for stop_after in (3, None):
        train_loop(
            name="toy",
            out_dir=tmp_path,
            cfg=cfg,
            modules={"model": model},
            params=list(model.parameters()),
            step_fn=step_fn,
            plan=lambda epoch: [[0, 1], [2, 3]],
            dataset=data,  # type: ignore[arg-type]
            collate_fn=torch.stack,
            device=torch.device("cpu"),
            quiet=True,
            stop_after=stop_after,
        )
    elapsed = [float(row["elapsed_s"]) for row in read_metrics(tmp_path)]
    assert len(elapsed) == 6
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(elapsed)), elapsed
    assert elapsed[-1] >= 6 * 0.05
    assert ckpt.load(tmp_path / "checkpoint.pt")["state"]["seconds"] == pytest.approx(
        elapsed[-1], abs=0.5
    )
