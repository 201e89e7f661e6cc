"""Training objectives: wav2vec 2.0 contrastive pre-training, CTC, language identification.

Each ``*_step`` function takes a model and a batch and returns a ``StepResult``:
the loss (a mean over ``weight`` units: masked frames, samples) and scalar metrics.
The loop weights ranks by ``weight`` so that a DDP run equals a single process
with the same global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.train.config import ContrastiveConfig
from model.train.quantizer import GumbelProductQuantizer


@dataclass
class StepResult:
    loss: Tensor  # scalar, mean over ``weight`` units of this rank's batch
    weight: float  # how many units the mean is over (DDP weights ranks by it)
    metrics: dict[str, float] = field(default_factory=dict)


class Encoder(Protocol):
    """The two LassModel pieces the contrastive objective needs (``LassModel``'s docstrings)."""

    def extract_features(
        self, waveforms: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor | None]: ...

    def encode(
        self,
        features: Tensor,
        lengths: Tensor | None,
        lang_ids: Tensor | None,
        time_mask: Tensor | None = None,
    ) -> Tensor: ...


# --------------------------------------------------------------------------- masking


def span_mask(
    frame_lengths: Tensor,
    num_frames: int,
    mask_prob: float,
    mask_length: int,
    min_spans: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """wav2vec 2.0 time masking: ``[B, F]`` bool, True where a frame is masked.

    Per utterance of ``L`` valid frames, ``round_random(mask_prob * L / mask_length)``
    span starts (at least ``min_spans``) are drawn without replacement from
    ``[0, L - mask_length]``; each masks ``mask_length`` frames (spans may overlap).
    Padding is never masked. Utterances shorter than a span get a shorter span.
    """
    batch = frame_lengths.shape[0]
    mask = torch.zeros(batch, num_frames, dtype=torch.bool)
    lengths = frame_lengths.tolist()
    for b, length in enumerate(lengths):
        length = int(length)
        if length < 2:
            continue
        span = min(mask_length, max(1, length // 2))
        u = float(torch.rand((), generator=generator))
        n_spans = max(min_spans, int(mask_prob * length / span + u))
        n_starts = length - span + 1
        n_spans = min(n_spans, n_starts)
        starts = torch.randperm(n_starts, generator=generator)[:n_spans]
        offsets = (starts[:, None] + torch.arange(span)[None, :]).reshape(-1)
        mask[b, offsets] = True
    return mask


def sample_negatives(
    time_mask: Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Distractors for each masked frame, drawn from the other masked frames of its utterance.

    Returns ``(neg_index [N, K], usable [N])`` where ``N = time_mask.sum()``; indexes point
    into the row-major list of masked frames. ``usable`` is False for frames whose
    utterance has fewer than 2 masked frames (no distractor exists).
    """
    per_utt = time_mask.sum(1)  # [B]
    offsets = torch.cumsum(per_utt, 0) - per_utt  # first masked index of each utterance
    utt = torch.repeat_interleave(torch.arange(time_mask.shape[0]), per_utt)  # [N]
    rank = torch.arange(utt.numel()) - offsets[utt]  # position inside its utterance
    count = per_utt[utt]  # [N]
    others = (count - 1).clamp(min=1)
    draw = torch.rand(utt.numel(), num_negatives, generator=generator)
    idx = (draw * others[:, None]).long()
    idx = idx + (idx >= rank[:, None]).long()  # skip the frame itself
    idx = idx.clamp(max=(count - 1).clamp(min=0)[:, None])
    return offsets[utt][:, None] + idx, count >= 2


# --------------------------------------------------------------------------- contrastive


class ContrastiveHead(nn.Module):
    """The parts of wav2vec 2.0 pre-training that are not the backbone.

    ``feature_norm`` + ``quantizer`` turn conv features ``[N, C]`` into targets;
    ``project_q`` and ``final_proj`` map targets and contexts into the shared
    ``final_dim`` space where cosine similarity is taken.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, cfg: ContrastiveConfig) -> None:
        super().__init__()
        self.feature_norm = nn.LayerNorm(feature_dim)
        self.quantizer = GumbelProductQuantizer(
            feature_dim,
            cfg.codebook_groups,
            cfg.codebook_entries,
            cfg.codevector_dim,
            cfg.quantizer_init_std,
        )
        self.project_q = nn.Linear(cfg.codevector_dim, cfg.final_dim)
        self.final_proj = nn.Linear(hidden_dim, cfg.final_dim)


def gumbel_temperature(cfg: ContrastiveConfig, step: int) -> float:
    return max(cfg.temperature_end, cfg.temperature_start * cfg.temperature_decay**step)


def contrastive_logits(
    context: Tensor, targets: Tensor, neg_index: Tensor, ignore: Tensor, kappa: float
) -> Tensor:
    """``[N, 1 + K]`` cosine similarities / kappa: column 0 the positive, then distractors.

    ``context``, ``targets`` ``[N, D]``; ``neg_index [N, K]`` rows of ``targets``; ``ignore
    [N, K]`` distractors set to -inf. Computed as one ``[N, N]`` similarity matrix and a
    gather, not by materialising ``[N, K, D]`` distractor vectors: same values, and the
    backward pass is a cheap scatter instead of a ``K x D`` index-add per frame.
    """
    c = F.normalize(context, dim=-1, eps=1e-8)
    t = F.normalize(targets, dim=-1, eps=1e-8)
    positive = (c * t).sum(-1, keepdim=True)  # [N, 1]
    negatives = torch.gather(c @ t.T, 1, neg_index)  # [N, K]
    negatives = negatives.masked_fill(ignore, -math.inf)
    return torch.cat([positive, negatives], dim=1) / kappa


def contrastive_step(
    model: Encoder,
    head: ContrastiveHead,
    waveforms: Tensor,
    lengths: Tensor,
    lang_ids: Tensor | None,
    cfg: ContrastiveConfig,
    step: int,
    generator: torch.Generator | None = None,
) -> StepResult:
    """One wav2vec 2.0 loss: contrastive (K distractors) + alpha * diversity + feature L2.

    ``waveforms [B, T]``, ``lengths [B]`` samples, ``lang_ids [B]`` (None: dense backbone;
    given: each sample runs, and so updates, only its language's sub-network).
    """
    features, frame_lengths = model.extract_features(waveforms, lengths)  # [B, F, C]
    batch, frames, _ = features.shape
    if frame_lengths is None:
        frame_lengths = torch.full((batch,), frames, dtype=torch.long)
    frame_lengths = frame_lengths.to("cpu").long()
    time_mask = span_mask(frame_lengths, frames, cfg.mask_prob, cfg.mask_length, 2, generator)
    device_mask = time_mask.to(features.device)
    hidden = model.encode(features, frame_lengths.to(features.device), lang_ids, device_mask)

    tau = gumbel_temperature(cfg, step)
    targets_in = head.feature_norm(features[device_mask].float())  # [N, C]
    q = head.quantizer(targets_in, tau)
    targets = head.project_q(q.quantized)  # [N, D']
    context = head.final_proj(hidden[device_mask].float())  # [N, D']

    neg_index, usable = sample_negatives(time_mask, cfg.num_negatives, generator)
    neg_index, usable = neg_index.to(targets.device), usable.to(targets.device)
    # A distractor with the same codes as the positive cannot be told apart: ignore it.
    same = (q.indices[neg_index] == q.indices[:, None, :]).all(-1)  # [N, K]
    logits = contrastive_logits(context, targets, neg_index, same, cfg.logit_temperature)
    zero = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    per_frame = F.cross_entropy(logits, zero, reduction="none")
    n = int(usable.sum())
    contrastive = (per_frame * usable).sum() / max(n, 1)
    diversity = head.quantizer.diversity_loss(q)
    feature_pen = features.float().pow(2).mean()
    loss = contrastive + cfg.diversity_weight * diversity + cfg.feature_penalty * feature_pen
    with torch.no_grad():
        correct = ((logits.argmax(-1) == 0) & usable).sum().item()
    return StepResult(
        loss=loss,
        weight=float(max(n, 1)),
        metrics={
            "contrastive": float(contrastive.detach()),
            "diversity": float(diversity.detach()),
            "feature_penalty": float(feature_pen.detach()),
            "accuracy": correct / max(n, 1),
            "prob_perplexity": float(q.prob_perplexity.detach()),
            "code_perplexity": float(q.code_perplexity),
            "temperature": tau,
            "masked_frames": float(n),
        },
    )


# --------------------------------------------------------------------------- CTC / LID


def restrict_logits(logits: Tensor, allowed: Tensor | None, lang_ids: Tensor | None) -> Tensor:
    """Push columns outside each sample's language alphabet to a large negative value.

    ``logits [B, F, V]``; ``allowed [L, V]`` bool (blank + the language's characters).
    """
    if allowed is None or lang_ids is None:
        return logits
    keep = allowed.to(logits.device)[lang_ids]  # [B, V]
    return logits.masked_fill(~keep[:, None, :], -1e4)


def ctc_loss(
    logits: Tensor, frame_lengths: Tensor, targets: Tensor, target_lengths: Tensor
) -> Tensor:
    """Per-sample CTC loss divided by target length (``[B]``); blank is index 0.

    ``logits [B, F, V]``; ``targets`` either padded ``[B, S]`` or concatenated ``[sum S]``.
    """
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # [F, B, V]
    per_sample = F.ctc_loss(
        log_probs,
        targets.long(),
        frame_lengths.long(),
        target_lengths.long(),
        blank=0,
        reduction="none",
        zero_infinity=True,
    )
    return per_sample / target_lengths.clamp(min=1).to(per_sample.dtype)
