"""Batches: zero-padded collation and a length-bucketed, seed-deterministic batch sampler.

The sampler plans GLOBAL batches (a budget of audio seconds and/or a count); under DDP
each rank takes ``batch[rank::world_size]`` of every global batch, which is what the
training loop does, so a run on N ranks sees exactly the samples of a 1-rank run with
the same global batch. Items inside a global batch are ordered longest first, so the
strided shards get similar lengths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from model.train.data.dataset import Sample


@dataclass
class Batch:
    """Collated samples; B = batch size, T = longest waveform, U = longest target."""

    waveforms: Tensor  # [B, T] float32, zero-padded
    lengths: Tensor  # [B] long, valid samples
    lang_ids: Tensor  # [B] long
    targets: Tensor  # [B, U] long, padded with 0 (the CTC blank) past target_lengths
    target_lengths: Tensor  # [B] long
    texts: list[str]
    indices: list[int]  # dataset positions

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            if isinstance(getattr(self, f.name), Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                setattr(self, f.name, value.pin_memory())
        return self

    def concatenated_targets(self) -> Tensor:
        """[sum(target_lengths)] long: the 1-D target form of ``torch.nn.functional.ctc_loss``."""
        mask = torch.arange(self.targets.shape[1], device=self.targets.device)[None, :]
        return self.targets[mask < self.target_lengths[:, None]]

    @property
    def audio_seconds(self) -> float:
        return float(self.lengths.sum()) / 16_000


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad waveforms and targets of ``samples`` into a :class:`Batch` (order kept)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    lengths = torch.tensor([s.waveform.numel() for s in samples], dtype=torch.long)
    target_lengths = torch.tensor([s.targets.numel() for s in samples], dtype=torch.long)
    waveforms = torch.zeros(len(samples), int(lengths.max()), dtype=torch.float32)
    targets = torch.zeros(len(samples), int(target_lengths.max()), dtype=torch.long)
    for i, s in enumerate(samples):
        waveforms[i, : s.waveform.numel()] = s.waveform
        targets[i, : s.targets.numel()] = s.targets
    return Batch(
        waveforms=waveforms,
        lengths=lengths,
        lang_ids=torch.tensor([s.lang_id for s in samples], dtype=torch.long),
        targets=targets,
        target_lengths=target_lengths,
        texts=[s.text for s in samples],
        indices=[s.index for s in samples],
    )


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches, deterministic from ``seed`` and the epoch.

    Per epoch: durations get a small random jitter (so batches differ between epochs),
    indices are sorted by jittered length and cut into batches whose PADDED size
    (count x longest) stays within ``max_seconds`` and whose count stays within
    ``max_count``; the batch order is then shuffled. ``mode="per_language"`` batches each
    language separately (every batch is one language); ``"mixed"`` lets languages share
    a batch. ``sort_first_epoch`` (SortaGrad, Amodei et al. 2016) plays epoch 0's
    batches shortest first instead of shuffled: short utterances are the easy way out of
    the CTC blank plateau. Iterating yields this rank's share ``batch[rank::world_size]``
    of each global batch; :meth:`plan` gives the global batches.
    """

    def __init__(
        self,
        durations: Sequence[float],
        lang_ids: Sequence[int] | None = None,
        max_seconds: float | None = 60.0,
        max_count: int | None = None,
        mode: Literal["mixed", "per_language"] = "mixed",
        shuffle: bool = True,
        seed: int = 0,
        jitter: float = 0.1,
        sort_first_epoch: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if max_seconds is None and max_count is None:
            raise ValueError("give max_seconds, max_count or both")
        if mode not in ("mixed", "per_language"):
            raise ValueError(f"mode must be 'mixed' or 'per_language', not {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if max_count is not None and max_count < world_size:
            raise ValueError(f"max_count {max_count} < world_size {world_size}")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.lang_ids = np.asarray(
            lang_ids if lang_ids is not None else [0] * len(durations), dtype=np.int64
        )
        if len(self.lang_ids) != len(self.durations):
            raise ValueError("durations and lang_ids differ in length")
        self.max_seconds = max_seconds
        self.max_count = max_count
        self.mode = mode
        self.shuffle = shuffle
        self.seed = seed
        self.jitter = jitter
        self.sort_first_epoch = sort_first_epoch
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cut(self, order: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
        """Consecutive runs of ``order`` within the budget; every batch >= world_size items."""
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0.0
        for i in order:
            d = float(lengths[i])
            longest_if = max(longest, d)
            over = (self.max_count is not None and len(current) + 1 > self.max_count) or (
                self.max_seconds is not None and longest_if * (len(current) + 1) > self.max_seconds
            )
            if current and over and len(current) >= self.world_size:
                batches.append(current)
                current, longest_if = [], d
            current.append(int(i))
            longest = longest_if
        if current:
            if len(current) < self.world_size and batches:
                batches[-1].extend(current)  # too few for every rank: join the previous batch
            else:
                batches.append(current)
        return batches

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """Global batches of dataset indices for ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return [list(b) for b in self._cache[1]]
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.durations)
        noise = rng.uniform(-self.jitter, self.jitter, n) if self.shuffle else np.zeros(n)
        keys = self.durations * (1.0 + noise)
        tie = rng.permutation(n) if self.shuffle else np.arange(n)
        groups = (
            [np.arange(n)]
            if self.mode == "mixed"
            else [np.flatnonzero(self.lang_ids == lang) for lang in np.unique(self.lang_ids)]
        )
        batches: list[list[int]] = []
        for group in groups:
            order = group[np.lexsort((tie[group], keys[group]))]  # by length, ties random
            batches.extend(self._cut(order, self.durations))
        if self.sort_first_epoch and epoch == 0:
            batches.sort(key=lambda b: (max(self.durations[i] for i in b), b[0]))
        elif self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        # Longest first inside a batch: the rank shards [r::W] then get similar lengths.
        batches = [sorted(b, key=lambda i: (-self.durations[i], i)) for b in batches]
        self._cache = (epoch, batches)
        return [list(b) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.plan():
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.plan())
