"""Trainer configuration: one dataclass per stage, one ``PipelineConfig`` for them all.

A pipeline config is a TOML file (``configs/*.toml``) or the same tables in YAML
(``.yaml``/``.yml``, read with PyYAML); every table maps onto one of
the dataclasses below and unknown keys are an error that names the key, so a typo
never silently falls back to a default. ``PipelineConfig.to_dict()`` is what the
bundle records as provenance.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

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


class ConfigError(ValueError):
    """A config file or table that does not fit the dataclasses (names the key)."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then linear/cosine decay (or constant)."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    final_lr_scale: float = 0.05  # lr at the last step, as a fraction of ``lr``
    grad_clip: float = 5.0  # max global grad norm; <= 0 disables clipping


@dataclass
class LoopConfig:
    """What every stage's training loop shares."""

    steps: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    bf16: bool = False  # bf16 autocast (tiny's step 1.5x faster on CPU, docs/benchmarks.md)
    seed: int = 0
    batch_seconds: float = 80.0  # audio seconds per global batch
    max_batch_size: int = 16
    sort_first_epoch: bool = False  # SortaGrad: epoch 0 shortest batches first
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class ContrastiveConfig:
    """The wav2vec 2.0 objective: span masking, Gumbel product quantizer, K distractors."""

    mask_prob: float = 0.65  # fraction of frames that start a masked span (before overlap)
    mask_length: int = 10  # frames per span
    num_negatives: int = 100  # distractors per masked frame, from the same utterance
    codebook_groups: int = 2  # G
    codebook_entries: int = 320  # V per group
    codevector_dim: int = 256  # quantized vector size (split across groups)
    final_dim: int = 256  # space the contrastive similarity is computed in
    temperature_start: float = 2.0  # Gumbel-softmax temperature annealing
    temperature_end: float = 0.5
    temperature_decay: float = 0.999995  # per step: tau = max(end, start * decay**step)
    logit_temperature: float = 0.1  # kappa in the paper
    diversity_weight: float = 0.1  # alpha in the paper
    feature_penalty: float = 10.0  # L2 penalty on the conv features (wav2vec 2.0: 10)
    # Std of the quantizer's logit projection at init. wav2vec 2.0 uses 1.0; on our short
    # CPU runs that saturates the softmax and the codebooks collapse (code perplexity 2 of
    # 640 by step 80 of the default pretrain); 0.3 kept ~220 codes in use over 90 steps.
    quantizer_init_std: float = 1.0


@dataclass
class PretrainConfig(LoopConfig):
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass
class PruneConfig(LoopConfig):
    """Per-language magnitude pruning; ``steps`` is the short language run per round."""

    method: Literal["one_shot", "iterative"] = "iterative"
    # iterative: prune-and-rewind rounds (one_shot: always 1). Every round rewinds to the
    # start weights (lottery ticket); there is no switch to turn rewinding off.
    rounds: int = 3
    sparsity: float = 0.5  # target fraction of prunable weights removed, per language
    sparsity_per_language: dict[str, float] = field(default_factory=dict)
    granularity: Literal["per_tensor", "global"] = "per_tensor"
    objective: Literal["contrastive", "ctc"] = "ctc"
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)

    def target(self, language: str) -> float:
        return float(self.sparsity_per_language.get(language, self.sparsity))


@dataclass
class AdaptConfig(LoopConfig):
    """Language-adaptive continued pre-training: each sample updates its sub-network."""

    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)


@dataclass
class FinetuneConfig(LoopConfig):
    """CTC fine-tuning with the masks kept, then the LID head on the shared backbone."""

    freeze_feature_encoder: bool = True
    restrict_vocab: bool = True  # score each sample only over its language's columns
    lid_steps: int = 50  # LID head training after CTC (backbone frozen); 0 = skip
    lid_lr: float = 2e-3
    # weight the LID loss so every language counts the same, however much audio it has
    # (unweighted, the head learns the prior: see docs/model-card.md)
    lid_balance: bool = True
    adapter_dim: int = 64  # bottleneck size for the MMS-style adapter baseline


@dataclass
class EvaluateConfig:
    beam_width: int = 16
    batch_size: int = 8
    split: Literal["dev", "test"] = "test"
    use_lm: bool = True


@dataclass
class LMConfig:
    order: int = 3
    prune_singletons_from: int = 0  # k >= 2 drops singleton n-grams of order >= k; 0 keeps all
    binary: bool = True  # KenLM binary when build_binary is available, else ARPA


@dataclass
class ExportConfig:
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    out: str = ""  # bundle directory; "" = <work_dir>/bundle
    include_lm: bool = True


@dataclass
class ModelConfig:
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # BackboneConfig fields
    scope: list[str] = field(default_factory=lambda: ["attention", "feed_forward"])
    init_from: str = ""  # local HF wav2vec2 directory or a lass stage checkpoint (.pt)
    lid_head: bool = True
    # What the LID head reads: "encoder" (a dense transformer pass; accurate) or "features"
    # (the conv features' statistics; no transformer pass, far less accurate).
    lid_input: LidInput = "encoder"
    seed: int = 0  # initialisation of a new model


@dataclass
class DataConfig:
    """Manifests (JSONL); relative paths resolve against the config file's folder.

    With ``corpus`` set (a ``SyntheticCorpusConfig`` TOML) and no ``train``, the pipeline
    builds the synthetic corpus into ``<work_dir>/corpus`` first and uses its splits.
    """

    train: str = ""
    dev: str = ""
    test: str = ""
    corpus: str = ""
    languages: list[str] = field(default_factory=list)  # [] = every language in train
    num_workers: int = 0
    max_seconds: float = 20.0  # longer clips are skipped (memory)


@dataclass
class PipelineConfig:
    name: str = "lass"
    method: Method = "lass"
    work_dir: str = "runs/lass"
    device: str = "cpu"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    source: str = ""  # the file it was loaded from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, path: str) -> Path:
        """A path from the config: absolute, or relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or not self.source:
            return p
        return Path(self.source).resolve().parent / p

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {list(STAGES)}")


T = TypeVar("T")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a (TOML) table; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown key(s) {[prefix + k for k in unknown]}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


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


def read_config_tables(path: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config file's tables (TOML or YAML) with dotted ``overrides`` applied, e.g.
    {"finetune.steps": 5}; commands with tables of their own (``[compare]``,
    ``[add_language]``) pop them before building the :class:`PipelineConfig`."""
    data = _read_tables(path)
    for dotted, value in (overrides or {}).items():
        table = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            table = table.setdefault(key, {})
        table[leaf] = value
    data["source"] = str(Path(path).resolve())
    return data


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline config (TOML or YAML); ``overrides`` are dotted keys, e.g.
    {"finetune.steps": 5}."""
    data = read_config_tables(path, overrides)
    try:
        return from_dict(PipelineConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


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
