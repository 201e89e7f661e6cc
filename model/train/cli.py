"""``lass train <stage> CONFIG``: each stage alone, or ``pipeline`` for all of them.

Every command takes the pipeline config (TOML or YAML), ``--work-dir`` (default: the config's
``work_dir``) and ``--set KEY=VALUE`` overrides (dotted keys, TOML values), e.g.
``lass train finetune configs/default.toml --set finetune.steps=200``. Under
``torchrun`` the training stages run data-parallel. Heavy imports happen inside the
commands so ``lass --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from model.train.config import PipelineConfig
    from model.train.context import Context
    from model.train.data.manifest import ManifestEntry
    from model.train.data.validate import DataReport

app = typer.Typer(no_args_is_help=True, help="Offline trainer: corpus to bundle, stage by stage.")

CONFIG = typer.Argument(..., exists=True, dir_okay=False, help="Pipeline config (TOML or YAML).")
WORK_DIR = typer.Option(None, "--work-dir", help="Work folder (default: the config's work_dir).")
SET = typer.Option([], "--set", help="Override a config key: --set finetune.steps=10 (repeatable).")
QUIET = typer.Option(False, "--quiet", help="No progress bar or messages.")
INIT = typer.Option(
    None, "--init", help="Start from this model.pt (default: the newest earlier stage's output)."
)


def _context(config: Path, work_dir: Path | None, overrides: list[str], quiet: bool) -> Context:
    from model.train.config import ConfigError, load_config, parse_override

    try:
        cfg = load_config(config, dict(parse_override(o) for o in overrides))
    except ConfigError as exc:
        typer.echo(f"lass train: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    return _create(cfg, work_dir, quiet, "lass train")


def _create(cfg: PipelineConfig, work_dir: Path | None, quiet: bool, command: str) -> Context:
    """The stage context; a work folder another process trains in ends the command (exit 2)."""
    from model.train.context import Context, StageError
    from model.train.distributed import init_distributed

    try:
        return Context.create(cfg, work_dir, dist=init_distributed(cfg.device), quiet=quiet)
    except StageError as exc:
        typer.echo(f"{command}: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def _run(ctx: Context, stage: str, fn: object, *args: object) -> None:
    from model.train.context import StageError
    from model.train.distributed import shutdown

    finished = False
    try:
        result = fn(ctx, *args)  # type: ignore[operator]
        finished = True
    except StageError as exc:
        typer.echo(f"lass train {stage}: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    finally:
        # After an error the other ranks may never reach shutdown's barrier.
        shutdown(ctx.dist, wait=finished)
    if ctx.dist.is_main and not ctx.quiet and result is not None:
        typer.echo(str(result))


@app.command()
def pipeline(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
) -> None:
    """Every stage of the config's method, in order (each resumes or skips when done)."""
    from model.train.pipeline import run_pipeline

    ctx = _context(config, work_dir, set_, quiet)
    _run(ctx, "pipeline", run_pipeline)


@app.command()
def corpus(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
) -> None:
    """Build the synthetic corpus named by data.corpus into <work>/corpus."""
    from model.train.tasks import run_corpus

    _run(_context(config, work_dir, set_, quiet), "corpus", run_corpus)


@app.command()
def pretrain(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    init: Path | None = INIT,
) -> None:
    """wav2vec 2.0 self-supervised pre-training (from scratch or model.init_from)."""
    from model.train.pretrain import run_pretrain

    _run(_context(config, work_dir, set_, quiet), "pretrain", run_pretrain, init)


@app.command()
def prune(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
) -> None:
    """Per-language magnitude pruning (one-shot or iterative with rewinding) -> masks."""
    from model.train.prune import run_prune

    _run(_context(config, work_dir, set_, quiet), "prune", run_prune)


@app.command()
def adapt(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    init: Path | None = INIT,
) -> None:
    """Language-adaptive pre-training through the sparse sub-networks."""
    from model.train.adapt import run_adapt

    _run(_context(config, work_dir, set_, quiet), "adapt", run_adapt, init)


@app.command()
def finetune(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    init: Path | None = INIT,
) -> None:
    """CTC fine-tuning (masks kept), then the language-identification head."""
    from model.train.finetune import run_finetune

    _run(_context(config, work_dir, set_, quiet), "finetune", run_finetune, init)


@app.command()
def evaluate(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    model: Path | None = typer.Option(None, "--model", help="A model.pt (default: finetune's)."),
    bundle: Path | None = typer.Option(
        None,
        "--bundle",
        file_okay=False,
        help="Score this bundle (weights, masks, vocabulary, LMs) on the work folder's split "
        "instead; the report goes to <work>/evaluate-<bundle folder name>/.",
    ),
) -> None:
    """CER/WER per language (greedy, beam, beam + LM) and LID accuracy."""
    from model.train.tasks import run_evaluate

    if model is not None and bundle is not None:
        typer.echo("lass train evaluate: give --model or --bundle, not both", err=True)
        raise typer.Exit(code=2)
    _run(_context(config, work_dir, set_, quiet), "evaluate", run_evaluate, model, bundle)


@app.command()
def lm(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
) -> None:
    """Per-language word n-gram language models from the training text."""
    from model.train.tasks import run_lm

    _run(_context(config, work_dir, set_, quiet), "lm", run_lm)


@app.command()
def export(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    out: Path | None = typer.Option(None, "--out", help="Bundle folder (default: export.out)."),
) -> None:
    """Write the served bundle with provenance and evaluation figures."""
    from model.train.export import run_export

    _run(_context(config, work_dir, set_, quiet), "export", run_export, out)


@app.command("add-language")
def add_language(
    config: Path = CONFIG,
    bundle: Path = typer.Option(
        ..., "--bundle", exists=True, file_okay=False, help="The bundle the pack extends."
    ),
    language: str = typer.Option(..., "--language", help="Code of the new language (e.g. sv)."),
    method: str | None = typer.Option(
        None, "--method", help="learned (mask learnt over the frozen weights) or baseline."
    ),
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    out: Path | None = typer.Option(
        None, "--out", help="Pack folder (default <work>/packs/<lang>-<method>; .tar beside)."
    ),
) -> None:
    """A language pack: one more language over the bundle's frozen weights (resumable)."""
    from model.train.add_language import load_add_language_config, run_add_language
    from model.train.config import ConfigError, parse_override

    overrides = dict(parse_override(o) for o in set_)
    if method is not None:
        overrides["add_language.method"] = method
    try:
        cfg, acfg = load_add_language_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"lass train add-language: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    ctx = _create(cfg, work_dir, quiet, "lass train add-language")
    _run(ctx, "add-language", run_add_language, acfg, bundle, language, out)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected integers separated by commas, got {text!r}") from exc


@app.command()
def compare(
    config: Path = CONFIG,
    work_dir: Path | None = WORK_DIR,
    set_: list[str] = SET,
    quiet: bool = QUIET,
    methods: str | None = typer.Option(
        None, "--methods", help="Comma-separated, e.g. lass,dense (default: compare.methods)."
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Comma-separated, e.g. 0,1 (default: compare.seeds)."
    ),
    report_to: Path | None = typer.Option(
        None,
        "--report-to",
        file_okay=False,
        help="Train nothing: write the report from the kept results (compare.keep_results) "
        "into this folder.",
    ),
) -> None:
    """The methods on one corpus and one pre-trained model: CER, parameters, time (resumable)."""
    from model.train.compare import load_compare_config, report_kept, run_compare
    from model.train.config import ConfigError, parse_override
    from model.train.context import StageError

    overrides = dict(parse_override(o) for o in set_)
    if methods is not None:
        overrides["compare.methods"] = [m.strip() for m in methods.split(",") if m.strip()]
    if seeds is not None:
        overrides["compare.seeds"] = _int_list(seeds)
    try:
        cfg, ccfg = load_compare_config(config, overrides)
        if report_to is not None:
            report = report_kept(cfg, ccfg, report_to)
        else:
            report = run_compare(cfg, ccfg, work_dir, quiet=quiet)
    except (ConfigError, StageError) as exc:
        typer.echo(f"lass train compare: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    if not quiet:
        typer.echo(str(report))


IMPORT_OUT = typer.Argument(..., file_okay=False, help="Folder for train/dev/test.jsonl.")
DEV = typer.Option(0.05, "--dev-fraction", help="Share of sentences for dev.")
TEST = typer.Option(0.05, "--test-fraction", help="Share of sentences for test.")
SEED = typer.Option(0, "--seed", help="Seed of the sentence split.")


def _import(
    command: str,
    out: Path,
    read: Callable[[DataReport], Mapping[str, Sequence[ManifestEntry]]],
) -> None:
    """Run an importer (``read`` fills the report), write its manifests, say what it kept."""
    from model.train.data.importers import write_import
    from model.train.data.manifest import ManifestError
    from model.train.data.validate import DataReport

    report = DataReport()
    try:
        splits = read(report)
    except (FileNotFoundError, ManifestError) as exc:
        typer.echo(f"lass train {command}: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    paths = write_import(out, splits, report)
    typer.echo(report.summary(), err=True)
    for split, path in paths.items():
        typer.echo(f"{split}: {len(splits[split])} utterances -> {path}", err=True)


@app.command("import-cv")
def import_cv(
    root: Path = typer.Argument(
        ..., exists=True, file_okay=False, help="Common Voice release: <lang>/validated.tsv."
    ),
    out: Path = IMPORT_OUT,
    language: list[str] = typer.Option([], "--language", help="Only these (repeatable)."),
    dev_fraction: float = DEV,
    test_fraction: float = TEST,
    seed: int = SEED,
) -> None:
    """Manifests from a Common Voice release (its train/dev/test.tsv, else split by sentence)."""
    from model.train.data.importers import import_common_voice

    _import(
        "import-cv",
        out,
        lambda report: import_common_voice(
            root, language or None, True, dev_fraction, test_fraction, seed, report
        ),
    )


@app.command("import-folder")
def import_folder(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="Audio files."),
    language: str = typer.Argument(..., help="Language code of every file."),
    out: Path = IMPORT_OUT,
    transcripts: str = typer.Option(
        "transcripts.tsv", "--transcripts", help="In the folder: 'file<TAB>text' per line."
    ),
    speaker: str | None = typer.Option(None, "--speaker", help="Speaker of every file."),
    dev_fraction: float = DEV,
    test_fraction: float = TEST,
    seed: int = SEED,
) -> None:
    """Manifests from a folder of audio and its transcript file, split by sentence."""
    from model.train.data import importers

    _import(
        "import-folder",
        out,
        lambda report: importers.split_by_sentence(
            importers.import_folder(folder, language, transcripts, speaker=speaker, report=report),
            seed,
            dev_fraction,
            test_fraction,
        ),
    )
