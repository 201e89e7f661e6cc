"""``lass train add-language`` at micro scale: a Swedish pack over a tiny en+de bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model.bundle import read_bundle
from model.masks import LanguageMasks
from model.packs import check_pack, read_pack
from model.train import checkpoint as ckpt
from model.train.add_language import (
    load_add_language_config,
    run_add_language,
    ste_mask,
    top_mask,
)
from model.train.cli import app
from model.train.context import Context
from model.train.data.espeak import Voice, synthesize_to_wav
from model.train.data.manifest import ManifestEntry, write_manifest
from tests.service.conftest import make_bundle

SWEDISH = ["hej på dig", "jag bor i en stad", "vi åker båt i dag", "det är en fin dag"]
TEXTS = {"en": ["the quick brown fox jumps over the lazy dog"], "de": ["die äpfel sind schön"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bundle, corpus folder with train/test manifests of Swedish espeak speech)."""
    root = tmp_path_factory.mktemp("add_language")
    bundle = make_bundle(root / "bundle", ["de", "en"], TEXTS)
    entries = []
    for i, text in enumerate(SWEDISH):
        rel = f"sv/{i}.wav"
        entries.append(
            ManifestEntry(
                rel, text, "sv", synthesize_to_wav(text, Voice("sv", rate=200), root / rel)
            )
        )
    write_manifest(root / "train.jsonl", entries)
    write_manifest(root / "test.jsonl", entries[:2])
    return bundle, root


def config(tmp_path: Path, corpus: Path, extra: str = "") -> Path:
    path = tmp_path / "add.toml"
    path.write_text(
        f'work_dir = "work"\n[data]\ntrain = "{corpus / "train.jsonl"}"\n'
        f'test = "{corpus / "test.jsonl"}"\n'
        "[lm]\norder = 2\n[evaluate]\nbeam_width = 4\n"
        "[add_language]\nsteps = 3\ncheckpoint_every = 2\nlog_every = 1\n"
        "batch_seconds = 30.0\nmax_batch_size = 4\ndensity = 0.5\n"
        # a few steps must move scores across the threshold
        "[add_language.optim]\nlr = 1e-2\nwarmup_steps = 1\n" + extra
    )
    return path


def test_straight_through_mask_keeps_the_density_and_passes_gradients() -> None:
    score = torch.tensor([[0.3, -1.0, 2.0], [0.1, 0.5, 0.0]], requires_grad=True)
    mask = ste_mask(score, 0.5)
    assert torch.equal(mask.detach(), torch.tensor([[1.0, 0, 1], [0, 1, 0]]))
    (mask * torch.arange(6.0).view(2, 3)).sum().backward()
    assert score.grad is not None
    assert torch.equal(score.grad, torch.arange(6.0).view(2, 3))  # straight through
    assert int(top_mask(torch.zeros(10), 0.3).sum()) == 3  # ties: still exactly the share


def test_learned_pack_over_the_frozen_bundle(setup: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, corpus = setup
    result = CliRunner().invoke(
        app,
        [
            "add-language",
            str(config(tmp_path, corpus)),
            "--bundle",
            str(bundle),
            "--language",
            "sv",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "work" / "packs" / "sv-learned"
    pack = read_pack(out)
    assert (out.parent / "sv-learned.tar").is_file()
    served = read_bundle(bundle)
    check_pack(pack, served.manifest, served.model)  # bound to these weights
    assert pack.new_tokens == ["å"]  # the only Swedish character en+de lack
    assert pack.lm_path is not None and pack.lm_path.is_file()
    assert pack.manifest["metrics"]["cer"]["greedy"] >= 0.0
    assert pack.manifest["provenance"]["method"] == "learned"

    shapes = served.model.prunable_shapes()
    masks = LanguageMasks.from_state_dict({"sv": pack.mask}, shapes)
    total = sum(s.numel() for s in shapes.values())
    kept = sum(round(0.5 * s.numel()) for s in shapes.values())
    assert masks.stats().kept["sv"] == kept  # the target density, exactly
    # Learnt, not just the magnitude ranking it started from: training moved weights
    # across the threshold.
    params = dict(served.model.named_parameters())
    magnitude = {n: top_mask(params[n].detach().abs(), 0.5).bool() for n in shapes}
    moved = sum(int((masks.get("sv", n) != magnitude[n]).sum()) for n in shapes)
    assert 0 < moved < total
    assert pack.manifest["mask"]["density"] == pytest.approx(kept / total)


def test_baseline_pack_takes_the_densest_bundle_mask(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, corpus = setup
    cfg, acfg = load_add_language_config(
        config(tmp_path, corpus),
        {
            "add_language.method": "baseline",
            "add_language.evaluate": False,
            "add_language.lm": False,
        },
    )
    assert acfg.method == "baseline"
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    out = run_add_language(ctx, acfg, bundle, "sv")
    pack = read_pack(out)
    served = read_bundle(bundle)
    assert served.masks is not None
    density = served.masks.stats().density
    densest = max(density, key=lambda lang: (density[lang], lang))
    assert torch.equal(pack.mask, served.masks.packed(densest))
    assert "densest" in pack.manifest["provenance"]["mask"]
    init = torch.Generator().manual_seed(0)  # trained rows are not the initial ones
    assert not torch.allclose(pack.rows_weight, torch.randn(1, 256, generator=init) * 0.02)


def test_training_resumes_from_its_checkpoint(setup: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, corpus = setup
    overrides = {
        "add_language.evaluate": False,
        "add_language.lm": False,
        "add_language.score_init": "importance",
        "add_language.importance_batches": 1,
        "add_language.steps": 2,
    }
    cfg, acfg = load_add_language_config(config(tmp_path, corpus), overrides)
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    first = run_add_language(ctx, acfg, bundle, "sv", tmp_path / "first")
    folder = tmp_path / "work" / "add_language" / "sv-learned"
    assert ckpt.load(folder / "checkpoint.pt")["state"]["step"] == 2
    cfg, acfg = load_add_language_config(
        config(tmp_path, corpus), {**overrides, "add_language.steps": 4}
    )
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    second = run_add_language(ctx, acfg, bundle, "sv", tmp_path / "second")
    assert ckpt.load(folder / "checkpoint.pt")["state"]["step"] == 4
    header, *rows = (folder / "metrics.csv").read_text().splitlines()
    step = header.split(",").index("step")
    assert [row.split(",")[step] for row in rows] == ["1", "2", "3", "4"]
    assert not torch.equal(read_pack(first).mask, read_pack(second).mask)
