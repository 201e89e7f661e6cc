"""The model worker: the bundle on its device, run one padded batch at a time.

Every method here is called from a model thread (``Engine``), never from the event loop;
forwards may run in several model threads at once (each routes its own batch:
``model.masked_linear.MaskRoute``), while a language is added or removed in one of them
with no batch running (``Batcher.exclusive``). Inputs and outputs are numpy arrays on
the CPU so the rest of the service stays free of device details.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from model.bundle import Bundle, read_bundle
from model.compiled import CompiledFeatures, compile_supported
from model.packs import LanguagePack, install_pack, uninstall_language
from model.vocab import ColumnVocabulary

log = logging.getLogger("lass.worker")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("LASS_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 (or fp16) on CUDA, fp32 on the CPU (CPU half matmuls are slow)."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_compile(
    name: Literal["auto", "on", "off"], device: torch.device, extractor_mode: str = "layer_norm"
) -> bool:
    """Whether to compile the conv feature encoder. ``auto``: on the CPU, with a C++
    compiler, for the layer-norm extractor (``tiny``, XLS-R: 1.4x less CPU per forward);
    not for the group-norm one (``base``: its first layer runs eagerly over the whole
    clip and the compiled path cost 1.25x more, docs/benchmarks.md). ``on`` insists (an
    error without a compiler)."""
    if name == "off":
        return False
    if name == "on":
        if not compile_supported():
            raise RuntimeError("LASS_COMPILE=on but no C++ compiler (c++, g++, clang++) is found")
        return True
    return device.type == "cpu" and extractor_mode == "layer_norm" and compile_supported()


def resolve_model_threads(
    setting: int | None, torch_threads: int | None, device: str
) -> tuple[int, int]:
    """(model threads, torch intra-op threads of each) for ``LASS_MODEL_THREADS``,
    ``LASS_TORCH_THREADS`` (the threads the model may use in all; None: torch's default,
    one per core) and the device setting, before anything is loaded. Model threads
    ``None`` (auto): one on CUDA (one stream keeps a GPU busy); on the CPU two when the
    model may use at least two threads, each then with half of them (measured:
    docs/benchmarks.md, "Model threads")."""
    budget = torch_threads or torch.get_num_threads()
    if setting is None:
        on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        setting = 1 if on_gpu or budget < 2 else 2
    return setting, max(1, budget // setting)


@dataclass(frozen=True)
class AsrOutput:
    """One sample's CTC logits: ``logits [F, V]`` float32 over the whole vocabulary."""

    logits: np.ndarray


class ModelWorker:
    """Owns a loaded bundle: every language mask on the device with the backbone."""

    def __init__(
        self, bundle: Bundle, device: torch.device, dtype: torch.dtype, compiled: bool = False
    ) -> None:
        self.bundle = bundle
        self.device = device
        self.dtype = dtype
        self.model = bundle.model.eval()
        self.languages: list[str] = list(self.model.languages)
        self._lang_index = {lang: i for i, lang in enumerate(self.languages)}
        # The compiled conv feature encoder (model/compiled.py), or None: all eager.
        self.compiled: CompiledFeatures | None = CompiledFeatures(self.model) if compiled else None

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "auto",
        dtype: str = "auto",
        weight_cache_mb: int = 0,
        compile: Literal["auto", "on", "off"] = "off",
    ) -> ModelWorker:
        """Read and verify the bundle at ``path`` onto the resolved device and dtype, with a
        cache of materialized masked weights of ``weight_cache_mb`` MiB (0: none), and the
        compiled forward when ``compile`` resolves to on (:func:`resolve_compile`; its
        graphs are compiled by :meth:`warm_up`)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        start = time.perf_counter()
        bundle = read_bundle(path, device=dev, dtype=dt)
        bundle.model.set_weight_cache(weight_cache_mb * 2**20 if weight_cache_mb else None)
        compiled = resolve_compile(compile, dev, bundle.model.config.extractor_mode)
        log.info(
            "loaded bundle %s (%d languages) on %s/%s in %.1f s; forward %s",
            path,
            len(bundle.model.languages),
            dev,
            str(dt).removeprefix("torch."),
            time.perf_counter() - start,
            "compiled" if compiled else "eager",
        )
        return cls(bundle, dev, dt, compiled=compiled)

    def add_language(self, pack: LanguagePack, vocab: ColumnVocabulary) -> ColumnVocabulary:
        """Serve one more language from a verified pack (``model.packs.install_pack``); call
        it in the model thread, so it happens between batches. Returns the new vocabulary."""
        new_vocab = install_pack(self.model, vocab, pack)
        self._languages_changed()
        return new_vocab

    def remove_language(self, language: str, vocab: ColumnVocabulary) -> ColumnVocabulary:
        """Stop serving ``language`` (model thread, between batches); returns the new
        vocabulary (``model.packs.uninstall_language``)."""
        new_vocab = uninstall_language(self.model, vocab, language)
        self._languages_changed()
        return new_vocab

    def _languages_changed(self) -> None:
        # New objects, not in-place edits: the event loop may be reading the old ones.
        self.languages = list(self.model.languages)
        self._lang_index = {lang: i for i, lang in enumerate(self.languages)}

    @property
    def has_lid(self) -> bool:
        return self.model.lid_head is not None

    def _pad(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples -> zero-padded ``waveforms [B, T]`` and ``lengths [B]`` on the device."""
        lengths = [len(w) for w in waves]
        batch = np.zeros((len(waves), max(lengths)), dtype=np.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        tensor = torch.from_numpy(batch).to(self.device, self.dtype, non_blocking=True)
        return tensor, torch.tensor(lengths, device=self.device)

    @torch.inference_mode()
    def run_asr(self, waves: Sequence[np.ndarray], languages: Sequence[str]) -> list[AsrOutput]:
        """One mixed-language batch: samples ``[T_i]`` and a language each -> logits each."""
        waveforms, lengths = self._pad(waves)
        lang_ids = torch.tensor([self._lang_index[lang] for lang in languages], device=self.device)
        if self.compiled is not None:
            out = self.compiled.forward(waveforms, lengths, lang_ids)
        else:
            out = self.model(waveforms, lengths, lang_ids)
        logits = out.logits.float().cpu().numpy()  # [B, F, V]
        frames = out.lengths.cpu().tolist()
        return [AsrOutput(logits[i, : frames[i]]) for i in range(len(waves))]

    @torch.inference_mode()
    def run_lid(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Language probabilities ``[L]`` (over :attr:`languages`) per sample."""
        waveforms, lengths = self._pad(waves)
        if self.compiled is not None:
            logits = self.compiled.identify_language(waveforms, lengths)
        else:
            logits = self.model.identify_language(waveforms, lengths)
        return list(torch.softmax(logits.float(), dim=-1).cpu().numpy())

    def warm_up(self, seconds: float = 1.0) -> float:
        """Compile the conv feature encoder (when on), then run one short clip per
        language as one mixed batch (first-call allocations, kernel selection, and the
        weight cache filled for every language).

        Returns the time it took in seconds.
        """
        start = time.perf_counter()
        if self.compiled is not None:
            with torch.inference_mode():
                self.compiled.warm_up()
        rng = np.random.default_rng(0)
        wave = (0.01 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
        for i in range(0, len(self.languages), 16):
            langs = self.languages[i : i + 16]
            self.run_asr([wave] * len(langs), langs)
        waves = [wave]
        if self.has_lid:
            self.run_lid(waves[:1])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def time_batch_modes(
        self, items: int = 8, seconds: float = 4.0, repeats: int = 2
    ) -> dict[str, float]:
        """Seconds to run the same ``items`` clips of ``seconds`` (over up to 4 languages,
        as many clips each) three ways: ``mixed`` (one batch), ``language`` (one batch per
        language), ``none`` (one clip at a time). The ways take turns ``repeats`` times;
        each figure is its fastest turn (the least disturbed by other work)."""
        rng = np.random.default_rng(1)
        langs = self.languages[: max(1, min(4, items // 2))]
        clip = int(seconds * 16_000)
        waves = [(0.05 * rng.standard_normal(clip)).astype(np.float32) for _ in range(items)]
        labels = [langs[i % len(langs)] for i in range(items)]
        by_lang = {lang: [i for i in range(items) if labels[i] == lang] for lang in langs}
        ways = {
            "mixed": [list(range(items))],
            "language": list(by_lang.values()),
            "none": [[i] for i in range(items)],
        }
        best = {way: float("inf") for way in ways}
        for _ in range(repeats):
            for way, batches in ways.items():
                start = time.perf_counter()
                for batch in batches:
                    self.run_asr([waves[i] for i in batch], [labels[i] for i in batch])
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                best[way] = min(best[way], time.perf_counter() - start)
        return best
