"""Pipeline config: TOML (or YAML) onto pydantic tables, unknown keys named, overrides."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

import pytest
from pydantic.dataclasses import dataclass

from model.train.config import (
    TABLE,
    ConfigError,
    Int,
    LoopConfig,
    PipelineConfig,
    load_config,
    load_config_with,
    parse_override,
)

REPO = Path(__file__).resolve().parents[2]


def test_load_config_maps_tables_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
name = "t"
method = "dense"
[data]
train = "corpus/train.jsonl"
[finetune]
steps = 7
bf16 = true
[finetune.optim]
lr = 1e-3
betas = [0.9, 0.99]
[prune]
sparsity_per_language = { en = 0.3 }
"""
    )
    cfg = load_config(path, {"finetune.steps": 9, "model.preset": "base"})
    assert isinstance(cfg, PipelineConfig)
    assert cfg.method == "dense" and cfg.finetune.steps == 9 and cfg.finetune.bf16
    assert cfg.finetune.optim.lr == 1e-3 and cfg.finetune.optim.betas == (0.9, 0.99)
    assert cfg.model.preset == "base"
    assert cfg.prune.target("en") == 0.3 and cfg.prune.target("de") == cfg.prune.sparsity
    assert cfg.resolve(cfg.data.train) == tmp_path / "corpus" / "train.jsonl"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[finetune]\nstepz = 3\n", "finetune.stepz"),
        ('method = "magic"\n', "method"),
        ('[finetune]\nsteps = "many"\n', "finetune.steps"),
        ('stages = ["finetune", "dance"]\n', "dance"),
        # rewinding is always on: no key pretends to turn it off
        ("[prune]\nrewind = false\n", "prune.rewind"),
        # the key and the table it is not in, with the nearest real key
        (
            "[finetune.optim]\nlrr = 1\n",
            r"finetune\.optim\.lrr: unknown key in \[finetune\.optim\] \(did you mean 'lr'\?\)",
        ),
        ("colour = 1\n", "colour: unknown key at the top level"),
        ("finetune = 3\n", "finetune: expected a table, got 3"),
        # values as written: no "5" -> 5, 1 -> true or 2.0 -> 2 coercion
        ('[finetune]\nsteps = "5"\n', "finetune.steps: .*integer"),
        ("[finetune]\nbf16 = 1\n", "finetune.bf16: .*boolean"),
        ("[finetune]\nsteps = 2.0\n", "finetune.steps"),
        ('[prune]\nsparsity_per_language = { en = "half" }\n', "prune.sparsity_per_language.en"),
        ("[lm]\norder = 7\n", "lm.order: input should be less than or equal to 6"),
        ("[lm]\nprune_singletons_from = 1\n", r"lm.prune_singletons_from: 0 \(keep every"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_yaml_config_loads_like_toml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        'name = "t"\nmethod = "dense"\n[finetune]\nsteps = 7\n[finetune.optim]\n'
        "lr = 1e-3\nbetas = [0.9, 0.99]\n[prune]\nsparsity_per_language = { en = 0.3 }\n"
    )
    yaml = tmp_path / "c.yaml"
    yaml.write_text(
        "name: t\nmethod: dense\nfinetune:\n  steps: 7\n  optim:\n    lr: 1.0e-3\n"
        "    betas: [0.9, 0.99]\nprune:\n  sparsity_per_language: {en: 0.3}\n"
    )
    a, b = load_config(toml, {"finetune.steps": 9}), load_config(yaml, {"finetune.steps": 9})
    assert b.source.endswith("c.yaml")
    assert {**a.to_dict(), "source": ""} == {**b.to_dict(), "source": ""}
    assert b.finetune.steps == 9 and b.finetune.optim.betas == (0.9, 0.99)
    (tmp_path / "typo.yml").write_text("finetune:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="finetune.stepz"):
        load_config(tmp_path / "typo.yml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("finetune: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(tmp_path / "broken.yaml")


def test_parse_override() -> None:
    assert parse_override("finetune.steps=5") == ("finetune.steps", 5)
    assert parse_override("data.train=x/y.jsonl") == ("data.train", "x/y.jsonl")
    assert parse_override("prune.sparsity=0.7") == ("prune.sparsity", 0.7)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")))
def test_committed_configs_load(path: Path) -> None:
    """Each committed config loads with the loader of the command it is written for."""
    from model.train.add_language import load_add_language_config
    from model.train.compare import load_compare_config

    text = path.read_text()
    if "[add_language]" in text:
        load_add_language_config(path)
    elif "[compare]" in text:
        load_compare_config(path)
    else:
        load_config(path)


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[finetune]\nstepz = 3\n[pretrain]\nsteps = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "finetune.stepz" in str(info.value) and "pretrain.steps" in str(info.value)


def test_an_int_for_a_float_key_is_recorded_as_a_float(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[pretrain]\nbatch_seconds = 40\n[pretrain.optim]\nbetas = [1, 0.5]\n")
    cfg = load_config(path)
    assert type(cfg.pretrain.batch_seconds) is float
    assert cfg.to_dict()["pretrain"]["optim"]["betas"] == (1.0, 0.5)


def test_overrides_reach_a_command_table_and_cannot_replace_a_table(tmp_path: Path) -> None:
    @dataclass(config=TABLE)
    class Extra:
        seeds: list[Int] = field(default_factory=lambda: [0])

    path = tmp_path / "c.toml"
    path.write_text("[finetune]\nsteps = 3\n[extra]\nseeds = [1, 2]\n")
    cfg, extra = load_config_with(path, "extra", Extra, {"extra.seeds": [5]})
    assert extra.seeds == [5] and cfg.finetune.steps == 3
    # a command's table is optional, and unknown to commands without it
    with pytest.raises(ConfigError, match="extra: unknown key at the top level"):
        load_config(path)
    plain = tmp_path / "plain.toml"
    plain.write_text("[finetune]\nsteps = 3\n")
    assert load_config_with(plain, "extra", Extra)[1].seeds == [0]
    with pytest.raises(ConfigError, match=r"extra\.seedz: unknown key in \[extra\]"):
        load_config_with(path, "extra", Extra, {"extra.seedz": [5]})
    with pytest.raises(ConfigError, match="finetune.steps is not a table"):
        load_config(path, {"finetune.steps.x": 1})


def test_tables_built_in_code_are_validated_too() -> None:
    assert LoopConfig(steps=3).steps == 3
    with pytest.raises(ValueError, match="steps"):
        LoopConfig(steps="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stepz"):
        LoopConfig(stepz=3)  # type: ignore[call-arg]
