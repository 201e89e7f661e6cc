"""The stages other parts implement, wired to the work folder: corpus, lm, evaluate.

``corpus`` calls the data layer's synthetic corpus builder, ``lm`` the n-gram builder
(``model.train.lm``), ``evaluate`` the evaluator (``model.train.evaluate``). Each shows a
progress bar with an ETA on stderr, on rank 0 and unless the context is quiet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.train.context import Context, StageError


def run_corpus(ctx: Context) -> Path:
    """Build the synthetic corpus named by ``data.corpus`` into ``<work>/corpus``."""
    from model.train.data.synthetic import SyntheticCorpusConfig, build_synthetic_corpus

    if not ctx.cfg.data.corpus:
        raise StageError("the corpus stage needs data.corpus (a synthetic corpus TOML)")
    config = SyntheticCorpusConfig.from_toml(ctx.cfg.resolve(ctx.cfg.data.corpus))
    out = ctx.work_dir / "corpus"
    if ctx.dist.is_main:
        build_synthetic_corpus(config, out, log=ctx.echo, progress=not ctx.quiet)
    from model.train.distributed import barrier

    barrier(ctx.dist)
    return out


def lm_text(ctx: Context, language: str) -> list[str]:
    """Training sentences of one language, normalized to its alphabet.

    The synthetic corpus writes its (train-only) sentences to ``text/<lang>.txt``; for a
    user's manifest the training transcripts are the text.
    """
    vocab = ctx.vocab()
    corpus_text = ctx.work_dir / "corpus" / "text" / f"{language}.txt"
    if not ctx.cfg.data.train and corpus_text.exists():
        lines = corpus_text.read_text(encoding="utf-8").splitlines()
    else:
        lines = [e.text for e in ctx.split("train").entries if e.language == language]
    out = [vocab.normalize(line, language) for line in lines]
    return [line for line in out if line]


def run_lm(ctx: Context) -> Path:
    """One word n-gram LM per language in ``<work>/lm/<lang>.(bin|arpa)``."""
    from model.train.lm import build_lm
    from model.train.progress import progress_bar

    cfg = ctx.cfg.lm
    folder = ctx.stage_dir("lm")
    if not ctx.dist.is_main:
        return folder
    texts: dict[str, list[str]] = {}
    for language in ctx.languages():
        if any((folder / f"{language}{s}").exists() for s in (".bin", ".arpa")):
            continue
        text = lm_text(ctx, language)
        if text:
            texts[language] = text
        else:
            ctx.echo(f"[yellow]lm: no text for {language}, skipped")
    if not texts:
        return folder
    # Estimation time grows with the text: the bar counts sentences.
    with progress_bar(ctx.quiet) as bar:
        task = bar.add_task("lm", total=sum(map(len, texts.values())), info="sentences")
        for language, text in texts.items():
            bar.update(task, info=f"{language}, sentences")
            path = build_lm(
                text,
                folder / language,
                order=cfg.order,
                prune_singletons_from=cfg.prune_singletons_from,
                binary=cfg.binary,
            )
            bar.advance(task, len(text))
            ctx.echo(f"lm: {language} -> {path.name}")
    return folder


def run_evaluate(ctx: Context, model_path: Path | None = None, bundle: Path | None = None) -> Path:
    """CER/WER per language (greedy, beam, beam + LM) and LID accuracy on the eval split.

    Writes ``<work>/evaluate/report.json`` and ``report.md``; ``export`` puts the JSON into
    the bundle's manifest. With ``bundle``, scores that bundle instead (its weights, masks,
    vocabulary and LMs) and writes to ``<work>/evaluate-<bundle folder name>/``: a shipped
    model scored on this work folder's split, e.g. the default model on a new corpus.
    """
    from model.train import evaluate as ev
    from model.train.export import lm_files

    cfg = ctx.cfg.evaluate
    adapters = None
    if bundle is not None:
        import torch

        from model.bundle import BundleError, read_bundle

        try:
            loaded = read_bundle(bundle, device=ctx.device, dtype=torch.float32)
        except (BundleError, FileNotFoundError) as exc:
            raise StageError(f"evaluate: {exc}") from exc
        model, vocab, languages = loaded.model, loaded.vocab, loaded.model.languages
        lms: dict[str, Path] | None = dict(loaded.lm_paths) if cfg.use_lm else None
        folder = ctx.work_dir / f"evaluate-{Path(bundle).resolve().name}"
    else:
        art = ctx.input_artifact("export", model_path)
        model, vocab, languages = art.model.to(ctx.device), art.vocab, ctx.languages()
        model.set_masks(art.masks)
        if "adapters" in art.heads:
            from model.train.adapters import LanguageAdapters

            adapters = LanguageAdapters.for_model(model, ctx.cfg.finetune.adapter_dim)
            adapters.load_state_dict(art.heads["adapters"])
            adapters.attach(model)
        lms = lm_files(ctx) if cfg.use_lm else None
        folder = ctx.stage_dir("evaluate")
    model.eval()
    split = ctx.split(cfg.split)
    report: Any = ev.evaluate(
        model,
        vocab,
        split.entries,
        root=split.root,
        languages=languages,
        lm_paths=lms or None,
        beam_width=cfg.beam_width,
        batch_size=cfg.batch_size,
        device=ctx.device,
        progress=ctx.dist.is_main and not ctx.quiet,
        relative_to=ctx.work_dir,
    )
    if adapters is not None:
        adapters.detach_from(model)
    out = folder / "report.json"
    if ctx.dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        report.write_json(out)
        report.write_markdown(folder / "report.md")
        ctx.echo(report.to_markdown())
    return out
