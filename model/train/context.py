"""What every stage needs: the config, the work folder, the device, data and the model so far.

The work folder holds one sub-folder per stage (``pretrain/``, ``prune/``, ``adapt/``,
``finetune/``, ``evaluate/``, ``lm/``, ``bundle/``) plus ``vocab.json``. A stage reads
the newest model written by an earlier stage, so every stage also runs alone
(``lass train finetune CONFIG``) once its inputs exist.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
from rich.console import Console

from model.atomic import atomic_write_text
from model.masks import LanguageMasks
from model.train.artifacts import Artifact, load_artifact, load_masks, new_model
from model.train.config import PipelineConfig
from model.train.data.manifest import ManifestEntry, manifest_root, read_manifest
from model.train.data.validate import DataReport, ValidationConfig, validate_entries
from model.train.distributed import DistInfo, device_for
from model.vocab import Vocabulary

# Stages that write a model.pt, in pipeline order.
MODEL_STAGES = ("pretrain", "adapt", "finetune")
MODEL_FILE = "model.pt"
LOCK_FILE = ".lock"  # held by the process training in a work folder; holds its pid


class StageError(RuntimeError):
    """A stage cannot run (missing input, unsupported combination); the message says why."""


_HELD: dict[Path, IO[str]] = {}  # the work folders this process holds, and their lock files


def lock_work_dir(work_dir: Path) -> None:
    """Hold ``<work_dir>/.lock`` until this process ends (again for a folder it holds: a
    no-op). Two trainers in one folder would resume from the same checkpoints and
    overwrite each other's; the second is refused, naming the first's pid. The lock is
    the kernel's (``flock``): a killed process lets go of it, so nothing stale remains."""
    key = work_dir.resolve()
    if key in _HELD:
        return
    handle = open(key / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held for good)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StageError(
            f"another process (pid {owner}) is training in {work_dir}; wait for it to end "
            "or stop it: two trainers in one work folder overwrite each other's checkpoints"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle


@dataclass
class Split:
    entries: list[ManifestEntry]
    root: Path  # folder relative audio paths resolve against
    report: DataReport


@dataclass
class Context:
    cfg: PipelineConfig
    work_dir: Path
    dist: DistInfo = field(default_factory=DistInfo)
    quiet: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True))
    _vocab: Vocabulary | None = None
    _splits: dict[str, Split] = field(default_factory=dict)

    @classmethod
    def create(cls, cfg: PipelineConfig, work_dir: Path | None = None, **kw: object) -> Context:
        wd = Path(work_dir) if work_dir is not None else cfg.resolve(cfg.work_dir)
        wd.mkdir(parents=True, exist_ok=True)
        ctx = cls(cfg=cfg, work_dir=wd, **kw)  # type: ignore[arg-type]
        if ctx.dist.is_main:  # the other ranks of a data-parallel run work in it with rank 0
            lock_work_dir(wd)
        return ctx

    @property
    def device(self) -> torch.device:
        return device_for(self.cfg.device, self.dist)

    def stage_dir(self, stage: str) -> Path:
        path = self.work_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def echo(self, message: str) -> None:
        if self.dist.is_main and not self.quiet:
            self.console.print(message)

    # ------------------------------------------------------------------ data
    def manifest_path(self, split: str) -> Path:
        """The manifest of ``split`` (train/dev/test): from [data], else the built corpus."""
        given = getattr(self.cfg.data, split)
        if given:
            return self.cfg.resolve(given)
        built = self.work_dir / "corpus" / f"{split}.jsonl"
        if built.exists():
            return built
        raise StageError(
            f"no {split} manifest: set data.{split} in the config, or data.corpus and run the "
            "corpus stage first"
        )

    def languages(self) -> list[str]:
        return self.vocab().languages

    def split(self, name: str) -> Split:
        """Validated entries of a split (bad ones skipped and counted, see DataReport)."""
        if name in self._splits:
            return self._splits[name]
        path = self.manifest_path(name)
        entries = read_manifest(path)
        wanted = set(self.cfg.data.languages) or None
        if wanted:
            entries = [e for e in entries if e.language in wanted]
        # Training text must fit the alphabets (the vocabulary is built from it); evaluation
        # text may hold characters never seen in training: the evaluator scores them as errors.
        vocab = self._vocab if name != "train" else None
        config = ValidationConfig(
            languages=vocab.languages if vocab is not None else None,
            max_duration=self.cfg.data.max_seconds,
        )
        kept, report = validate_entries(entries, manifest_root(path), config, source=str(path))
        if report.n_skipped:
            self.echo(f"[yellow]{path}: {report.summary()}")
        if not kept:
            raise StageError(f"{path}: no usable utterances")
        split = Split(kept, manifest_root(path), report)
        self._splits[name] = split
        return split

    def vocab(self) -> Vocabulary:
        """``vocab.json`` in the work folder; built from the training texts the first time."""
        if self._vocab is not None:
            return self._vocab
        path = self.work_dir / "vocab.json"
        if path.exists():
            self._vocab = Vocabulary.from_dict(json.loads(path.read_text(encoding="utf-8")))
            return self._vocab
        texts: dict[str, list[str]] = {}
        for entry in self.split("train").entries:
            texts.setdefault(entry.language, []).append(entry.text)
        vocab = Vocabulary.build(texts)
        if self.dist.is_main:
            atomic_write_text(path, json.dumps(vocab.to_dict(), ensure_ascii=False, indent=1))
        self._vocab = vocab
        return vocab

    # ----------------------------------------------------------------- model
    def output(self, stage: str) -> Path:
        return self.work_dir / stage / MODEL_FILE

    def input_artifact(self, stage: str, init: Path | None = None) -> Artifact:
        """The newest model of an earlier stage (or ``init``, model.init_from, a new one)."""
        if init is not None:
            return self._load(init)
        earlier = (
            MODEL_STAGES[: MODEL_STAGES.index(stage)] if stage in MODEL_STAGES else MODEL_STAGES
        )
        for previous in reversed(earlier):
            if self.output(previous).exists():
                return self._load(self.output(previous))
        init_from = self.cfg.resolve(self.cfg.model.init_from) if self.cfg.model.init_from else None
        if init_from is not None and init_from.suffix == ".pt":
            return self._load(init_from)
        vocab = self.vocab()
        return Artifact(new_model(self.cfg.model, vocab, init_from), vocab)

    def _load(self, path: Path) -> Artifact:
        art = load_artifact(path)
        vocab = self.vocab()
        if art.vocab.to_dict() != vocab.to_dict():
            # A model from elsewhere (another corpus): keep the backbone, new heads.
            model = new_model(self.cfg.model, vocab, path)
            return Artifact(model, vocab, None, art.heads, art.history)
        return art

    def masks(self, required: bool) -> LanguageMasks | None:
        """The pruned masks for the ``lass`` method (None for the dense baselines)."""
        if self.cfg.method != "lass":
            return None
        path = self.work_dir / "prune" / "masks.pt"
        if not path.exists():
            if required:
                raise StageError(f"method 'lass' needs masks: run the prune stage first ({path})")
            return None
        return load_masks(path)
