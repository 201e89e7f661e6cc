"""``export``: the fine-tuned model, its masks and language models as a served bundle.

The bundle's manifest records where it came from: trainer version, git commit (and
whether the tree was dirty), the data (manifest paths, checksums, hours per
language), every stage that produced the weights with its config, the whole
pipeline config, and the evaluation figures when ``evaluate`` ran. Paths in it are
relative (``model.train.paths.recorded_path``): to the work folder, or to the repository
for a config inside it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import torch

import lass
from model.bundle import write_bundle
from model.masks import LanguageMasks
from model.train.context import Context, StageError
from model.train.paths import REPO, recorded_path

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def git_version(repo: Path = REPO) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool}`` of the code that trained the model."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": bool(status.strip())}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_provenance(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "dev", "test"):
        try:
            path = ctx.manifest_path(split)
        except StageError:
            continue
        hours: dict[str, float] = {}
        for entry in ctx.split(split).entries:
            hours[entry.language] = hours.get(entry.language, 0.0) + entry.duration / 3600
        out[split] = {
            "manifest": recorded_path(path, ctx.work_dir),
            "sha256": _sha256(path),
            "utterances": len(ctx.split(split).entries),
            "hours": {k: round(v, 4) for k, v in sorted(hours.items())},
        }
    corpus = ctx.work_dir / "corpus" / "corpus.json"
    if corpus.exists():
        out["corpus"] = json.loads(corpus.read_text(encoding="utf-8"))
    return out


def lm_files(ctx: Context) -> dict[str, Path]:
    folder = ctx.work_dir / "lm"
    found: dict[str, Path] = {}
    for lang in ctx.languages():
        for suffix in (".bin", ".arpa"):
            path = folder / f"{lang}{suffix}"
            if path.exists():
                found[lang] = path
                break
    return found


def run_export(ctx: Context, out: Path | None = None) -> Path:
    """Write the bundle (default ``<work>/bundle``, or export.out); returns its folder."""
    cfg = ctx.cfg.export
    if ctx.cfg.method == "adapters":
        raise StageError(
            "the adapters baseline cannot be exported: bundles hold masks, not adapters; "
            "compare it with `lass train evaluate`"
        )
    source = ctx.output("finetune")
    if not source.exists():
        raise StageError(f"export needs a fine-tuned model: run finetune first ({source})")
    art = ctx.input_artifact("export")
    model = art.model
    masks = art.masks
    if masks is None:  # dense baselines: every language keeps every weight
        masks = LanguageMasks.full(model.prunable_shapes(), model.languages)
    report = ctx.work_dir / "evaluate" / "report.json"
    metrics = json.loads(report.read_text(encoding="utf-8")) if report.exists() else None
    config = ctx.cfg.to_dict()
    if config["source"]:
        config["source"] = recorded_path(config["source"], ctx.work_dir)
    provenance = {
        "trainer": {"name": "lass", "version": lass.__version__, **git_version()},
        "method": ctx.cfg.method,
        "stages": art.history,
        "data": data_provenance(ctx),
        "config": config,
        "mask_stats": masks.stats().to_dict(),
    }
    target = out or (ctx.cfg.resolve(cfg.out) if cfg.out else ctx.work_dir / "bundle")
    lms = lm_files(ctx) if cfg.include_lm else {}
    model.set_masks(None)
    write_bundle(target, model.cpu(), art.vocab, masks, provenance, metrics, lms, DTYPES[cfg.dtype])
    ctx.echo(f"export: wrote {target}")
    return target
