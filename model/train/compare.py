"""``lass train compare CONFIG``: the methods side by side, on equal terms, in one report.

Does sparse sharing (``lass``) beat the baselines (``dense``: XLSR-style fine-tuning,
``dense_adapt``: dense language-adaptive pre-training, ``adapters``: MMS-style adapters)?
Every method runs on the same corpus, from the same pre-trained model (pre-trained once,
in ``<work>/shared``), with the same step budgets and the same evaluation; only the
method and the seed change between runs. Each run (method, seed, ablation value) has its
own folder under ``<work>/runs``, runs the trainer's own stages there (so it resumes
from their checkpoints) and is finished when its ``result.json`` exists: a second call
skips it. Work folder::

    shared/              corpus/, vocab.json, pretrain/model.pt, lm/: built once
    runs/<run>/          corpus, pretrain/model.pt and lm linked to shared/; prune/,
                         adapt/, finetune/, evaluate/ of this run; timing.json, result.json
    compare.json, compare.md, figures/mask_overlap_<run>.png

The ``[compare]`` table of the config (``CompareConfig``) says which methods and seeds run,
which languages are high- and low-resource, and the ablation: the ``lass`` runs again
with every low-resource language's sparsity set to each value of ``low_sparsity``. The
report is rewritten after every finished run and says how many of the planned runs it
holds.

The seed of a run sets the prune, adapt and fine-tuning seeds (data order, span masks,
dropout) and the global RNG before the run; the pre-trained model is the same for all, so
the spread over seeds measures the downstream training's variance, not pre-training's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydantic.dataclasses
import torch

from model.atomic import atomic_write_text
from model.train import checkpoint as ckpt
from model.train.clock import RunningClock, StageClock, process_clock
from model.train.config import (
    STAGES,
    TABLE,
    ConfigError,
    Float,
    Int,
    LoopConfig,
    PipelineConfig,
    Str,
    load_config_with,
)
from model.train.context import Context, StageError
from model.train.progress import progress_bar

METHODS: tuple[str, ...] = ("lass", "dense", "dense_adapt", "adapters")
SHARED_STAGES = ("corpus", "pretrain", "lm")  # run once, in <work>/shared
RUN_STAGES = ("prune", "adapt", "finetune", "evaluate")  # run per (method, seed, ablation)
DECODINGS = ("greedy", "beam", "beam_lm")
DECODING_TITLES = {"greedy": "greedy", "beam": "beam", "beam_lm": "beam + LM"}
GROUPS = ("high", "low", "all")
RESULT = "result.json"
# What a run stage leaves when it has finished (evaluate's result is the run's result.json).
STAGE_OUTPUTS = {
    "prune": "prune/masks.pt",
    "adapt": "adapt/model.pt",
    "finetune": "finetune/model.pt",
}
TIMING = "timing.json"
STOPPED = "stopped.json"  # per stage: seconds the process was stopped (not in TIMING)
FINISHED = "finished.json"  # the stages whose time in TIMING is complete
KEPT_SHARED = "shared.json"  # in compare.keep_results: the shared stages' digests and times
# Cost of evaluating one second of audio (forward pass + beam searches) relative to one
# training second, for the ETA only: about what the micro and tiny runs measured.
EVAL_COST = 0.5


@pydantic.dataclasses.dataclass(config=TABLE)
class CompareConfig:
    """The ``[compare]`` table."""

    methods: list[Str] = field(default_factory=lambda: list(METHODS))
    seeds: list[Int] = field(default_factory=lambda: [0, 1])
    # [] = the synthetic corpus config's high_resource / low_resource lists
    high_resource: list[Str] = field(default_factory=list)
    low_resource: list[Str] = field(default_factory=list)
    # The ablation: lass with every low-resource language pruned to each of these sparsities
    # (a value equal to the config's own is the main lass run, not run twice). [] = none.
    low_sparsity: list[Float] = field(default_factory=list)
    ablation_seeds: list[Int] = field(default_factory=list)  # [] = seeds
    served_languages: list[Int] = field(default_factory=lambda: [100])  # besides the run's N
    # A folder (relative to the config file) that keeps a copy of each finished run's result.
    # A comparison whose work folder was lost takes them back once it has rebuilt the shared
    # stages identically (the digests match) and redoes only the other runs. "" = none.
    keep_results: Str = ""

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"compare.methods: unknown {unknown}; known: {list(METHODS)}")
        if not self.methods or not self.seeds:
            raise ConfigError("compare: at least one method and one seed")
        bad = [v for v in self.low_sparsity if not 0.0 <= v < 1.0]
        if bad:
            raise ConfigError(f"compare.low_sparsity: {bad} not in [0, 1)")


def load_compare_config(
    path: Path, overrides: Mapping[str, Any] | None = None
) -> tuple[PipelineConfig, CompareConfig]:
    """A pipeline config with a ``[compare]`` table (TOML or YAML); ``overrides`` are dotted
    keys as for ``load_config`` (``compare.seeds=[0]`` reaches the compare table)."""
    return load_config_with(path, "compare", CompareConfig, overrides)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class RunSpec:
    """One run: a method, a seed and, for the ablation, the low-resource sparsity."""

    method: str
    seed: int
    low_sparsity: float | None = None  # None: the config's own sparsities

    @property
    def name(self) -> str:
        base = self.method if self.low_sparsity is None else f"lass-low{self.low_sparsity:g}"
        return f"{base}-seed{self.seed}"


@dataclass(frozen=True)
class Groups:
    high: tuple[str, ...]
    low: tuple[str, ...]

    def of(self, group: str, languages: Iterable[str]) -> list[str]:
        langs = list(languages)
        if group == "high":
            return [lang for lang in langs if lang in self.high]
        if group == "low":
            return [lang for lang in langs if lang in self.low]
        return langs


def resource_groups(cfg: PipelineConfig, ccfg: CompareConfig) -> Groups:
    """High/low-resource languages: the compare table's, else the synthetic corpus's."""
    high, low = list(ccfg.high_resource), list(ccfg.low_resource)
    if not (high or low) and cfg.data.corpus:
        from model.train.data.synthetic import SyntheticCorpusConfig

        corpus = SyntheticCorpusConfig.from_toml(cfg.resolve(cfg.data.corpus))
        high, low = list(corpus.high_resource), list(corpus.low_resource)
    if cfg.data.languages:
        high = [lang for lang in high if lang in cfg.data.languages]
        low = [lang for lang in low if lang in cfg.data.languages]
    both = sorted(set(high) & set(low))
    if both:
        raise ConfigError(f"compare: {both} both high- and low-resource")
    return Groups(tuple(high), tuple(low))


def config_low_sparsity(cfg: PipelineConfig, groups: Groups) -> float | None:
    """The sparsity the config gives every low-resource language (None: they differ)."""
    values = {cfg.prune.target(lang) for lang in groups.low}
    return values.pop() if len(values) == 1 else None


def plan_runs(
    cfg: PipelineConfig, ccfg: CompareConfig, groups: Groups
) -> tuple[list[RunSpec], dict[float, list[RunSpec]]]:
    """The runs, in order (every method of seed 0, then of seed 1, ...; then the ablation),
    and the ablation's runs per low-resource sparsity (the config's own value: the main
    lass runs)."""
    runs = [RunSpec(m, s) for s in ccfg.seeds for m in ccfg.methods]
    ablation: dict[float, list[RunSpec]] = {}
    if not ccfg.low_sparsity or "lass" not in ccfg.methods:
        return runs, ablation
    if not groups.low:
        raise ConfigError("compare.low_sparsity: no low-resource languages to prune")
    own = config_low_sparsity(cfg, groups)
    for value in sorted(set(ccfg.low_sparsity)):
        specs = []
        for seed in ccfg.ablation_seeds or ccfg.seeds:
            same = own is not None and math.isclose(value, own)
            spec = RunSpec("lass", seed) if same else RunSpec("lass", seed, value)
            if spec not in runs:
                runs.append(spec)
            specs.append(spec)
        ablation[value] = specs
    return runs, ablation


def run_config(base: PipelineConfig, spec: RunSpec, groups: Groups) -> PipelineConfig:
    """The pipeline config of one run: the base config with its method, seed, ablation."""
    cfg = copy.deepcopy(base)
    cfg.method = spec.method  # type: ignore[assignment]
    cfg.stages = [s for s in STAGES if s in RUN_STAGES]
    cfg.prune.seed = cfg.adapt.seed = cfg.finetune.seed = spec.seed
    if spec.low_sparsity is not None:
        per_language = dict(cfg.prune.sparsity_per_language)
        per_language.update({lang: spec.low_sparsity for lang in groups.low})
        cfg.prune.sparsity_per_language = per_language
    return cfg


def shared_config(base: PipelineConfig) -> PipelineConfig:
    cfg = copy.deepcopy(base)
    cfg.stages = [s for s in STAGES if s in SHARED_STAGES]
    return cfg


def _comparable(cfg: PipelineConfig) -> dict[str, Any]:
    """What decides a run's result (the config file's path and work folder do not)."""
    d = cfg.to_dict()
    for key in ("source", "work_dir", "name"):
        d.pop(key, None)
    return json.loads(json.dumps(d, default=str))


# What the shared stages (corpus, pre-training, LMs) depend on: a comparison whose later
# stages change (a longer fine-tuning, say) can start from the same shared folder.
SHARED_KEYS = ("device", "model", "data", "pretrain", "lm")


def _check_same_config(folder: Path, cfg: PipelineConfig, keys: tuple[str, ...] = ()) -> None:
    """A run folder started under another config would mix two experiments: refuse.
    ``keys``: compare only these tables (the shared folder's), else everything."""
    path = folder / "config.json"
    wanted = _comparable(cfg)
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if keys:
            saved = {k: saved.get(k) for k in keys}
            wanted = {k: wanted.get(k) for k in keys}
        if saved != wanted:
            changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise StageError(
                f"{folder} was started with another config (differs in {changed}); "
                "use another --work-dir, or delete that folder to redo it"
            )
    else:
        atomic_write_text(path, json.dumps(wanted, indent=1))


def _check_same_start(folder: Path, start: Mapping[str, str]) -> None:
    """A finished run made from other shared stages (a pre-training redone after its work
    folder was lost, say) would not share the other runs' starting point: refuse it."""
    recorded = json.loads((folder / RESULT).read_text(encoding="utf-8")).get("shared")
    if recorded is not None and recorded != dict(start):
        changed = sorted(k for k in set(recorded) | set(start) if recorded.get(k) != start.get(k))
        raise StageError(
            f"{folder / RESULT} was made from other shared stages (its {changed} digests "
            "differ): delete that run folder to redo it, or use another --work-dir"
        )


def config_digest(cfg: PipelineConfig) -> str:
    """sha256 of what decides a run's result (:func:`_comparable`), for kept results."""
    return hashlib.sha256(json.dumps(_comparable(cfg), sort_keys=True).encode()).hexdigest()


def _keep(kept: Path, result: Mapping[str, Any]) -> None:
    kept.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(kept, json.dumps(result, indent=1))


def _restore(kept: Path, folder: Path, start: Mapping[str, str], cfg: PipelineConfig) -> None:
    """Take a kept result back into a new work folder: only when it was made under this
    run's config from shared stages identical to this folder's."""
    result = json.loads(kept.read_text(encoding="utf-8"))
    if result.get("config") != config_digest(cfg):
        raise StageError(
            f"{kept} was made under another config: move the kept results away (or set "
            "compare.keep_results to another folder) to run the comparison afresh"
        )
    if result.get("shared") != dict(start):
        raise StageError(
            f"{kept} was made from other shared stages than {folder.parent.parent / 'shared'} "
            "(their digests differ; was the pre-training redone with other code or on another "
            "kind of machine?): move the kept results away to run every run again"
        )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / RESULT, json.dumps(result, indent=1))


# ------------------------------------------------------------------------ running
def _link(target: Path, link: Path) -> None:
    """A relative symlink ``link`` -> ``target`` (the work folder stays movable)."""
    if link.is_symlink() or link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def link_shared(shared: Path, run_dir: Path) -> None:
    """Give a run folder the shared corpus, vocabulary, pre-trained model and LMs: the
    stages find them where they look (``corpus/``, ``vocab.json``, ``pretrain/model.pt``,
    ``lm/``), so the run starts from the very same pre-trained weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if (shared / "corpus").exists():
        _link(shared / "corpus", run_dir / "corpus")
    _link(shared / "pretrain" / "model.pt", run_dir / "pretrain" / "model.pt")
    _link(shared / "lm", run_dir / "lm")
    if not (run_dir / "vocab.json").exists():
        shutil.copyfile(shared / "vocab.json", run_dir / "vocab.json")


def _add_time(folder: Path, stage: str, seconds: float, stopped: float = 0.0) -> dict[str, float]:
    """Add ``seconds`` to ``stage`` in ``timing.json``: a run that resumes sums its calls
    (:class:`StageTimer` adds as a stage runs). The time the process was stopped, not in
    ``seconds``, goes to ``stopped.json``."""
    if stopped > 0:
        stops = folder / STOPPED
        paused = json.loads(stops.read_text(encoding="utf-8")) if stops.exists() else {}
        paused[stage] = round(paused.get(stage, 0.0) + stopped, 2)
        atomic_write_text(stops, json.dumps(paused, indent=1))
    path = folder / TIMING
    timing = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    timing[stage] = round(timing.get(stage, 0.0) + seconds, 2)
    atomic_write_text(path, json.dumps(timing, indent=1))
    return dict(timing)


def finished_stages(folder: Path) -> list[str]:
    """The stages whose time in ``timing.json`` is complete. A folder from before
    ``finished.json`` existed wrote a stage's time only at its end: its timed stages."""
    path = folder / FINISHED
    if path.exists():
        return list(json.loads(path.read_text(encoding="utf-8")))
    timing = folder / TIMING
    return list(json.loads(timing.read_text(encoding="utf-8"))) if timing.exists() else []


class StageTimer:
    """Keeps a stage's running time in ``timing.json`` (stopped time in ``stopped.json``)
    while it runs: every ``every`` seconds and at its end. A call that is killed loses at
    most ``every`` seconds of its stage's time, so a stage that resumed across sessions
    reports what all its calls spent (steps redone after the last checkpoint included: the
    machine spent them). A stage that returns is added to ``finished.json``."""

    def __init__(
        self, folder: Path, stage: str, every: float = 60.0, clock: RunningClock | None = None
    ) -> None:
        self.folder, self.stage, self.every = folder, stage, every
        self.clock = clock if clock is not None else process_clock()
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._run, name=f"timer-{stage}", daemon=True)

    def __enter__(self) -> StageTimer:
        path = self.folder / FINISHED
        if not path.exists():  # from here on the heartbeat's entries are not finished ones
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(finished_stages(self.folder), indent=1))
        self._clock = StageClock(self.clock).__enter__()
        self._beat.start()
        return self

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.flush()

    def flush(self) -> None:
        """Add the time since the last flush (the heartbeat's, or the last after it joined)."""
        seconds, stopped = self._clock.lap()
        _add_time(self.folder, self.stage, seconds, stopped)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._done.set()
        self._beat.join()
        self.flush()
        if exc_type is None:
            done = finished_stages(self.folder)
            path = self.folder / FINISHED
            atomic_write_text(path, json.dumps([*done, self.stage], indent=1))


def _run_stages(
    ctx: Context, stages: Sequence[str], after: Callable[[str], None] | None = None
) -> dict[str, float]:
    """The stages of the pipeline, timed; each skips or resumes by itself."""
    from model.train.pipeline import planned_stages, stage_runners

    runners = stage_runners()
    planned = planned_stages(ctx.cfg)
    for stage in [s for s in planned if s in stages]:
        ctx.echo(f"[bold cyan]== {ctx.work_dir.name}: {stage} ==")
        if stage in finished_stages(ctx.work_dir):
            runners[stage](ctx)  # it only finds its output: its time is already kept
        else:
            with StageTimer(ctx.work_dir, stage):
                runners[stage](ctx)
        if after is not None:
            after(stage)
    path = ctx.work_dir / TIMING
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def step_seconds(loop: LoopConfig, clip_seconds: float) -> float:
    """Audio-seconds of one batch: ``batch_seconds``, unless ``max_batch_size`` clips of the
    corpus's mean length (``clip_seconds``; 0 = unknown) fill less. The default recipe's
    80-s batches hold 16 clips of ~3 s, ~48 s: counted at 80 s, the ETA overestimated."""
    if clip_seconds <= 0:
        return loop.batch_seconds
    return min(loop.batch_seconds, loop.max_batch_size * clip_seconds)


def stage_cost(
    cfg: PipelineConfig,
    stage: str,
    n_languages: int,
    eval_seconds: float,
    clip_seconds: float = 0.0,
) -> float:
    """Planned training audio-seconds of one stage (what the ETA counts in)."""
    if stage == "pretrain":
        return cfg.pretrain.steps * step_seconds(cfg.pretrain, clip_seconds)
    if stage == "prune" and cfg.method == "lass":
        rounds = 1 if cfg.prune.method == "one_shot" else max(1, cfg.prune.rounds)
        return n_languages * rounds * cfg.prune.steps * step_seconds(cfg.prune, clip_seconds)
    if stage == "adapt" and cfg.method in ("lass", "dense_adapt"):
        return cfg.adapt.steps * step_seconds(cfg.adapt, clip_seconds)
    if stage == "finetune":
        lid = cfg.finetune.lid_steps if cfg.model.lid_head else 0
        return (cfg.finetune.steps + lid) * step_seconds(cfg.finetune, clip_seconds)
    if stage == "evaluate":
        return EVAL_COST * eval_seconds
    return 0.0


class _Eta:
    """The comparison's progress bar with ETA (model/train/progress.py), in planned training
    audio-seconds. Each run's stages draw their own bars, so this one is printed as a
    snapshot line between stages rather than kept live beside theirs."""

    def __init__(self, total: float, done: float, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = progress_bar(quiet)
        # rich estimates the speed over its last 30 s by default; stages take minutes.
        self.bar.speed_estimate_period = 30 * 24 * 3600.0
        self.task = self.bar.add_task(
            "compare", total=max(total, 1.0), completed=int(done), info=""
        )
        self.bar.advance(self.task, 0.0)  # the first sample: speed counts from now

    def advance(self, units: float, info: str) -> None:
        self.bar.advance(self.task, units)
        self.bar.update(self.task, info=info)
        if not self.quiet:
            self.bar.start()
            self.bar.stop()


def run_compare(
    cfg: PipelineConfig,
    ccfg: CompareConfig,
    work_dir: Path | None = None,
    quiet: bool = False,
) -> Path:
    """Run (or resume) the comparison; returns ``<work>/compare.md``."""
    # Imported now, not at the first evaluation: every run of this call then decodes with
    # the code as it was when the call started, even if the checkout changes meanwhile.
    import model.train.evaluate  # noqa: F401
    from model.train.export import git_version

    code = git_version()  # the checkout as this call loaded it (HEAD may move while it runs)
    work = Path(work_dir) if work_dir is not None else cfg.resolve(cfg.work_dir)
    groups = resource_groups(cfg, ccfg)
    runs, ablation = plan_runs(cfg, ccfg, groups)
    shared_cfg = shared_config(cfg)
    shared = Context.create(shared_cfg, work / "shared", quiet=quiet)
    _check_same_config(shared.work_dir, shared_cfg, SHARED_KEYS)
    # The corpus first: the languages and the evaluation audio size the rest.
    _run_stages(shared, ["corpus"])
    languages = shared.languages()
    missing = sorted(set(groups.high + groups.low) - set(languages))
    if missing:
        raise StageError(f"compare: languages {missing} are not in the corpus ({languages})")
    eval_seconds = sum(e.duration for e in shared.split(cfg.evaluate.split).entries)
    train = shared.split("train").entries
    clip_seconds = sum(e.duration for e in train) / max(1, len(train))
    configs = {spec: run_config(cfg, spec, groups) for spec in runs}
    run_dirs = {spec: work / "runs" / spec.name for spec in runs}

    def cost(c: PipelineConfig, stages: Iterable[str]) -> float:
        return sum(stage_cost(c, s, len(languages), eval_seconds, clip_seconds) for s in stages)

    keep = cfg.resolve(ccfg.keep_results) if ccfg.keep_results else None

    def finished(spec: RunSpec) -> list[str]:
        """The run's stages already done (by an earlier call): not counted in the speed."""
        if (run_dirs[spec] / RESULT).exists():
            return list(RUN_STAGES)
        if keep is not None and (keep / f"{spec.name}.json").exists():
            return list(RUN_STAGES)  # to be restored
        return [s for s, out in STAGE_OUTPUTS.items() if (run_dirs[spec] / out).exists()]

    total = cost(shared_cfg, ["pretrain"]) + sum(cost(configs[s], RUN_STAGES) for s in runs)
    done = 0.0 if not shared.output("pretrain").exists() else cost(shared_cfg, ["pretrain"])
    done += sum(cost(configs[s], finished(s)) for s in runs)
    eta = _Eta(total, done, quiet)
    report = CompareReport(cfg, ccfg, groups, languages, runs, ablation, work)

    pretrained = shared.output("pretrain").exists()
    _run_stages(shared, ["pretrain", "lm"])
    if not pretrained:
        eta.advance(cost(shared_cfg, ["pretrain"]), "shared pre-training done")
    start = shared_digest(shared)
    if keep is not None:
        shared_time = json.loads((shared.work_dir / TIMING).read_text(encoding="utf-8"))
        _keep(keep / KEPT_SHARED, {"shared": start, "timing": shared_time})
    report.write()
    for i, spec in enumerate(runs, start=1):
        folder = run_dirs[spec]
        run_cfg = configs[spec]
        kept = keep / f"{spec.name}.json" if keep is not None else None
        if kept is not None and kept.exists() and not (folder / RESULT).exists():
            _restore(kept, folder, start, run_cfg)
            shared.echo(f"compare: {spec.name} restored from {kept}")
        if (folder / RESULT).exists():
            _check_same_config(folder, run_cfg)
            _check_same_start(folder, start)
            if kept is not None and not kept.exists():  # finished before it was kept
                result = json.loads((folder / RESULT).read_text(encoding="utf-8"))
                result["config"] = config_digest(run_cfg)  # checked equal just above
                _keep(kept, result)
            shared.echo(f"compare: {spec.name} is done, skipped ({i}/{len(runs)})")
            continue
        link_shared(shared.work_dir, folder)
        _check_same_config(folder, run_cfg)
        ctx = Context.create(run_cfg, folder, quiet=quiet)
        earlier = frozenset(finished(spec))
        # Contrastive heads and adapters are drawn from their stage's seed (ckpt.seeded);
        # anything else drawn before a loop seeds (a replaced LID head) is seeded here, so a
        # run does not depend on the runs before it in this process.
        torch.manual_seed(spec.seed)

        def after(
            stage: str,
            c: PipelineConfig = run_cfg,
            name: str = spec.name,
            skip: frozenset[str] = earlier,
        ) -> None:
            units = 0.0 if stage in skip else cost(c, [stage])
            eta.advance(units, f"{name}: {stage} done")

        timing = _run_stages(ctx, RUN_STAGES, after)
        result = run_result(ctx, spec, timing, code)
        result["shared"], result["config"] = start, config_digest(run_cfg)
        atomic_write_text(folder / RESULT, json.dumps(result, indent=1))
        if kept is not None:
            _keep(kept, result)
        report.write()
        shared.echo(f"compare: {spec.name} finished ({i}/{len(runs)})")
    return report.write()


def report_kept(cfg: PipelineConfig, ccfg: CompareConfig, out: Path) -> Path:
    """Write the report (``compare.md``, ``compare.json``, ``figures/``) into ``out`` from the
    kept results alone (``compare.keep_results``), training nothing: what a clone of the
    repository can redo to check the committed report. Returns ``out/compare.md``."""
    if not ccfg.keep_results:
        raise StageError("compare.keep_results is not set: there are no kept results to report")
    keep = cfg.resolve(ccfg.keep_results)
    groups = resource_groups(cfg, ccfg)
    runs, ablation = plan_runs(cfg, ccfg, groups)
    first = next((p for p in (keep / f"{s.name}.json" for s in runs) if p.exists()), None)
    if first is None:
        raise StageError(f"no kept results in {keep}: run the comparison first")
    # The corpus's languages, in the vocabulary's order, as a work folder's report lists them.
    languages = list(json.loads(first.read_text(encoding="utf-8"))["evaluation"]["languages"])
    out.mkdir(parents=True, exist_ok=True)
    report = CompareReport(cfg, ccfg, groups, languages, runs, ablation, out, kept=keep)
    return report.write()


def shown_path(path: str) -> str:
    """``path`` relative to the current folder when inside it: a report written from a
    checkout's root names ``configs/compare.toml``, not the machine's absolute path."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def shared_digest(shared: Context) -> dict[str, str]:
    """sha256 of what every run starts from: the train/dev/test manifests, the pre-trained
    weights (each tensor's name and bytes, in name order) and the LM files. A finished run
    records it; a run found finished under another digest came from another start."""

    def files(paths: Iterable[Path]) -> str:
        h = hashlib.sha256()
        for path in paths:
            h.update(path.name.encode() + b"\0" + path.read_bytes())
        return h.hexdigest()

    weights = hashlib.sha256()
    state = ckpt.load(shared.output("pretrain"))["state_dict"]
    for name in sorted(state):
        raw = state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        weights.update(name.encode() + b"\0" + raw.numpy().tobytes())
    lm = shared.work_dir / "lm"
    return {
        "manifests": files(shared.manifest_path(s) for s in ("train", "dev", "test")),
        "pretrain": weights.hexdigest(),
        "lm": files(sorted(p for p in lm.iterdir() if p.is_file()) if lm.is_dir() else []),
    }


# ------------------------------------------------------------------ one run's result
def run_result(
    ctx: Context, spec: RunSpec, timing: Mapping[str, float], code: Mapping[str, Any]
) -> dict[str, Any]:
    """What the report needs from a finished run (the evaluation without its utterances),
    and ``code``: the commit the call that ran it started from (``dirty``: with uncommitted
    changes)."""
    evaluation = json.loads((ctx.work_dir / "evaluate" / "report.json").read_text("utf-8"))
    evaluation.pop("utterances", None)
    out: dict[str, Any] = {
        "run": spec.name,
        "method": spec.method,
        "seed": spec.seed,
        "low_sparsity": spec.low_sparsity,
        "timing": dict(timing),
        "code": dict(code),
        "evaluation": evaluation,
        "parameters": parameter_counts(ctx),
    }
    stats = ctx.work_dir / "prune" / "mask_stats.json"
    if spec.method == "lass" and stats.exists():
        out["masks"] = json.loads(stats.read_text(encoding="utf-8"))
    return out


BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "bfloat16": 2}


def parameter_counts(ctx: Context) -> dict[str, Any]:
    """Parameters of the run's method: trained per language (by one language's fine-tuning
    gradient), stored per language (what serving one more language adds) and served (the
    model, with everything per language for its N languages)."""
    from model.train.adapters import LanguageAdapters
    from model.train.finetune import trainable_parameters

    art = ctx.input_artifact("export")  # the fine-tuned model
    model, method = art.model, ctx.cfg.method
    languages = list(model.languages)
    adapters = None
    if method == "adapters":
        adapters = LanguageAdapters.for_model(model, ctx.cfg.finetune.adapter_dim)
        adapters.attach(model)
    trainable_parameters(model, ctx.cfg.finetune, method)
    # The mask embedding only serves the pre-training objective: CTC never reaches it.
    trained = {
        n: p.numel()
        for n, p in model.named_parameters()
        if p.requires_grad and n != "mask_embedding" and not n.startswith("adapters.")
    }
    if adapters is not None:
        adapters.detach_from(model)
    model_params = sum(p.numel() for p in model.parameters())
    prunable = model.prunable_shapes()
    n_prunable = sum(math.prod(s) for s in prunable.values())
    masks = art.masks
    kept = masks.stats().kept if masks is not None and method == "lass" else {}
    shared_trained = sum(v for n, v in trained.items() if n not in prunable)
    prunable_trained = sum(v for n, v in trained.items() if n in prunable)
    per_language: dict[str, dict[str, int]] = {}
    for lang in languages:
        # lass: of the prunable weights, only those its mask keeps hear from a language
        own_prunable = kept[lang] if kept else prunable_trained
        adapter = (
            sum(p.numel() for p in adapters.adapters[lang].parameters())
            if adapters is not None
            else 0
        )
        per_language[lang] = {
            "trained": shared_trained + own_prunable + adapter,
            "stored_parameters": adapter,
            "stored_mask_bits": n_prunable if kept else 0,
        }
    width = BYTES_PER_WEIGHT[ctx.cfg.export.dtype]
    return {
        "model": model_params,
        "prunable": n_prunable,
        "bytes_per_weight": width,
        "languages": per_language,
    }


def served(params: Mapping[str, Any], n: int) -> tuple[float, float]:
    """(parameters, bytes) to serve ``n`` languages: the model plus ``n`` times the mean
    per-language part (adapters; masks at one bit per prunable weight)."""
    langs = params["languages"].values()
    extra = statistics.fmean(v["stored_parameters"] for v in langs)
    bits = statistics.fmean(v["stored_mask_bits"] for v in langs)
    count = params["model"] + n * extra
    return count, count * params["bytes_per_weight"] + n * math.ceil(bits / 8)


# ------------------------------------------------------------------------ the report
def spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, min, max and (sample) std over seeds; std is 0 for one value."""
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "min": min(vals),
        "max": max(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def group_cer(evaluation: Mapping[str, Any], languages: Sequence[str], decoding: str) -> float:
    """Unweighted mean CER of ``languages`` (the evaluator's average, on a subset); NaN when
    none of them has a score for ``decoding``."""
    per_lang = evaluation["languages"]
    values = [
        per_lang[lang]["cer"][decoding]
        for lang in languages
        if lang in per_lang and decoding in per_lang[lang]["cer"]
    ]
    return statistics.fmean(values) if values else math.nan


def _pct(stats: Mapping[str, Any] | None) -> str:
    """``mean (min–max)`` in percent, or the single value for one seed."""
    if not stats or math.isnan(stats["mean"]):
        return "—"
    if stats["n"] == 1:
        return f"{100 * stats['mean']:.1f}"
    return f"{100 * stats['mean']:.1f} ({100 * stats['min']:.1f}–{100 * stats['max']:.1f})"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k" if n >= 1e3 else f"{n:.0f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


class CompareReport:
    """Reads the finished runs' ``result.json`` and writes ``compare.json``/``compare.md``."""

    def __init__(
        self,
        cfg: PipelineConfig,
        ccfg: CompareConfig,
        groups: Groups,
        languages: Sequence[str],
        runs: Sequence[RunSpec],
        ablation: Mapping[float, Sequence[RunSpec]],
        work: Path,
        kept: Path | None = None,
    ) -> None:
        """``work``: where the report goes and, unless ``kept`` is given, the work folder
        whose ``runs/<run>/result.json`` and ``shared/timing.json`` it reads; ``kept``: a
        ``compare.keep_results`` folder to read them from instead."""
        self.cfg, self.ccfg, self.groups = cfg, ccfg, groups
        self.languages = list(languages)
        self.runs, self.ablation, self.work = list(runs), dict(ablation), work
        self.kept = kept

    def _result_path(self, spec: RunSpec) -> Path:
        if self.kept is not None:
            return self.kept / f"{spec.name}.json"
        return self.work / "runs" / spec.name / RESULT

    def results(self) -> dict[RunSpec, dict[str, Any]]:
        out = {}
        for spec in self.runs:
            path = self._result_path(spec)
            if path.exists():
                out[spec] = json.loads(path.read_text(encoding="utf-8"))
        return out

    def _shared_time(self) -> dict[str, float]:
        if self.kept is not None:
            path = self.kept / KEPT_SHARED
            return json.loads(path.read_text("utf-8"))["timing"] if path.exists() else {}
        path = self.work / "shared" / TIMING
        return json.loads(path.read_text("utf-8")) if path.exists() else {}

    def _cer_stats(self, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Per decoding: the groups' and each language's CER over the given runs (seeds)."""
        out: dict[str, Any] = {}
        for decoding in DECODINGS:
            groups = {}
            for group in GROUPS:
                langs = self.groups.of(group, self.languages)
                values = [group_cer(r["evaluation"], langs, decoding) for r in results]
                groups[group] = spread(values) if langs and values else None
            per_lang = {}
            for lang in self.languages:
                values = [group_cer(r["evaluation"], [lang], decoding) for r in results]
                per_lang[lang] = spread(values) if values else None
            out[decoding] = {"groups": groups, "languages": per_lang}
        return out

    def _parameters(self, result: Mapping[str, Any]) -> dict[str, Any]:
        params = result["parameters"]
        per_lang = params["languages"]
        trained = [v["trained"] for v in per_lang.values()]
        ns = [len(self.languages), *self.ccfg.served_languages]
        return {
            "model": params["model"],
            "trained_per_language": {"min": min(trained), "max": max(trained)},
            "stored_per_language": {
                "parameters": statistics.fmean(v["stored_parameters"] for v in per_lang.values()),
                "mask_bits": statistics.fmean(v["stored_mask_bits"] for v in per_lang.values()),
            },
            "served": {
                str(n): dict(zip(("parameters", "bytes"), served(params, n), strict=True))
                for n in ns
            },
        }

    def _timing(self, results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        stages = [s for s in RUN_STAGES if any(s in r["timing"] for r in results)]
        out = {s: spread([r["timing"].get(s, 0.0) for r in results]) for s in stages}
        training = [sum(v for k, v in r["timing"].items() if k != "evaluate") for r in results]
        out["training"] = spread(training)
        return out

    def _masks(self, results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        masks = [r["masks"] for r in results if "masks" in r]
        if not masks:
            return None
        langs = [lang for lang in self.languages if lang in masks[0]["density"]]
        return {
            "density": {lang: spread([m["density"][lang] for m in masks]) for lang in langs},
            "jaccard": {
                a: {b: statistics.fmean(m["jaccard"][a][b] for m in masks) for b in langs}
                for a in langs
            },
            "kept_by_all": spread([m["kept_by_all"] for m in masks]),
            "seeds": len(masks),
        }

    def to_dict(self) -> dict[str, Any]:
        results = self.results()
        done = [spec.name for spec in self.runs if spec in results]
        methods: dict[str, Any] = {}
        for method in self.ccfg.methods:
            specs = [RunSpec(method, seed) for seed in self.ccfg.seeds]
            mine = [results[spec] for spec in specs if spec in results]
            if not mine:
                continue
            methods[method] = {
                "seeds": [r["seed"] for r in mine],
                "cer": self._cer_stats(mine),
                "parameters": self._parameters(mine[0]),
                "time_s": self._timing(mine),
            }
            if method == "lass":
                methods[method]["masks"] = self._masks(mine)
        ablation = []
        for value, value_runs in sorted(self.ablation.items()):
            mine = [results[s] for s in value_runs if s in results]
            row: dict[str, Any] = {
                "low_sparsity": value,
                "runs": [s.name for s in value_runs],
                "seeds": [r["seed"] for r in mine],
            }
            if mine:
                masks = self._masks(mine)
                low = self.groups.low
                row["cer"] = {d: self._cer_stats(mine)[d]["groups"] for d in DECODINGS}
                row["low_density"] = (
                    statistics.fmean(masks["density"][lang]["mean"] for lang in low)
                    if masks
                    else None
                )
                trained = [mine[0]["parameters"]["languages"][lang]["trained"] for lang in low]
                row["trained_per_low_language"] = statistics.fmean(trained)
            ablation.append(row)
        return {
            "name": self.cfg.name,
            "status": {
                "planned": len(self.runs),
                "done": len(done),
                "complete": len(done) == len(self.runs),
                "missing": [s.name for s in self.runs if s not in results],
            },
            "groups": {"high": list(self.groups.high), "low": list(self.groups.low)},
            "languages": self.languages,
            "settings": self._settings(),
            "shared_time_s": self._shared_time(),
            # what every finished run started from (run_compare refuses a run that differs)
            "shared": next((r["shared"] for r in results.values() if "shared" in r), None),
            "methods": methods,
            "ablation": ablation,
            "runs": {spec.name: results[spec] for spec in self.runs if spec in results},
            "figures": self._figures(results),
        }

    def _settings(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "config": shown_path(c.source),
            "preset": c.model.preset,
            "methods": self.ccfg.methods,
            "seeds": self.ccfg.seeds,
            "steps": {
                "pretrain": c.pretrain.steps,
                "prune": f"{c.prune.method}, {c.prune.rounds} rounds x {c.prune.steps} steps",
                "adapt": c.adapt.steps,
                "finetune": c.finetune.steps,
            },
            "batch_seconds": {
                "pretrain": c.pretrain.batch_seconds,
                "prune": c.prune.batch_seconds,
                "adapt": c.adapt.batch_seconds,
                "finetune": c.finetune.batch_seconds,
            },
            "sparsity": {lang: c.prune.target(lang) for lang in self.languages},
            "low_sparsity_ablation": sorted(self.ablation),
            "evaluate": asdict(c.evaluate),
            "lm_order": c.lm.order,
        }

    def _figures(self, results: Mapping[RunSpec, Mapping[str, Any]]) -> dict[str, str]:
        """One mask-overlap heat map per finished lass run (kept when already drawn)."""
        out = {}
        for spec, result in results.items():
            if "masks" not in result:
                continue
            path = self.work / "figures" / f"mask_overlap_{spec.name}.png"
            if not path.exists():
                plot_overlap(result["masks"], self.groups, self.languages, path, spec.name)
            out[spec.name] = str(path.relative_to(self.work))
        return out

    def write(self) -> Path:
        data = self.to_dict()
        atomic_write_text(self.work / "compare.json", json.dumps(data, indent=1))
        return atomic_write_text(self.work / "compare.md", to_markdown(data))


def to_markdown(data: Mapping[str, Any]) -> str:
    """The report: status, setup, CER by group and language, parameters, time, masks,
    ablation. CER cells are ``mean (min–max)`` over seeds, in percent."""
    status = data["status"]
    lines = [f"# Method comparison: {data['name']}", ""]
    if status["complete"]:
        lines.append(f"All {status['planned']} runs done.")
    else:
        lines.append(
            f"**Partial: {status['done']} of {status['planned']} runs done** "
            f"(missing: {', '.join(status['missing'])}). Figures below cover the finished "
            "runs only."
        )
    s = data["settings"]
    groups = data["groups"]
    lines += [
        "",
        f"Languages: high-resource {', '.join(groups['high']) or '—'}; low-resource "
        f"{', '.join(groups['low']) or '—'}. Backbone `{s['preset']}`, pre-trained once "
        f"({s['steps']['pretrain']} steps) and shared by every run. Per run: prune "
        f"{s['steps']['prune']}, adapt {s['steps']['adapt']} steps, fine-tune "
        f"{s['steps']['finetune']} steps (batches of {s['batch_seconds']['finetune']:g} s of "
        f"audio), seeds {', '.join(map(str, s['seeds']))}. Evaluation on the "
        f"`{s['evaluate']['split']}` split, beam width {s['evaluate']['beam_width']}, "
        f"{s['lm_order']}-gram word LM. CER in %: mean (min–max) over seeds; group figures "
        "are unweighted means over their languages.",
        "",
    ]
    if data.get("shared"):
        digests = ", ".join(f"{k} `{v[:12]}`" for k, v in data["shared"].items())
        lines += [f"Every run started from the same shared stages (sha256: {digests}).", ""]
    methods = data["methods"]
    if not methods:
        lines.append("No run has finished yet.")
        return "\n".join(lines) + "\n"

    lines += ["## CER by language group", ""]
    head = ["method", "seeds"]
    for d in ("greedy", "beam_lm"):
        head += [f"{g} {DECODING_TITLES[d]}" for g in GROUPS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, m in methods.items():
        cells = [method, str(len(m["seeds"]))]
        for d in ("greedy", "beam_lm"):
            cells += [_pct(m["cer"][d]["groups"][g]) for g in GROUPS]
        lines.append("| " + " | ".join(cells) + " |")

    langs = data["languages"]
    for d in ("greedy", "beam_lm"):
        lines += ["", f"## CER per language, {DECODING_TITLES[d]}", ""]
        head = ["method"] + [
            f"{lang} ({'low' if lang in groups['low'] else 'high'})" for lang in langs
        ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method, m in methods.items():
            cells = [method] + [_pct(m["cer"][d]["languages"].get(lang)) for lang in langs]
            lines.append("| " + " | ".join(cells) + " |")

    ns = list(next(iter(methods.values()))["parameters"]["served"])
    lines += [
        "",
        "## Parameters",
        "",
        "*Trained per language*: parameters one language's fine-tuning gradient updates "
        "(min–max over languages). *Stored per language*: what serving one more language "
        "adds (adapter weights; a lass mask is one bit per prunable weight). *Served*: the "
        "model plus everything per language, for N languages (bytes at the export dtype).",
        "",
    ]
    head = ["method", "model", "trained per language", "stored per language"]
    head += [f"served, N = {n}" for n in ns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, m in methods.items():
        p = m["parameters"]
        t = p["trained_per_language"]
        trained = (
            _count(t["min"]) if t["min"] == t["max"] else f"{_count(t['min'])}–{_count(t['max'])}"
        )
        stored = p["stored_per_language"]
        parts = []
        if stored["parameters"]:
            parts.append(f"{_count(stored['parameters'])} weights")
        if stored["mask_bits"]:
            parts.append(f"{stored['mask_bits'] / 8 / 1024:.0f} KiB of mask bits")
        cells = [method, _count(p["model"]), trained, " + ".join(parts) or "0 (all shared)"]
        cells += [
            f"{_count(p['served'][n]['parameters'])} weights, "
            f"{p['served'][n]['bytes'] / 1e6:.1f} MB"
            for n in ns
        ]
        lines.append("| " + " | ".join(cells) + " |")

    shared = data.get("shared_time_s") or {}
    lines += [
        "",
        "## Training time (minutes per run, mean (min–max) over seeds)",
        "",
        "Wall time on this machine's cores, which other jobs may have shared. Shared by all "
        "runs, once: " + ", ".join(f"{k} {_minutes(v)}" for k, v in shared.items()) + ".",
        "",
    ]
    head = ["method", *RUN_STAGES[:-1], "training total", "evaluate"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, m in methods.items():
        t = m["time_s"]

        def minutes(stage: str, t: Mapping[str, Any] = t) -> str:
            st = t.get(stage)
            if not st or st["mean"] < 0.5:
                return "—"
            if st["n"] == 1:
                return _minutes(st["mean"])
            return f"{_minutes(st['mean'])} ({_minutes(st['min'])}–{_minutes(st['max'])})"

        cells = [method] + [minutes(s) for s in (*RUN_STAGES[:-1], "training", "evaluate")]
        lines.append("| " + " | ".join(cells) + " |")

    lass = methods.get("lass", {}).get("masks")
    if lass:
        lines += [
            "",
            f"## lass: the sub-networks ({lass['seeds']} seed(s))",
            "",
            f"Kept by every language: {100 * lass['kept_by_all']['mean']:.1f} % of the "
            "prunable weights.",
            "",
            "| language | group | density | mean Jaccard with the others |",
            "|---|---|---|---|",
        ]
        for lang, density in lass["density"].items():
            others = [v for b, v in lass["jaccard"][lang].items() if b != lang]
            mean_j = f"{statistics.fmean(others):.3f}" if others else "—"
            group = "low" if lang in groups["low"] else "high"
            lines.append(f"| {lang} | {group} | {density['mean']:.3f} | {mean_j} |")
        figures = data.get("figures", {})
        for name, path in figures.items():
            if name.startswith("lass-seed"):
                lines += ["", f"![pairwise mask overlap, {name}]({path})"]
                break
        if len(figures) > 1:
            lines += [
                "",
                "Heat maps of every lass run: "
                + ", ".join(f"[{n}]({p})" for n, p in figures.items())
                + ".",
            ]

    if data["ablation"]:
        lines += [
            "",
            "## Ablation: the low-resource languages' sparsity (lass)",
            "",
            "Every low-resource language pruned to the given sparsity; the high-resource "
            "languages keep theirs.",
            "",
        ]
        head = ["low sparsity", "seeds", "low-lang density"]
        head += [f"{g} {DECODING_TITLES[d]}" for d in ("greedy", "beam_lm") for g in GROUPS]
        head.append("trained per low language")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in data["ablation"]:
            if "cer" not in row:
                cells = [f"{row['low_sparsity']:g}", "0", "not run yet"]
                cells += ["—"] * (len(head) - len(cells))
            else:
                density = row["low_density"]
                cells = [
                    f"{row['low_sparsity']:g}",
                    str(len(row["seeds"])),
                    "—" if density is None else f"{density:.3f}",
                ]
                cells += [_pct(row["cer"][d][g]) for d in ("greedy", "beam_lm") for g in GROUPS]
                cells.append(_count(row["trained_per_low_language"]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_overlap(
    masks: Mapping[str, Any], groups: Groups, languages: Sequence[str], path: Path, title: str
) -> Path:
    """Heat map (PNG) of the pairwise Jaccard overlap of a run's masks, high-resource
    languages first, each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    jaccard = masks["jaccard"]
    order = [lang for lang in languages if lang in groups.high and lang in jaccard]
    order += [lang for lang in languages if lang not in order and lang in jaccard]
    values = [[jaccard[a][b] for b in order] for a in order]
    labels = [f"{lang} ({'low' if lang in groups.low else 'high'})" for lang in order]
    size = 1.0 + 0.7 * len(order)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(values, cmap="viridis", vmin=min(min(r) for r in values), vmax=1.0)
    ax.set_xticks(range(len(order)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(order)), labels)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.9 else "k")
    ax.set_title(f"mask overlap (Jaccard), {title}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
