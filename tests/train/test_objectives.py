"""The wav2vec 2.0 pieces: span masking, distractor sampling, the product quantizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.train.config import ContrastiveConfig
from model.train.objectives import (
    contrastive_logits,
    ctc_loss,
    gumbel_temperature,
    sample_negatives,
    span_mask,
)
from model.train.quantizer import GumbelProductQuantizer


def test_span_mask_respects_lengths_and_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([200, 120, 7, 1])
    mask = span_mask(lengths, 200, mask_prob=0.65, mask_length=10, generator=g)
    assert mask.shape == (4, 200)
    for b, n in enumerate(lengths.tolist()):
        assert not mask[b, n:].any(), "padding must never be masked"
    # Overlapping spans: roughly half of the frames end up masked for long utterances.
    assert 0.3 < mask[0].float().mean() < 0.8
    assert 2 <= mask[2].sum() < 7  # a short utterance still gets a (shorter) span
    assert mask[3].sum() == 0  # a single frame cannot be masked and contrasted


def test_span_mask_is_made_of_spans() -> None:
    g = torch.Generator().manual_seed(1)
    mask = span_mask(torch.tensor([300]), 300, mask_prob=0.05, mask_length=10, generator=g)
    row = mask[0].int().tolist()
    runs = [len(r) for r in "".join(map(str, row)).split("0") if r]
    assert runs and all(r >= 10 for r in runs)


def test_negatives_come_from_other_masked_frames_of_the_same_utterance() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0, 2:8] = True  # 6 masked frames
    mask[1, 10:13] = True  # 3
    mask[2, 5] = True  # 1: no distractor possible
    neg, usable = sample_negatives(mask, num_negatives=50, generator=g)
    assert neg.shape == (10, 50)
    assert usable.tolist() == [True] * 9 + [False]
    utt = torch.tensor([0] * 6 + [1] * 3 + [2])
    for i in range(9):
        assert (utt[neg[i]] == utt[i]).all(), "distractor from another utterance"
        assert (neg[i] != i).all(), "a frame is its own distractor"
    # Every other masked frame of utterance 0 gets drawn sometimes.
    assert set(neg[0].tolist()) == {1, 2, 3, 4, 5}


def test_quantizer_shapes_hard_codes_and_diversity() -> None:
    torch.manual_seed(0)
    q = GumbelProductQuantizer(in_dim=16, groups=2, entries=8, code_dim=12)
    x = torch.randn(64, 16)
    out = q(x, temperature=2.0)
    assert out.quantized.shape == (64, 12)
    assert out.indices.shape == (64, 2)
    # Hard one-hot forward: each output half is exactly one codebook row.
    first = out.quantized[:, :6]
    rows = q.codebook[0]
    assert torch.allclose(first, rows[out.indices[:, 0]], atol=1e-6)
    assert 0.0 <= float(q.diversity_loss(out).detach()) < 1.0
    # The straight-through estimator passes a gradient to the logits and codebook.
    out.quantized.sum().backward()
    assert q.to_logits.weight.grad is not None and q.to_logits.weight.grad.abs().sum() > 0
    assert q.codebook.grad is not None


def test_temperature_anneals_to_floor() -> None:
    cfg = ContrastiveConfig(temperature_start=2.0, temperature_end=0.5, temperature_decay=0.9)
    assert gumbel_temperature(cfg, 0) == 2.0
    assert gumbel_temperature(cfg, 5) < 2.0
    assert gumbel_temperature(cfg, 1000) == 0.5


def test_ctc_loss_padded_and_concatenated_targets_agree() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 30, 6, requires_grad=True)
    frames = torch.tensor([30, 20])
    padded = torch.tensor([[1, 2, 3, 2], [4, 5, 0, 0]])
    concat = torch.tensor([1, 2, 3, 2, 4, 5])
    lengths = torch.tensor([4, 2])
    a = ctc_loss(logits, frames, padded, lengths)
    b = ctc_loss(logits, frames, concat, lengths)
    assert a.shape == (2,)
    assert torch.allclose(a, b)
    a.mean().backward()
    assert logits.grad is not None and logits.grad[1, 20:].abs().sum() == 0


def test_contrastive_logits_match_the_direct_formula() -> None:
    torch.manual_seed(0)
    context = torch.randn(30, 16, requires_grad=True)
    targets = torch.randn(30, 16, requires_grad=True)
    neg = torch.randint(0, 30, (30, 7))
    ignore = torch.rand(30, 7) < 0.2
    fast = contrastive_logits(context, targets, neg, ignore, 0.1)
    candidates = torch.cat([targets[:, None], targets[neg]], dim=1)  # [N, 1+K, D]
    direct = F.cosine_similarity(context[:, None], candidates, dim=-1) / 0.1
    direct = torch.cat([direct[:, :1], direct[:, 1:].masked_fill(ignore, float("-inf"))], 1)
    assert torch.allclose(fast, direct, atol=1e-5)
    g_fast = torch.autograd.grad(fast.logsumexp(-1).sum(), (context, targets))
    g_direct = torch.autograd.grad(direct.logsumexp(-1).sum(), (context, targets))
    for a, b in zip(g_fast, g_direct, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
