"""Greedy CTC decoding restricted to one language's columns of the shared head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BLANK_ID = 0


def greedy_decode(
    logits: Tensor, length: int, allowed: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Best path over ``allowed`` columns of one sample's logits ``[F, V]`` (first ``length``).

    Returns the token ids after collapsing repeats and removing blanks, and for each emitted
    token the frame index where it starts. ``allowed`` must contain the blank (0).
    """
    if BLANK_ID not in allowed:
        raise ValueError("allowed columns must include the CTC blank (0)")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [frames, vocab], got {tuple(logits.shape)}")
    columns = torch.as_tensor(list(allowed), dtype=torch.long, device=logits.device)
    best = columns[logits[:length].index_select(1, columns).argmax(dim=1)].tolist()
    tokens: list[int] = []
    starts: list[int] = []
    previous = BLANK_ID
    for frame, token in enumerate(best):
        if token != previous and token != BLANK_ID:
            tokens.append(token)
            starts.append(frame)
        previous = token
    return tokens, starts


def language_logit_mask(
    vocab_size: int, allowed: Sequence[int], device: torch.device | str = "cpu"
) -> Tensor:
    """Additive mask ``[V]``: 0 on ``allowed`` columns, -inf elsewhere (for beam search)."""
    mask = torch.full((vocab_size,), float("-inf"), device=device)
    mask[torch.as_tensor(list(allowed), dtype=torch.long, device=device)] = 0.0
    return mask
