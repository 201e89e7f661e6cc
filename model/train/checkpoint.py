"""Atomic checkpoints: training state (resume) and stage outputs (hand-off between stages).

Everything is written to a temporary file in the same folder, flushed to disk and
then ``os.replace``-d over the target, so a run killed at any instant (SIGKILL
included) leaves either the previous checkpoint or the new one, never half a file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.atomic import atomic_writer


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically (tmp file in the same folder + os.replace)."""
    with atomic_writer(path, binary=True) as f:
        torch.save(obj, f)


def load(path: Path, device: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by :func:`atomic_save` (our own files: full unpickling)."""
    return torch.load(Path(path), map_location=device, weights_only=False)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch's global RNG as seeded with ``seed``, and leave it as it was.

    For modules a stage creates before its loop seeds everything (a contrastive head, the
    adapters): unseeded, their initial weights came from whatever the process had drawn
    before, so two runs of the same config differed from their first step."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield
