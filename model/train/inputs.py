"""Stage inputs from the data layer: dataset, collate function and the global batch plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from model.train.config import LoopConfig
from model.train.data.batching import BucketBatchSampler, collate
from model.train.data.dataset import AudioDataset

if TYPE_CHECKING:
    from model.train.context import Context


@dataclass
class TrainInputs:
    dataset: AudioDataset
    collate: Callable[[Any], Any]
    plan: Callable[[int], list[list[int]]]  # epoch -> global batches of dataset indices


def make_inputs(
    ctx: Context,
    split: str,
    loop: LoopConfig,
    mode: Literal["mixed", "per_language"] = "mixed",
    with_text: bool = True,
    languages: Sequence[str] | None = None,
) -> TrainInputs:
    """Length-bucketed batches of ``split`` (``loop.batch_seconds`` of padded audio, at most
    ``loop.max_batch_size`` utterances); ``lang_ids`` index the vocabulary's languages, which
    are the model's. ``with_text`` encodes transcripts (normalized to each alphabet)."""
    data = ctx.split(split)
    entries = data.entries
    if languages is not None:
        entries = [e for e in entries if e.language in set(languages)]
    vocab = ctx.vocab()

    def encode(text: str, language: str) -> list[int]:
        return vocab.encode(vocab.normalize(text, language), language)

    dataset = AudioDataset(
        entries, data.root, vocab.languages, encode if with_text else None, source=split
    )
    if len(dataset) == 0:
        raise ValueError(f"{split}: no utterances for languages {languages or vocab.languages}")
    sampler = BucketBatchSampler(
        dataset.durations,
        dataset.lang_ids,
        max_seconds=loop.batch_seconds,
        max_count=loop.max_batch_size,
        mode=mode,
        seed=loop.seed,
        sort_first_epoch=loop.sort_first_epoch,
    )
    return TrainInputs(dataset, collate, sampler.plan)
