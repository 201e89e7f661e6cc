"""Trainer configuration: one table per stage, one ``PipelineConfig`` for them all.

A pipeline config is a TOML file (``configs/*.toml``) or the same tables in YAML
(``.yaml``/``.yml``, read with PyYAML). Every table is a pydantic dataclass with
``extra="forbid"``: pydantic checks the types and refuses unknown keys, and
:func:`from_dict` turns its errors into a :class:`ConfigError` that names the key and its
table, so a typo never silently falls back to a default. The tables stay dataclasses
because ``dataclasses.asdict`` of them is what bundles, checkpoints and ``lass train
compare`` record; ``PipelineConfig.to_dict()`` is the bundle's provenance. Commands with a
table of their own (``[compare]``, ``[add_language]``) load it with
:func:`load_config_with`.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, Strict, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass

from model.beam_search import DEFAULT_BEAM_WIDTH
from model.config import LidInput

Method = Literal["lass", "dense", "dense_adapt", "adapters"]
STAGES: tuple[str, ...] = (
    "corpus",
    "pretrain",
    "prune",
    "adapt",
    "finetune",
    "evaluate",
    "lm",
    "export",
)

# Every table: unknown keys are an error (pydantic's default would drop them silently).
TABLE = ConfigDict(extra="forbid")
# Values as TOML/YAML wrote them: pydantic's lax mode would read "5" as 5 and 1 as true,
# so a quoted number or a 0/1 flag would pass unnoticed. An int is a valid Float (and
# becomes a float, as the recorded JSON has always had it).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


class ConfigError(ValueError):
    """A config file or table that does not fit the tables (names the key)."""


@dataclass(config=TABLE)
class OptimConfig:
    """AdamW with linear warm-up, then linear/cosine decay (or constant)."""

    lr: Float = 5e-4
    weight_decay: Float = 0.01
    betas: tuple[Float, Float] = (0.9, 0.98)
    eps: Float = 1e-6
    warmup_steps: Int = 50
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    final_lr_scale: Float = 0.05  # lr at the last step, as a fraction of ``lr``
    grad_clip: Float = 5.0  # max global grad norm; <= 0 disables clipping


@dataclass(config=TABLE)
class LoopConfig:
    """What every stage's training loop shares."""

    steps: Int = 100
    log_every: Int = 10
    checkpoint_every: Int = 100
    bf16: Bool = False  # bf16 autocast (tiny's step 1.5x faster on CPU, docs/benchmarks.md)
    seed: Int = 0
    batch_seconds: Float = 80.0  # audio seconds per global batch
    max_batch_size: Int = 16
    sort_first_epoch: Bool = False  # SortaGrad: epoch 0 shortest batches first
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass(config=TABLE)
class ContrastiveConfig:
    """The wav2vec 2.0 objective: span masking, Gumbel product quantizer, K distractors."""

    mask_prob: Float = 0.65  # fraction of frames that start a masked span (before overlap)
    mask_length: Int = 10  # frames per span
    num_negatives: Int = 100  # distractors per masked frame, from the same utterance
    codebook_groups: Int = 2  # G
    codebook_entries: Int = 320  # V per group
    codevector_dim: Int = 256  # quantized vector size (split across groups)
    final_dim: Int = 256  # space the contrastive similarity is computed in
    temperature_start: Float = 2.0  # Gumbel-softmax temperature annealing
    temperature_end: Float = 0.5
    temperature_decay: Float = 0.999995  # per step: tau = max(end, start * decay**step)
    logit_temperature: Float = 0.1  # kappa in the paper
    diversity_weight: Float = 0.1  # alpha in the paper
    feature_penalty: Float = 10.0  # L2 penalty on the conv features (wav2vec 2.0: 10)
    # Std of the quantizer's logit projection at init. wav2vec 2.0 uses 1.0; on our short
    # CPU runs that saturates the softmax and the codebooks collapse (code perplexity 2 of
    # 640 by step 80 of the default pretrain); 0.3 kept ~220 codes in use over 90 steps.
    quantizer_init_std: Float = 1.0


@dataclass(config=TABLE)
class PretrainConfig(LoopConfig):
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass(config=TABLE)
class PruneConfig(LoopConfig):
    """Per-language magnitude pruning; ``steps`` is the short language run per round."""

    method: Literal["one_shot", "iterative"] = "iterative"
    # iterative: prune-and-rewind rounds (one_shot: always 1). Every round rewinds to the
    # start weights (lottery ticket); there is no switch to turn rewinding off.
    rounds: Int = 3
    sparsity: Float = 0.5  # target fraction of prunable weights removed, per language
    sparsity_per_language: dict[Str, Float] = field(default_factory=dict)
    granularity: Literal["per_tensor", "global"] = "per_tensor"
    objective: Literal["contrastive", "ctc"] = "ctc"
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)

    def target(self, language: str) -> float:
        return float(self.sparsity_per_language.get(language, self.sparsity))


@dataclass(config=TABLE)
class AdaptConfig(LoopConfig):
    """Language-adaptive continued pre-training: each sample updates its sub-network."""

    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass(config=TABLE)
class FinetuneConfig(LoopConfig):
    """CTC fine-tuning with the masks kept, then the LID head on the shared backbone."""

    freeze_feature_encoder: Bool = True
    restrict_vocab: Bool = True  # score each sample only over its language's columns
    lid_steps: Int = 50  # LID head training after CTC (backbone frozen); 0 = skip
    lid_lr: Float = 2e-3
    # weight the LID loss so every language counts the same, however much audio it has
    # (unweighted, the head learns the prior: see docs/model-card.md)
    lid_balance: Bool = True
    adapter_dim: Int = 64  # bottleneck size for the MMS-style adapter baseline


@dataclass(config=TABLE)
class EvaluateConfig:
    beam_width: Int = DEFAULT_BEAM_WIDTH
    batch_size: Int = 8
    split: Literal["dev", "test"] = "test"
    use_lm: Bool = True


@dataclass(config=TABLE)
class LMConfig:
    """The ``[lm]`` table: how ``model.train.lm`` estimates each language's n-gram model.

    ``prune_singletons_from``: 0 keeps every n-gram; k (>= 2) drops the n-grams of order
    >= k seen only once (``lmplz --prune 0 0 1`` is k = 3). ``binary``: write KenLM's
    8-bit quantised trie (``build_binary -q 8 -b 8 trie``) when ``build_binary`` is found;
    off, or without it, the ARPA. Off by default: LMs were ARPA everywhere until
    ``scripts/build-kenlm.sh`` put ``build_binary`` in reach.
    """

    # KenLM loads bigram models and up; pip's kenlm is compiled with KENLM_MAX_ORDER=6.
    order: Annotated[Int, Field(ge=2, le=6)] = 3
    prune_singletons_from: Int = 0
    binary: Bool = False

    @field_validator("prune_singletons_from")
    @classmethod
    def _prunable_order(cls, k: int) -> int:
        if k != 0 and k < 2:
            raise ValueError(f"0 (keep every n-gram) or >= 2 (unigrams are never pruned), got {k}")
        return k


@dataclass(config=TABLE)
class ExportConfig:
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    out: Str = ""  # bundle directory; "" = <work_dir>/bundle
    include_lm: Bool = True


@dataclass(config=TABLE)
class ModelConfig:
    preset: Str = "tiny"
    overrides: dict[Str, Any] = field(default_factory=dict)  # BackboneConfig fields
    scope: list[Str] = field(default_factory=lambda: ["attention", "feed_forward"])
    init_from: Str = ""  # local HF wav2vec2 directory or a lass stage checkpoint (.pt)
    lid_head: Bool = True
    # What the LID head reads: "encoder" (a dense transformer pass; accurate) or "features"
    # (the conv features' statistics; no transformer pass, far less accurate).
    lid_input: LidInput = "encoder"
    seed: Int = 0  # initialisation of a new model


@dataclass(config=TABLE)
class DataConfig:
    """Manifests (JSONL); relative paths resolve against the config file's folder.

    With ``corpus`` set (a ``SyntheticCorpusConfig`` TOML) and no ``train``, the pipeline
    builds the synthetic corpus into ``<work_dir>/corpus`` first and uses its splits.
    """

    train: Str = ""
    dev: Str = ""
    test: Str = ""
    corpus: Str = ""
    languages: list[Str] = field(default_factory=list)  # [] = every language in train
    num_workers: Int = 0
    max_seconds: Float = 20.0  # longer clips are skipped (memory)


@dataclass(config=TABLE)
class PipelineConfig:
    name: Str = "lass"
    method: Method = "lass"
    work_dir: Str = "runs/lass"
    device: Str = "cpu"
    stages: list[Str] = field(default_factory=lambda: list(STAGES))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    source: Str = ""  # the file it was loaded from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, path: str) -> Path:
        """A path from the config: absolute, or relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or not self.source:
            return p
        return Path(self.source).resolve().parent / p

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {list(STAGES)}")
        return stages


T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build table ``cls`` (a pydantic dataclass) from a TOML/YAML table ``data``.

    ``where`` is the table's dotted name in the file ("" for the top level, "compare" for
    ``[compare]``). Every problem pydantic finds (an unknown key, a wrong type, a value out
    of range) is reported in one ConfigError naming its key.
    """
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as exc:
        problems = [_problem(cls, where, error) for error in exc.errors(include_url=False)]
        raise ConfigError("; ".join(problems)) from None


def _problem(cls: type, where: str, error: Any) -> str:
    """One pydantic error as "<dotted key>: <what is wrong>"."""
    path = [str(part) for part in error["loc"]]
    key = ".".join(p for p in (where, *path) if p)
    kind = error["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        table = ".".join(p for p in (where, *path[:-1]) if p)
        known = _keys(cls, path[:-1])
        hint = difflib.get_close_matches(path[-1], known, n=1)
        also = f" (did you mean {hint[0]!r}?)" if hint else ""
        at = f"in [{table}]" if table else "at the top level"
        return f"{key}: unknown key {at}{also}"
    if kind == "value_error":  # our validators' messages
        message = str(error["ctx"]["error"])
        return f"{key}: {message}" if path else message
    if kind in ("dataclass_type", "dataclass_exact_type"):
        return f"{key}: expected a table, got {error['input']!r}"
    message = error["msg"][:1].lower() + error["msg"][1:]
    return f"{key}: {message}, got {error['input']!r}"


def _keys(cls: type, path: list[str]) -> list[str]:
    """The keys of the table at ``path`` below ``cls`` ([] when it is not a table)."""
    fields: dict[str, Any] = getattr(cls, "__pydantic_fields__", {})
    for part in path:
        if part not in fields:
            return []
        fields = getattr(fields[part].annotation, "__pydantic_fields__", {})
    return list(fields)


def _read_tables(path: Path) -> dict[str, Any]:
    """The config file's top-level table: TOML, or YAML for a ``.yaml``/``.yml`` name."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        if Path(path).suffix.lower() not in (".yaml", ".yml"):
            return tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        import yaml
    except ImportError as exc:
        raise ConfigError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {data!r}")
    return data


def _tables(path: Path, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """A config file's tables with dotted ``overrides`` applied, e.g. {"finetune.steps": 5}."""
    data = _read_tables(path)
    for dotted, value in (overrides or {}).items():
        table = data
        *parents, leaf = dotted.split(".")
        for i, key in enumerate(parents):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(f"{path}: override {dotted}: {where} is not a table")
        table[leaf] = value
    data["source"] = str(Path(path).resolve())
    return data


def _build(path: Path, cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    try:
        return from_dict(cls, data, where)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline config (TOML or YAML); ``overrides`` are dotted keys, e.g.
    {"finetune.steps": 5}."""
    return _build(path, PipelineConfig, _tables(path, overrides))


def load_config_with(
    path: Path, table: str, cls: type[T], overrides: Mapping[str, Any] | None = None
) -> tuple[PipelineConfig, T]:
    """A pipeline config and a command's own table in it, e.g. ``[compare]`` read as ``cls``
    (all defaults when the file has none); dotted ``overrides`` reach both."""
    data = _tables(path, overrides)
    own = data.pop(table, {})
    return _build(path, PipelineConfig, data), _build(path, cls, own, table)


def parse_override(text: str) -> tuple[str, Any]:
    """``"finetune.steps=5"`` -> ("finetune.steps", 5); the value is parsed as TOML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return key.strip(), value
