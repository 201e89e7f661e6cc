"""Pipeline config: TOML onto dataclasses, unknown keys named, overrides."""

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
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_parse_override() -> None:
    assert parse_override("finetune.steps=5") == ("finetune.steps", 5)
    assert parse_override("data.train=x/y.jsonl") == ("data.train", "x/y.jsonl")
    assert parse_override("prune.sparsity=0.7") == ("prune.sparsity", 0.7)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")))
def test_committed_configs_load(path: Path) -> None:
    load_config(path)
