"""Pipeline config: TOML (or YAML) onto dataclasses, unknown keys named, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.train.config import ConfigError, PipelineConfig, load_config, parse_override

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
