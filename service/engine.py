"""The engine: requests in, transcripts out (vLLM-like split of engine / scheduler / worker).

- The **scheduler** is :class:`service.batcher.Batcher`: it turns work items (utterances
  or windows of long ones) of any languages into batches on the event loop.
- The **worker** (:class:`service.worker.ModelWorker`) runs each batch in a model thread
  (``LASS_MODEL_THREADS`` of them, so as many batches at once); the event loop never runs
  model code.
- The **engine** cuts long audio into pieces (at silences found by silero-vad, in the VAD
  thread, or into overlapping windows), submits them, stitches the pieces' logits
  and decodes them in a small decode thread pool, so CTC/beam decoding of one request
  overlaps the next batch's forward pass.

Loading the bundle and the warm-up batch happen in a model thread after startup; the
engine is ``ready`` only when both are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from model.config import SAMPLE_RATE
from model.decoding import (
    BeamConfig,
    BeamDecoders,
    ColumnCache,
    DecodeBudgetExceededError,
    Transcript,
    greedy_decode_batch,
)
from model.packs import LanguagePack, check_pack, read_pack
from model.vocab import ColumnVocabulary
from service.batcher import (
    Batch,
    Batcher,
    BatchPolicy,
    ShuttingDownError,
    WorkItem,
    fastest_way,
    policy_for_way,
)
from service.chunking import Chunk, blank_logits, plan_chunks, stitch
from service.faults import Faults
from service.packs import PackStore
from service.settings import Settings
from service.vad import MIN_PIECE_SAMPLES, SKIP_PAD, SileroVad, load_vad, plan_pieces
from service.worker import ModelWorker, resolve_model_threads

log = logging.getLogger("lass.engine")

MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s, OpenAI's minimum; the conv encoder needs >= 400
State = Literal["starting", "loading", "ready", "failed", "stopped"]


class MetricsSink(Protocol):
    """What the engine records (implemented by ``service.metrics.ServiceMetrics``)."""

    def observe_batch(
        self,
        languages: Sequence[str],
        lengths_s: Sequence[float],
        padded_length_s: float,
        inference_s: float,
    ) -> None: ...

    def observe_queue_wait(self, seconds: float) -> None: ...

    def observe_stage(self, stage: str, seconds: float) -> None: ...

    def set_queue_depth(self, depth: int) -> None: ...

    def observe_fault(self, kind: str) -> None: ...

    def add_skipped_silence(self, seconds: float) -> None: ...

    def set_model_info(
        self, bundle: str, languages: Sequence[str], device: str, dtype: str
    ) -> None: ...


class AudioTooShortError(ValueError):
    """Shorter than the feature encoder's receptive field can take (OpenAI: 0.1 s)."""


class NotReadyError(Exception):
    """The model is not loaded (yet, or it failed to load)."""


class UnknownLanguageError(ValueError):
    """A language that is not served (or is being removed)."""


class LastLanguageError(Exception):
    """Removing this language would leave the server with none."""


class LanguageExistsError(Exception):
    """The language of an added pack is already served."""


class ModelError(Exception):
    """The model or the decoder failed on this request (not the client's fault): only the
    requests whose work failed get it, after the engine has retried what it could."""


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure that a smaller batch may avoid."""
    return isinstance(exc, torch.OutOfMemoryError | MemoryError)


@dataclass(frozen=True)
class DecodeOptions:
    """How to turn logits into text: greedy (fast path) or beam search with hotwords."""

    beam: bool = False
    hotwords: tuple[str, ...] = ()
    beam_width: int | None = None
    use_lm: bool = True


@dataclass(frozen=True)
class ItemResult:
    """What the runner hands back for one work item."""

    output: Any  # AsrOutput for "asr" items, language probabilities [L] for "lid"
    batch_id: int
    batch_size: int
    batch_languages: tuple[str, ...]
    queue_s: float
    inference_s: float


@dataclass
class TranscriptionResult:
    """A finished request with where its time went."""

    transcript: Transcript
    language: str
    duration: float  # seconds of audio
    language_probability: float | None = None
    batches: list[ItemResult] = field(default_factory=list)
    decode_s: float = 0.0

    @property
    def queue_s(self) -> float:
        return max((b.queue_s for b in self.batches), default=0.0)

    @property
    def inference_s(self) -> float:
        return sum(b.inference_s for b in self.batches)


def batch_policy(settings: Settings) -> BatchPolicy:
    """The batch policy the settings ask for. ``LASS_BATCH_MODE=auto`` starts as mixed and
    is settled once the model is loaded (:func:`settle_batch_policy`)."""
    return BatchPolicy(
        mode="mixed" if settings.batch_mode == "auto" else settings.batch_mode,
        max_batch_size=settings.max_batch_size,
        max_batch_samples=max(1, int(settings.max_batch_audio_seconds * SAMPLE_RATE)),
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue_size=settings.max_queue_size,
        max_queue_wait_s=settings.max_queue_wait_s,
        language_affinity=settings.batch_language_affinity,
    )


def settle_batch_policy(
    policy: BatchPolicy, settings: Settings, worker: ModelWorker
) -> tuple[BatchPolicy, dict[str, Any]]:
    """The policy to serve with, and what decided it (for /health/ready and the log).

    ``LASS_BATCH_MODE=auto`` with warm-up: the same clips are timed mixed, per language
    and one by one on this machine (``ModelWorker.time_batch_modes``) and
    ``service.batcher.fastest_way`` picks (one-language batches unless mixed ones pay
    clearly, batching only where it pays); without warm-up, mixed on CUDA (one batched
    forward for any languages keeps a GPU busy) and language on the CPU (measured fastest
    there: docs/benchmarks.md). An explicit mode is kept.
    """
    choice: dict[str, Any] = {"compiled": worker.compiled is not None}
    if settings.batch_mode != "auto":
        way = "none" if policy.max_batch_size == 1 else policy.mode
        choice.update(mode=settings.batch_mode, way=way, decided_by="LASS_BATCH_MODE")
        return policy, choice
    if settings.warmup and policy.max_batch_size > 1:
        items = min(8, policy.max_batch_size)
        seconds = worker.time_batch_modes(items=items, seconds=2.0)
        way = fastest_way(seconds, items=items)
        choice["measured_s"] = {k: round(v, 4) for k, v in seconds.items()}
        choice["decided_by"] = f"warm-up: {items} clips of 2 s mixed, per language, one by one"
    else:
        if policy.max_batch_size == 1:
            way = "none"
        else:  # what the measurements say (docs/benchmarks.md)
            way = "mixed" if worker.device.type == "cuda" else "language"
        choice["decided_by"] = "device type (no warm-up)"
    settled = policy_for_way(policy, way)
    choice.update(mode="auto", way=way, max_batch_size=settled.max_batch_size)
    return settled, choice


class Engine:
    """Owns the worker, the batcher and the decoders for one bundle."""

    def __init__(self, settings: Settings, metrics: MetricsSink | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state: State = "starting"
        self.error: str | None = None
        self.worker: ModelWorker | None = None
        self._columns: ColumnCache | None = None
        self._beams: BeamDecoders | None = None
        # Model threads, each running one batch at a time, and torch threads each.
        self.model_threads, self._torch_threads = resolve_model_threads(
            settings.model_threads, settings.torch_threads, settings.device
        )
        self._model_pool = ThreadPoolExecutor(self.model_threads, thread_name_prefix="lass-model")
        self._decode_pool = ThreadPoolExecutor(
            settings.decode_threads, thread_name_prefix="lass-decode"
        )
        # silero-vad keeps state: one thread runs it, off the event loop.
        self._vad_thread = ThreadPoolExecutor(1, thread_name_prefix="lass-vad")
        self.vad: SileroVad | None = None  # streams' endpointing
        self.splitter: SileroVad | None = None  # long audio's cuts (LASS_LONG_AUDIO_SPLIT=vad)
        # Long-audio pieces, in samples.
        self._window = int(settings.chunk_seconds * SAMPLE_RATE)
        self._overlap = int(settings.chunk_overlap_seconds * SAMPLE_RATE)
        self.batcher = Batcher(
            batch_policy(settings),
            self._run_batch,
            runners=self.model_threads,
            on_batch=self._on_batch,
        )
        self._load_task: asyncio.Task[None] | None = None
        # How the batch policy was settled (settle_batch_policy), once loaded.
        self.batch_choice: dict[str, Any] | None = None
        self._settled: BatchPolicy | None = None
        # Languages added or removed while running (docs/api.md, "POST /v1/languages"):
        # the vocabulary the head's columns follow, the LMs, the added packs, the requests
        # in flight per language (a removal waits for them) and the languages being removed
        # (new requests for them are refused).
        self.vocab: ColumnVocabulary | None = None
        self.lm_paths: dict[str, Path] = {}
        self.packs: dict[str, LanguagePack] = {}
        self.store = PackStore(settings.packs_dir)
        self._active: dict[str, int] = {}
        self._removing: set[str] = set()
        self._admin_lock = asyncio.Lock()
        self.faults = Faults.parse(settings.faults)
        if self.faults.active:
            log.warning("fault injection is ON (LASS_FAULTS=%r): for tests only", settings.faults)

    # ------------------------------------------------------------ lifecycle
    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def languages(self) -> list[str]:
        """The languages served now (not those being removed)."""
        if self.worker is None:
            return []
        return [lang for lang in self.worker.languages if lang not in self._removing]

    @property
    def lid_languages(self) -> list[str]:
        """What the LID head's outputs are: the bundle's languages, in its order (added
        languages have no output; removed ones keep theirs, never chosen)."""
        if self.worker is None:
            return []
        return list(self.worker.bundle.manifest["model"]["languages"])

    @property
    def model_id(self) -> str:
        """The bundle's model name (``provenance.name``, else ``lass-<backbone>``)."""
        if self.worker is None:
            return "lass"
        manifest = self.worker.bundle.manifest
        name = manifest.get("provenance", {}).get("name")
        return str(name or f"lass-{manifest['backbone']['name']}")

    def check_bundle(self) -> bool:
        """Whether there is a bundle to load. A bundle the operator named (LASS_BUNDLE or
        --bundle) that is missing fails fast, naming the setting; a missing packaged default
        leaves the server live but never ready, saying why, so probes and operators see it."""
        path = self.settings.bundle
        if (path / "manifest.json").is_file():
            return True
        message = (
            f"no lass bundle at {path} (no manifest.json); set LASS_BUNDLE to a bundle "
            "directory written by `lass train export`"
        )
        if "bundle" in self.settings.model_fields_set:
            raise RuntimeError(message)
        self.state, self.error = "failed", message
        log.error("%s", message)
        return False

    async def start(self) -> None:
        """Start the scheduler and load the model in the background."""
        has_bundle = self.check_bundle()
        # Here, before the model and VAD threads exist (~50 ms): silero's import sets torch's
        # thread count, which threads started later inherit; load_vad puts it back.
        self.vad = load_vad()
        self.splitter = self.vad if self.settings.long_audio_split == "vad" else None
        self.batcher.start()
        if has_bundle:
            self._load_task = asyncio.get_running_loop().create_task(self._load(), name="load")

    async def wait_ready(self) -> None:
        """Wait for loading to finish (raises NotReadyError when it failed)."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)
        if not self.ready:
            raise NotReadyError(self.error or f"engine is {self.state}")

    def _load_sync(self) -> ModelWorker:
        # Before the other model threads exist: they take torch's count at their first op.
        if self.settings.torch_threads or self.model_threads > 1:
            torch.set_num_threads(self._torch_threads)
        settings = self.settings
        worker = ModelWorker.load(
            settings.bundle,
            settings.device,
            settings.dtype,
            settings.weight_cache_mb,
            compile=settings.compile,
        )
        if self.settings.warmup:
            log.info("warm-up batch took %.2f s", worker.warm_up())
        self._settled, self.batch_choice = settle_batch_policy(
            self.batcher.policy, settings, worker
        )
        self.batch_choice.update(
            model_threads=self.model_threads, torch_threads=torch.get_num_threads()
        )
        return worker

    async def _load(self) -> None:
        self.state = "loading"
        loop = asyncio.get_running_loop()
        try:
            worker = await loop.run_in_executor(self._model_pool, self._load_sync)
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("loading the bundle failed: %s", self.error)
            return
        if self._settled is not None:  # nothing is queued before ready
            self.batcher.policy = self._settled
        log.info("batch policy: %s", self.batch_choice)
        bundle = worker.bundle
        self.lm_paths = dict(bundle.lm_paths)
        vocab = ColumnVocabulary.from_vocabulary(bundle.vocab)
        try:
            vocab = await loop.run_in_executor(self._model_pool, self._restore, worker, vocab)
        except Exception as exc:  # a bug, not a bad pack (those are skipped): do not serve
            self.state, self.error = "failed", f"restoring language packs: {exc}"
            log.exception("restoring language packs failed")
            return
        self.worker = worker
        self._set_vocab(vocab)
        self.state = "ready"
        log.info("ready: %s", ", ".join(worker.languages))

    def _restore(self, worker: ModelWorker, vocab: ColumnVocabulary) -> ColumnVocabulary:
        """Re-apply what the packs folder says (model thread, before serving): the bundle
        languages removed earlier, then every saved pack. A pack that no longer fits (another
        bundle is served now) is logged and skipped; the rest is served."""
        for lang in self.store.removed():
            if lang in worker.languages and len(worker.languages) > 1:
                vocab = worker.remove_language(lang, vocab)
                log.info("language %s stays removed (%s)", lang, self.store.root)
        for folder in self.store.saved():
            try:
                pack = read_pack(folder)
                check_pack(pack, worker.bundle.manifest, worker.model)
                if pack.language in worker.languages:
                    raise LanguageExistsError(f"{pack.language!r} is served by the bundle")
                vocab = worker.add_language(pack, vocab)
            except Exception as exc:
                log.error("language pack %s not loaded: %s", folder, exc)
                continue
            self.packs[pack.language] = pack
            if pack.lm_path is not None:
                self.lm_paths[pack.language] = pack.lm_path
            log.info("language %s added from %s", pack.language, folder)
        return vocab

    def _set_vocab(self, vocab: ColumnVocabulary) -> None:
        """Decode with ``vocab`` from now on. New decoder objects, not changed ones: a decode
        already running keeps the old ones, which still hold its language."""
        self.vocab = vocab
        assert self.worker is not None
        frame_seconds = self.worker.model.config.frame_stride / SAMPLE_RATE
        self._columns = ColumnCache(vocab, frame_seconds)
        # The old beam decoders are dropped, not closed (a decode may be using them); their
        # idle child processes end when they are collected.
        self._beams = BeamDecoders(
            vocab,
            dict(self.lm_paths),
            BeamConfig(
                beam_width=self.settings.beam_width, time_budget_s=self.settings.decode_budget_s
            ),
            frame_seconds,
        )
        worker = self.worker
        if self.metrics is not None and worker is not None:
            self.metrics.set_model_info(
                str(worker.bundle.path),
                self.languages,
                str(worker.device),
                str(worker.dtype).removeprefix("torch."),
            )

    # ------------------------------------------------------------ languages
    async def add_language(self, pack: LanguagePack) -> None:
        """Serve ``pack``'s language from now on. The change happens with no batch running
        (``Batcher.exclusive``): a batch runs wholly before or wholly after it. Raises
        PackMismatch/PackError (it does not fit), LanguageExistsError, NotReadyError."""
        worker = self._require_ready()
        async with self._admin_lock:
            check_pack(pack, worker.bundle.manifest, worker.model)
            if pack.language in worker.languages:
                raise LanguageExistsError(
                    f"language {pack.language!r} is already served; DELETE it first"
                )
            assert self.vocab is not None
            loop = asyncio.get_running_loop()
            async with self.batcher.exclusive():
                vocab = await loop.run_in_executor(
                    self._model_pool, worker.add_language, pack, self.vocab
                )
            self.packs[pack.language] = pack
            if pack.lm_path is not None:
                self.lm_paths[pack.language] = pack.lm_path
            self._set_vocab(vocab)
        log.info("language %s added (%s)", pack.language, pack.path)

    async def remove_language(self, language: str, timeout_s: float | None = None) -> None:
        """Stop serving ``language``: new requests for it are refused at once, the ones in
        flight finish (at most ``timeout_s``, default the request timeout; TimeoutError and
        nothing removed past it), then it is removed with no batch running.
        Raises UnknownLanguageError, LastLanguageError."""
        worker = self._require_ready()
        async with self._admin_lock:
            if language not in self.languages:
                raise UnknownLanguageError(f"language {language!r} is not served")
            if len(self.languages) <= 1:
                raise LastLanguageError(
                    f"{language!r} is the last language served; add another one first"
                )
            self._removing.add(language)
            try:
                deadline = time.monotonic() + (timeout_s or self.settings.request_timeout_s)
                while self._active.get(language, 0) > 0:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{self._active[language]} requests in {language!r} still running"
                        )
                    await asyncio.sleep(0.02)
                assert self.vocab is not None
                loop = asyncio.get_running_loop()
                async with self.batcher.exclusive():
                    vocab = await loop.run_in_executor(
                        self._model_pool, worker.remove_language, language, self.vocab
                    )
                self.packs.pop(language, None)
                self.lm_paths.pop(language, None)
            finally:
                self._removing.discard(language)
            self._set_vocab(vocab)
        log.info("language %s removed", language)

    @contextlib.asynccontextmanager
    async def _serving(self, language: str) -> AsyncIterator[int]:
        """Count a request in ``language`` as in flight (a removal waits for it); yields
        the width of its logits (its columns' end, fixed while it is served)."""
        if language not in self.languages or self.vocab is None:
            raise UnknownLanguageError(f"unknown language {language!r}")
        width = self.vocab.width(language)
        self._active[language] = self._active.get(language, 0) + 1
        try:
            yield width
        finally:
            self._active[language] -= 1
            if not self._active[language]:
                del self._active[language]

    async def stop(self) -> None:
        """Finish queued work, then release the threads."""
        await self.batcher.stop(drain=True)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        self._model_pool.shutdown(wait=True, cancel_futures=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._vad_thread.shutdown(wait=True, cancel_futures=True)
        if self._beams is not None:
            self._beams.close()
        self.store.close()
        self.state = "stopped"

    # ------------------------------------------------------------ batches
    def _on_batch(self, batch: Batch) -> None:
        log.debug(
            "batch %d: %s x%d languages=%s padding=%.2f",
            batch.id,
            batch.kind,
            batch.size,
            ",".join(batch.groups),
            batch.padding_fraction,
        )
        if self.metrics is not None:
            for item in batch.items:
                self.metrics.observe_queue_wait(batch.created_at - item.enqueued_at)
            self.metrics.set_queue_depth(self.batcher.depth)

    async def _run_batch(self, batch: Batch) -> None:
        """Runner for the batcher: forward passes in a model thread, then settle futures."""
        worker = self.worker
        if worker is None:
            raise NotReadyError("the model is not loaded")
        await self._run_items(worker, batch, batch.items)

    async def _run_items(self, worker: ModelWorker, batch: Batch, items: list[WorkItem]) -> None:
        """Run ``items`` (all of ``batch`` or a part) and settle their futures. A failure
        never reaches batch-mates that would succeed alone: out of memory splits the items
        in halves, any other error re-runs them one by one; an item that fails alone gets
        :class:`ModelError`."""
        items = [item for item in items if not item.future.done()]  # client gone: skip
        if not items:
            return
        start = time.perf_counter()
        try:
            outputs = await self._forward(worker, batch.kind, items)
        except Exception as exc:
            if len(items) > 1:
                oom = is_out_of_memory(exc)
                self._fault("oom_split" if oom else "batch_retry")
                log.warning(
                    "batch %d: %s on %d items (%s); %s",
                    batch.id,
                    type(exc).__name__,
                    len(items),
                    exc,
                    "splitting it in halves" if oom else "retrying them one by one",
                )
                if oom:
                    await self._release_memory(worker)
                    half = len(items) // 2
                    parts = [items[:half], items[half:]]
                else:
                    parts = [[item] for item in items]
                for part in parts:
                    await self._run_items(worker, batch, part)
                return
            self._fault("forward_error")
            log.error("batch %d: item of request %s failed: %r", batch.id, items[0].flow, exc)
            if not items[0].future.done():
                items[0].future.set_exception(ModelError(f"the model failed on this audio: {exc}"))
            return
        inference_s = time.perf_counter() - start
        if self.metrics is not None and batch.kind == "asr":
            self.metrics.observe_batch(
                [item.group for item in items],
                [item.num_samples / SAMPLE_RATE for item in items],
                max(item.num_samples for item in items) / SAMPLE_RATE,
                inference_s,
            )
        languages = tuple(sorted({item.group for item in items}))
        for item, output in zip(items, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(
                    ItemResult(
                        output,
                        batch.id,
                        len(items),
                        languages,
                        batch.created_at - item.enqueued_at,
                        inference_s,
                    )
                )

    def _fault(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_fault(kind)

    async def _release_memory(self, worker: ModelWorker) -> None:
        if worker.device.type == "cuda":
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._model_pool, torch.cuda.empty_cache)

    async def _forward(
        self, worker: ModelWorker, kind: str, items: Sequence[WorkItem]
    ) -> Sequence[Any]:
        loop = asyncio.get_running_loop()
        waves = [item.payload for item in items]
        if self.faults.active:
            self.faults.before_forward([item.group for item in items])
        if kind == "lid":
            return await loop.run_in_executor(self._model_pool, worker.run_lid, waves)
        langs = [item.group for item in items]
        return await loop.run_in_executor(self._model_pool, worker.run_asr, waves, langs)

    async def _submit(self, items: list[WorkItem]) -> list[ItemResult]:
        """One request's items, queued all or none; their results in order."""
        futures = self.batcher.submit_all(items)
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:  # client gone or a sibling failed: drop the rest
                future.cancel()

    # ------------------------------------------------------------ requests
    def _deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    async def identify(self, samples: np.ndarray, request_id: str = "") -> tuple[str, float]:
        """(language, probability) from the LID head on the first window of ``samples``."""
        worker = self._require_ready()
        if not worker.has_lid:
            raise RuntimeError("the model has no language identification head")
        head = samples[: self._window]
        item = WorkItem(head, len(head), "", "lid", self._deadline(), flow=request_id)
        (result,) = await self._submit([item])
        probs = result.output
        # The head's outputs are the bundle's languages; one removed meanwhile is never
        # chosen (with none removed this is the plain argmax).
        served = set(self.languages)
        candidates = [i for i, lang in enumerate(self.lid_languages) if lang in served]
        if not candidates:
            raise RuntimeError("no language the LID head knows is served: name the language")
        best = max(candidates, key=lambda i: float(probs[i]))
        return self.lid_languages[best], float(probs[best])

    def _require_ready(self) -> ModelWorker:
        if not self.batcher.accepting:
            raise ShuttingDownError("the server is shutting down")
        if not self.ready or self.worker is None:
            raise NotReadyError(self.error or "the model is still loading")
        return self.worker

    async def transcribe(
        self,
        samples: np.ndarray,
        language: str | None,
        options: DecodeOptions = DecodeOptions(),
        request_id: str = "",
    ) -> TranscriptionResult:
        """Transcribe 16 kHz float32 ``samples [T]``; ``language`` None -> identify it first.

        Raises QueueFullError, QueueTimeoutError, DeadlineExceededError, ShuttingDownError,
        NotReadyError, UnknownLanguageError, ModelError (service.engine_errors maps each).
        """
        self._require_ready()
        if len(samples) < MIN_SAMPLES:
            raise AudioTooShortError(
                f"the audio is {len(samples) / SAMPLE_RATE:.3f} s long; the minimum is "
                f"{MIN_SAMPLES / SAMPLE_RATE} s"
            )
        probability: float | None = None
        if language is None:
            language, probability = await self.identify(samples, request_id)
        async with self._serving(language) as width:
            chunks = await self._plan(samples)
            deadline = self._deadline()
            spoken = [c for c in chunks if not c.silent]
            items = [
                WorkItem(
                    samples[c.start : c.end],
                    c.end - c.start,
                    language,
                    "asr",
                    deadline,
                    flow=request_id,
                )
                for c in spoken
            ]
            results = await self._submit(items) if items else []
            # Each piece's logits up to the language's columns: pieces that ran before and
            # after another language was added have different head widths.
            ran = iter(r.output.logits[:, :width] for r in results)
            logits = stitch(
                chunks,
                [
                    blank_logits(self._frames(c.end - c.start), width) if c.silent else next(ran)
                    for c in chunks
                ],
            )
            if self.metrics is not None and len(spoken) < len(chunks):
                skipped = sum(c.end - c.start for c in chunks if c.silent) / SAMPLE_RATE
                self.metrics.add_skipped_silence(skipped)
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            try:
                transcript = await loop.run_in_executor(
                    self._decode_pool, self._decode, logits, language, options
                )
            except DecodeBudgetExceededError:
                raise
            except Exception as exc:
                self._fault("decode_error")
                log.error("decoding request %s (%s) failed: %r", request_id, language, exc)
                raise ModelError(f"decoding failed: {exc}") from exc
            decode_s = time.perf_counter() - start
        if self.metrics is not None:
            beam = options.beam or bool(options.hotwords)
            self.metrics.observe_stage("beam_decode" if beam else "ctc_decode", decode_s)
        return TranscriptionResult(
            transcript,
            language,
            len(samples) / SAMPLE_RATE,
            probability,
            results,
            decode_s,
        )

    async def _plan(self, samples: np.ndarray) -> list[Chunk]:
        """Pieces of ``samples`` of at most ``chunk_seconds`` (one piece when it fits)."""
        if len(samples) <= self._window or self.splitter is None:
            return self.plan_windows(len(samples))
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        chunks = await loop.run_in_executor(self._vad_thread, self.plan_at_silences, samples)
        if self.metrics is not None:
            self.metrics.observe_stage("vad", time.perf_counter() - start)
        return chunks

    def plan_windows(self, num_samples: int) -> list[Chunk]:
        """Overlapping windows of ``chunk_seconds`` (overlap ``chunk_overlap_seconds``)."""
        return plan_chunks(num_samples, self._window, self._overlap, self.frame_samples)

    def plan_at_silences(self, samples: np.ndarray) -> list[Chunk]:
        """Pieces cut at silences (runs silero-vad: call it in the VAD thread); those
        inside silences of ``skip_silence_s`` or more are marked silent (not run)."""
        assert self.splitter is not None
        silences = self.splitter.silences(samples)
        skip = 0
        if self.settings.skip_silence_s > 0:
            # Long enough to keep SKIP_PAD of context on both sides of what is skipped.
            skip = max(int(self.settings.skip_silence_s * SAMPLE_RATE), 2 * SKIP_PAD)
            skip += MIN_PIECE_SAMPLES
        return plan_pieces(
            len(samples), silences, self._window, self._overlap, self.frame_samples, skip
        )

    def _frames(self, num_samples: int) -> int:
        """Model frames of ``num_samples`` samples (the conv encoder's arithmetic)."""
        worker = self._require_ready()
        return int(worker.model.frame_lengths(torch.tensor([num_samples]))[0])

    # ------------------------------------------------------------ streams
    @property
    def frame_samples(self) -> int:
        """Samples per model frame, from the served bundle's conv strides."""
        worker = self._require_ready()
        return worker.model.config.frame_stride

    async def stream_logits(
        self, samples: np.ndarray, language: str, request_id: str = ""
    ) -> np.ndarray:
        """Logits ``[F, V]`` of one stream window (16 kHz ``samples [T]``), through the same
        batcher as file requests, so windows of many streams share mixed-language batches.
        Its deadline is short: a partial that cannot run soon is worth nothing."""
        self._require_ready()
        async with self._serving(language) as width:
            deadline = time.monotonic() + self.settings.stream_partial_timeout_s
            item = WorkItem(samples, len(samples), language, "asr", deadline, flow=request_id)
            (result,) = await self._submit([item])
        # Up to the language's columns, so a stream's windows concatenate across an add.
        logits: np.ndarray = result.output.logits[:, :width]
        return logits

    async def greedy(self, logits: np.ndarray, language: str) -> Transcript:
        """Greedy CTC decoding of ``logits [F, V]`` in the decode pool."""
        loop = asyncio.get_running_loop()
        options = DecodeOptions()
        return await loop.run_in_executor(
            self._decode_pool, self._decode, logits, language, options
        )

    async def speech_probabilities(self, context: np.ndarray, block: np.ndarray) -> np.ndarray:
        """silero-vad's speech probability per 512-sample frame of ``block`` (VAD thread)."""
        if self.vad is None:
            raise NotReadyError("silero-vad could not be loaded: streaming is unavailable")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._vad_thread, self.vad.block_probabilities, context, block
        )

    def _decode(self, logits: np.ndarray, language: str, options: DecodeOptions) -> Transcript:
        """CTC-decode one utterance's stitched ``logits [F, V]`` (runs in the decode pool)."""
        assert self._columns is not None and self._beams is not None
        if self.faults.active:
            self.faults.before_decode(language)
        batch = torch.from_numpy(np.ascontiguousarray(logits))[None]
        frames = [logits.shape[0]]
        if options.beam or options.hotwords:
            hotwords = [list(options.hotwords)] if options.hotwords else None
            return self._beams.decode_batch(
                batch,
                frames,
                [language],
                hotwords=hotwords,
                use_lm=options.use_lm,
                beam_width=options.beam_width,
            )[0]
        return greedy_decode_batch(batch, frames, [language], self._columns)[0]
