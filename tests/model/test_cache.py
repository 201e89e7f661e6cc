"""The optional cache of materialized masked weights: LRU eviction within a byte budget."""

from __future__ import annotations

import pytest
import torch

from model.cache import MaskedWeightCache


def _weight(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float32)  # 4 * n bytes


def test_evicts_the_least_recently_used_entry_within_the_byte_budget() -> None:
    cache = MaskedWeightCache(budget_bytes=3 * 400)
    for key in ("a", "b", "c"):
        assert cache.put(key, _weight(100))
    assert cache.get("a") is not None  # "a" is now the most recently used; "b" the least
    assert cache.put("d", _weight(100))
    assert cache.get("b") is None
    assert all(cache.get(k) is not None for k in ("a", "c", "d"))
    stats = cache.stats()
    assert stats.entries == 3 and stats.used_bytes == 1200 <= stats.budget_bytes
    # A larger entry evicts as many of the oldest as it needs.
    assert cache.put("e", _weight(200))
    assert cache.get("a") is None and cache.get("c") is None
    assert cache.get("d") is not None and cache.get("e") is not None
    assert cache.stats().used_bytes == 1200


def test_refuses_entries_over_the_budget_and_a_non_positive_budget() -> None:
    cache = MaskedWeightCache(budget_bytes=400)
    assert cache.put("a", _weight(100))
    assert not cache.would_fit(404)
    assert not cache.put("big", _weight(101))
    assert cache.get("a") is not None, "a refused entry evicts nothing"
    replaced = _weight(50)
    assert cache.put("a", replaced)  # same key: replaced, not counted twice
    assert cache.get("a") is replaced and cache.stats().used_bytes == 200
    cache.clear()
    stats = cache.stats()
    assert stats.entries == 0 and stats.used_bytes == 0 and stats.hits == 2
    with pytest.raises(ValueError, match="positive"):
        MaskedWeightCache(0)
