"""The LID step's loss units: what the data-parallel engines weight ranks by."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from model.config import get_preset
from model.network import LassModel
from model.train.finetune import lid_step


def test_a_class_weighted_lid_loss_counts_its_summed_class_weights() -> None:
    torch.manual_seed(0)
    model = LassModel(get_preset("tiny"), 8, ["de", "en", "es"], lid_head=True).eval()
    batches = [
        SimpleNamespace(
            waveforms=torch.randn(n, 8000), lengths=torch.full((n,), 8000), lang_ids=ids
        )
        for n, ids in ((3, torch.tensor([0, 0, 1])), (2, torch.tensor([2, 2])))
    ]
    weights = torch.tensor([0.5, 2.0, 3.0])
    with torch.no_grad():
        results = [lid_step(model, b, weights) for b in batches]
        assert [r.weight for r in results] == [0.5 + 0.5 + 2.0, 3.0 + 3.0]
        # Ranks weighted by their units give the loss of the two batches as one.
        joined = torch.cat([model.identify_language(b.waveforms, b.lengths) for b in batches])
        ids = torch.cat([b.lang_ids for b in batches])
        whole = F.cross_entropy(joined.float(), ids, weight=weights)
        total = sum(r.weight for r in results)
        combined = sum(r.loss * r.weight for r in results) / total
        torch.testing.assert_close(combined, whole)
        # Without class weights a unit is a sample, as before.
        assert lid_step(model, batches[0]).weight == 3.0
