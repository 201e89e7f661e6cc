"""The LID head's loss weights: every language counts the same, however much audio it has."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.train.config import PipelineConfig, from_dict
from model.train.finetune import balanced_language_weights


def test_each_language_carries_the_same_total_weight() -> None:
    lang_ids = [0] * 8 + [1] * 8 + [2] + [3]  # two high-resource, two low-resource
    weights = balanced_language_weights(lang_ids, 5)  # language 4 has no data
    per_language = [weights[i] * lang_ids.count(i) for i in range(4)]
    assert all(total == pytest.approx(18 / 4) for total in per_language)
    assert weights[4] == 0
    assert weights[2] == pytest.approx(8 * weights[0])


def test_weighted_loss_is_the_mean_of_per_language_means() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 3 + [2] * 1)
    logits = torch.randn(len(labels), 3)
    weights = balanced_language_weights(labels.tolist(), 3)
    weighted = F.cross_entropy(logits, labels, weight=weights)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    means = [per_sample[labels == i].mean() for i in range(3)]
    assert weighted == pytest.approx(float(sum(means) / 3), rel=1e-5)
    # unweighted, the high-resource language dominates: a different figure
    assert F.cross_entropy(logits, labels) != pytest.approx(float(weighted), rel=1e-3)


def test_balance_is_on_by_default_and_can_be_turned_off() -> None:
    assert PipelineConfig().finetune.lid_balance is True
    cfg = from_dict(PipelineConfig, {"finetune": {"lid_balance": False}})
    assert cfg.finetune.lid_balance is False
