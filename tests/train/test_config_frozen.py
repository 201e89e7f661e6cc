"""The JSON the trainer records from its configs stays byte-identical.

A comparison in progress resumes only when ``_comparable(cfg)`` equals the ``config.json``
it wrote when it started (``model/train/compare.py``), and bundles, checkpoints and pack
provenance record ``dataclasses.asdict`` of the same tables. So a change to how configs are
loaded must not change one byte of what they serialize to: ``80`` read for a float field
stays ``80.0``, the key order stays the field order, "off" keeps its value.

``frozen_config_json.json`` holds what :func:`snapshots` produced for the committed configs
with the hand-written loader the pydantic tables replaced (a config changed on purpose is
re-pinned: ``compare.toml``'s fine-tuning recipe, docs/paper-comparison.md, whose shared
tables stayed as they were, and its ``[compare]`` table's ``keep_results``, which no run's
config records; ``default-v2.toml``'s LMs, trigrams before its run started); the comparison
is on the text
``json.dumps(..., indent=1)`` writes (the format of ``config.json``), not on ``==``, which
would let ``80`` pass for ``80.0``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from model.train.add_language import load_add_language_config
from model.train.compare import (
    _comparable,
    load_compare_config,
    plan_runs,
    resource_groups,
    run_config,
    shared_config,
)
from model.train.config import PipelineConfig, load_config

REPO = Path(__file__).resolve().parents[2]
FROZEN = Path(__file__).with_name("frozen_config_json.json")


def _pipeline_json(cfg: PipelineConfig, path: Path) -> dict[str, Any]:
    """What ``run_pipeline`` writes as ``<work>/config.json`` (the source made relative)."""
    d = cfg.to_dict()
    d["source"] = path.relative_to(REPO).as_posix()
    return json.loads(json.dumps(d, default=str))


def snapshots() -> dict[str, Any]:
    """Every recorded form of every committed config, keyed ``<config>:<what>``."""
    out: dict[str, Any] = {"PipelineConfig():to_dict": PipelineConfig().to_dict()}
    for path in sorted((REPO / "configs").glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        name = path.name
        if "[add_language]" in text:
            cfg, acfg = load_add_language_config(path)
            out[f"{name}:add_language"] = dataclasses.asdict(acfg)
            out[f"{name}:data"] = dataclasses.asdict(cfg.data)
        elif "[compare]" in text:
            cfg, ccfg = load_compare_config(path)
            out[f"{name}:compare"] = dataclasses.asdict(ccfg)
            out[f"{name}:shared"] = _comparable(shared_config(cfg))
            groups = resource_groups(cfg, ccfg)
            runs, _ = plan_runs(cfg, ccfg, groups)
            for spec in runs:
                out[f"{name}:run:{spec.name}"] = _comparable(run_config(cfg, spec, groups))
        else:
            cfg = load_config(path)
        out[f"{name}:comparable"] = _comparable(cfg)
        out[f"{name}:pipeline"] = _pipeline_json(cfg, path)
    return json.loads(json.dumps(out, default=str))


@pytest.fixture(scope="module")
def now() -> dict[str, Any]:
    return snapshots()


@pytest.fixture(scope="module")
def frozen() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FROZEN.read_text(encoding="utf-8"))
    return data


def test_recorded_config_json_is_unchanged(now: dict[str, Any], frozen: dict[str, Any]) -> None:
    changed = [
        key
        for key in sorted(frozen)
        if key not in now or json.dumps(now[key], indent=1) != json.dumps(frozen[key], indent=1)
    ]
    assert not changed, f"recorded config JSON changed or missing: {changed}"


def test_every_recorded_form_is_pinned(now: dict[str, Any], frozen: dict[str, Any]) -> None:
    """A new config in configs/ (or a new run of the comparison) gets a frozen copy too."""
    assert sorted(now) == sorted(frozen)


def test_the_pins_cover_the_configs_the_comparison_resumes_with(frozen: dict[str, Any]) -> None:
    for key in ("compare.toml:comparable", "compare.toml:shared", "default.toml:comparable"):
        assert key in frozen
    assert frozen["compare.toml:comparable"]["finetune"]["steps"] == 2000
    # a float field keeps its float spelling in the JSON text
    assert '"batch_seconds": 80.0' in json.dumps(frozen["default.toml:comparable"]["pretrain"])
