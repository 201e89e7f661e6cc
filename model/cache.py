"""Bounded LRU cache of materialized masked weights ``W ⊙ M_lang`` (inference only).

Masks, not copies, are the design: this cache is an optional speed-up with a byte budget
(default off). Keys include the mask generation and the weight's in-place version counter,
so a re-added language or an optimizer step never serves a stale weight. Safe to share
between threads (the server runs forwards in several): one lock around each operation.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from torch import Tensor


@dataclass
class CacheStats:
    """Counters of a :class:`MaskedWeightCache`."""

    budget_bytes: int
    used_bytes: int
    entries: int
    hits: int
    misses: int


class MaskedWeightCache:
    """Least-recently-used map from a weight key to a materialized tensor, within a byte budget."""

    def __init__(self, budget_bytes: int):
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[Hashable, Tensor] = OrderedDict()
        self._used = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Tensor | None:
        """The cached tensor (now most recently used), or None."""
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return tensor

    def put(self, key: Hashable, tensor: Tensor) -> bool:
        """Store ``tensor``, evicting least recently used entries; False if over the budget."""
        size = tensor.numel() * tensor.element_size()
        if size > self.budget_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._used -= old.numel() * old.element_size()
            while self._entries and self._used + size > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._used -= evicted.numel() * evicted.element_size()
            self._entries[key] = tensor
            self._used += size
            return True

    def would_fit(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` can be cached at all."""
        return nbytes <= self.budget_bytes

    def clear(self) -> None:
        """Drop every entry (counters kept)."""
        with self._lock:
            self._entries.clear()
            self._used = 0

    def stats(self) -> CacheStats:
        """Budget, bytes in use, entries, hits and misses."""
        with self._lock:
            return CacheStats(
                self.budget_bytes, self._used, len(self._entries), self.hits, self.misses
            )
