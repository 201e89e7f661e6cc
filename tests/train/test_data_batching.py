"""AudioDataset, collate and BucketBatchSampler on real espeak-ng speech."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from model.train.data.audio_io import read_audio, write_audio
from model.train.data.batching import BucketBatchSampler, collate
from model.train.data.dataset import AudioDataset
from model.train.data.manifest import ManifestEntry, write_manifest
from model.train.data.validate import DataError, ValidationConfig
from model.vocab import Vocabulary
from tests.conftest import SENTENCES, Utterance


def _entries(speech: dict[str, list[Utterance]]) -> list[ManifestEntry]:
    return [
        ManifestEntry(str(u.path), u.text, u.language, u.duration)
        for lang in sorted(speech)
        for u in speech[lang]
    ]


def test_dataset_with_vocabulary(speech: dict[str, list[Utterance]], tmp_path: Path) -> None:
    vocab = Vocabulary.build(SENTENCES)
    langs = sorted(SENTENCES)
    entries = _entries(speech)
    extra = [
        ManifestEntry(str(speech["en"][0].path), "naïve café", "en", 1.0),  # not English chars
        ManifestEntry(str(speech["en"][0].path), "hello", "fr", 1.0),  # unknown language
    ]
    ds = AudioDataset(entries + extra, tmp_path, langs, vocab, source="m.jsonl")
    assert len(ds) == len(entries)
    assert ds.report.counts() == {"bad_characters": 1, "unknown_language": 1}
    assert "m.jsonl:9" in ds.report.skipped["bad_characters"][0]
    sample = ds[0]
    assert sample.waveform.dtype == torch.float32 and sample.waveform.ndim == 1
    assert sample.waveform.numel() == pytest.approx(entries[0].duration * 16000, abs=1)
    assert vocab.decode(sample.targets.tolist()) == entries[0].text
    assert langs[sample.lang_id] == entries[0].language
    with pytest.raises(DataError, match=r"m.jsonl:9 .*'ï'"):
        AudioDataset(entries + extra, tmp_path, langs, vocab, on_error="raise", source="m.jsonl")


def test_plain_encoder_and_unlabelled(speech: dict[str, list[Utterance]], tmp_path: Path) -> None:
    entries = _entries(speech)
    ds = AudioDataset(entries, tmp_path, sorted(speech), lambda text, lang: [len(text)])
    assert ds[1].targets.tolist() == [len(entries[1].text)]
    unlabelled = AudioDataset(entries, tmp_path, sorted(speech))
    assert unlabelled[1].targets.numel() == 0


def test_resampling_and_downmix(speech: dict[str, list[Utterance]], tmp_path: Path) -> None:
    samples, rate = read_audio(speech["de"][0].path)
    stereo = np.stack([samples, samples], axis=1)
    sf.write(str(tmp_path / "stereo44k.wav"), stereo, rate)  # stereo, 16 kHz
    write_audio(tmp_path / "8k.wav", samples[::2].copy(), 8000)
    write_audio(tmp_path / "clip.mp3", samples, rate)  # PyAV path for compressed audio
    text = speech["de"][0].text
    d = len(samples) / rate
    entries = [ManifestEntry(n, text, "de", d) for n in ("stereo44k.wav", "8k.wav", "clip.mp3")]
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, entries)
    ds = AudioDataset.from_manifest(manifest, ["de"], Vocabulary.build(SENTENCES))
    assert len(ds) == 3 and ds.report.resampled == 1
    for i in range(3):
        wave = ds[i].waveform
        assert abs(wave.numel() - len(samples)) < 0.06 * 16000
    assert torch.allclose(ds[0].waveform, torch.from_numpy(samples), atol=1e-4)
    # refusing other rates is a validation choice
    strict = AudioDataset.from_manifest(manifest, ["de"], None, ValidationConfig(resample=False))
    assert len(strict) == 2 and strict.report.counts() == {"sample_rate": 1}


def test_collate_pads(speech: dict[str, list[Utterance]], tmp_path: Path) -> None:
    vocab = Vocabulary.build(SENTENCES)
    ds = AudioDataset(_entries(speech), tmp_path, sorted(speech), vocab)
    samples = [ds[i] for i in (0, 3, 5)]
    batch = collate(samples)
    n = [s.waveform.numel() for s in samples]
    u = [s.targets.numel() for s in samples]
    assert batch.waveforms.shape == (3, max(n)) and batch.targets.shape == (3, max(u))
    assert batch.lengths.tolist() == n and batch.target_lengths.tolist() == u
    for i, s in enumerate(samples):
        assert torch.equal(batch.waveforms[i, : n[i]], s.waveform)
        assert not batch.waveforms[i, n[i] :].any() and not batch.targets[i, u[i] :].any()
    assert torch.equal(batch.concatenated_targets(), torch.cat([s.targets for s in samples]))
    assert batch.lang_ids.tolist() == [s.lang_id for s in samples]
    assert batch.texts == [s.text for s in samples] and batch.indices == [0, 3, 5]
    assert batch.to("cpu").waveforms.data_ptr() == batch.waveforms.data_ptr()


def _durations(n: int, seed: int = 0) -> tuple[list[float], list[int]]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 8.0, n).round(3).tolist(), rng.integers(0, 4, n).tolist()


@pytest.mark.parametrize("mode", ["mixed", "per_language"])
def test_sampler_budget_coverage_determinism(mode: Literal["mixed", "per_language"]) -> None:
    durations, langs = _durations(500)
    sampler = BucketBatchSampler(durations, langs, max_seconds=40.0, max_count=12, mode=mode,
                                 seed=3)  # fmt: skip
    plan = sampler.plan(0)
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(500))  # every utterance once per epoch
    for b in plan:
        assert len(b) <= 12 and max(durations[i] for i in b) * len(b) <= 40.0
    # length bucketing: padding waste is small compared to random batches
    waste = sum(max(durations[i] for i in b) * len(b) - sum(durations[i] for i in b) for b in plan)
    assert waste < 0.1 * sum(durations)
    assert plan == BucketBatchSampler(durations, langs, 40.0, 12, mode, seed=3).plan(0)
    assert plan != sampler.plan(1) and plan != BucketBatchSampler(
        durations,
        langs,
        40.0,
        12,
        mode,
        seed=4,
    ).plan(0)
    mixed = [len({langs[i] for i in b}) for b in plan]
    if mode == "per_language":
        assert max(mixed) == 1
    else:
        assert max(mixed) > 1
    sampler.set_epoch(1)
    assert list(sampler) == sampler.plan(1) and len(sampler) == len(sampler.plan(1))


def test_sampler_ddp_shards() -> None:
    durations, langs = _durations(101, seed=1)
    world = 3
    plans = [
        BucketBatchSampler(durations, langs, max_seconds=30.0, seed=5, rank=r, world_size=world)
        for r in range(world)
    ]
    global_plan = BucketBatchSampler(durations, langs, max_seconds=30.0, seed=5, world_size=world)
    shards = [list(p) for p in plans]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    for step, batch in enumerate(global_plan.plan(0)):
        parts = [shards[r][step] for r in range(world)]
        assert all(parts) and sorted(i for p in parts for i in p) == sorted(batch)
        # longest first, dealt round robin: rank shards differ by at most one item
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # a single 1-rank plan with the same seed gives the same global batches when no batch
    # is too small for the ranks
    single = BucketBatchSampler(durations, langs, max_seconds=30.0, seed=5)
    if all(len(b) >= world for b in single.plan(0)):
        assert single.plan(0) == global_plan.plan(0)
    with pytest.raises(ValueError):
        BucketBatchSampler(durations, max_count=2, world_size=3)
    with pytest.raises(ValueError):
        BucketBatchSampler(durations, max_seconds=None, max_count=None)


def test_loader_end_to_end(speech: dict[str, list[Utterance]], tmp_path: Path) -> None:
    vocab = Vocabulary.build(SENTENCES)
    ds = AudioDataset(_entries(speech), tmp_path, sorted(speech), vocab)
    sampler = BucketBatchSampler(ds.durations, ds.lang_ids, max_count=3, mode="per_language")
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen: Counter[int] = Counter()
    for batch in loader:
        assert len(set(batch.lang_ids.tolist())) == 1
        seen.update(batch.indices)
        assert batch.waveforms.shape[1] == int(batch.lengths.max())
    assert seen == Counter(range(len(ds)))


def test_sampler_sort_first_epoch_plays_shortest_batches_first() -> None:
    gen = np.random.default_rng(5)
    durations = gen.uniform(0.5, 8.0, 200)
    sampler = BucketBatchSampler(durations, max_seconds=20.0, max_count=8, sort_first_epoch=True)
    first = [max(durations[i] for i in b) for b in sampler.plan(0)]
    assert first == sorted(first), "epoch 0: shortest batches first"
    second = [max(durations[i] for i in b) for b in sampler.plan(1)]
    assert second != sorted(second), "later epochs are shuffled"
    plain = BucketBatchSampler(durations, max_seconds=20.0, max_count=8)
    covered = sorted(i for b in sampler.plan(0) for i in b)
    assert covered == sorted(i for b in plain.plan(0) for i in b) == list(range(200))
