"""Stages on a micro model and a micro espeak-ng corpus: objectives, pruning, masks, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.train.adapters import LanguageAdapters
from model.train.artifacts import load_artifact, load_masks, new_model
from model.train.config import ContrastiveConfig
from model.train.context import Context
from model.train.data.batching import collate
from model.train.finetune import run_finetune
from model.train.inputs import make_inputs
from model.train.metrics import read_metrics
from model.train.objectives import ContrastiveHead, contrastive_step
from model.train.prune import magnitude_masks, round_densities, run_prune
from tests.train.stage_helpers import micro_config, micro_corpus  # noqa: F401

SEED = 0
STEPS = 40


def test_contrastive_loss_decreases_on_a_fixed_batch(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    _, cfg = micro_config(tmp_path, micro_corpus)
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    # Seeded before the weights exist: the global RNG state otherwise depends on which
    # tests ran before, and so would the initial weights and this test's outcome.
    torch.manual_seed(SEED)
    model = new_model(cfg.model, ctx.vocab())
    inputs = make_inputs(ctx, "train", cfg.pretrain, with_text=False)
    batch = collate([inputs.dataset[i] for i in range(6)])
    objective = ContrastiveConfig(
        num_negatives=8, codebook_entries=16, codevector_dim=32, final_dim=32, mask_length=4
    )
    head = ContrastiveHead(model.config.feature_dim, model.config.encoder_embed_dim, objective)
    # The targets stay fixed (conv features, their norm and the quantizer are not
    # optimized), so what is tested is that the contrastive gradient teaches the context
    # network to pick its target among the distractors. With moving targets 12 steps of a
    # micro model stay near chance (ln 9) and only a collapsed codebook "learns".
    params = [
        *model.encoder.parameters(),
        model.mask_embedding,
        *head.project_q.parameters(),
        *head.final_proj.parameters(),
    ]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(STEPS):
        # Same masks and distractors every step: only the weights change.
        generator = torch.Generator().manual_seed(1)
        result = contrastive_step(
            model, head, batch.waveforms, batch.lengths, None, objective, 0, generator
        )
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.metrics["contrastive"])
    assert result.metrics["masked_frames"] > 10
    # 13-18 % lower after 40 steps for seeds 0-3 (chance is ln 9 = 2.2)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


def test_fresh_heads_and_adapters_depend_on_the_seed_alone() -> None:
    """A stage's new contrastive head and adapters are made before its loop seeds the RNGs:
    their weights must not depend on what the process drew before (it made two pre-trainings
    of one config differ from their first step)."""
    from types import SimpleNamespace
    from typing import cast

    from model.config import get_preset
    from model.train import checkpoint as ckpt
    from model.train.artifacts import Artifact
    from model.train.pretrain import contrastive_head

    art = cast(
        Artifact, SimpleNamespace(model=SimpleNamespace(config=get_preset("tiny")), heads={})
    )
    cfg = ContrastiveConfig(codebook_entries=16)
    torch.manual_seed(1)
    first = contrastive_head(art, cfg, seed=3).state_dict()
    torch.rand(100)  # the process draws something else in between
    again = contrastive_head(art, cfg, seed=3).state_dict()
    other = contrastive_head(art, cfg, seed=4).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # the global RNG is left as it was
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with ckpt.seeded(9):
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)


def test_round_densities_and_magnitude_masks() -> None:
    densities = round_densities(0.75, 2)
    assert densities == pytest.approx([0.5, 0.25])
    torch.manual_seed(0)
    weights = {"a": torch.randn(10, 10), "b": torch.randn(4, 5) * 10}
    everything = {k: torch.ones_like(v, dtype=torch.bool) for k, v in weights.items()}
    per_tensor = magnitude_masks(weights, everything, 0.5, "per_tensor")
    assert int(per_tensor["a"].sum()) == 50 and int(per_tensor["b"].sum()) == 10
    kept_a = weights["a"].abs()[per_tensor["a"]]
    dropped_a = weights["a"].abs()[~per_tensor["a"]]
    assert kept_a.min() >= dropped_a.max()
    # Global ranking: the large-magnitude tensor keeps more than its share.
    global_ = magnitude_masks(weights, everything, 0.5, "global")
    assert int(global_["a"].sum()) + int(global_["b"].sum()) == 60
    assert int(global_["b"].sum()) > 10
    # Pruned weights never come back, even when they are the largest.
    again = magnitude_masks(weights, per_tensor, 0.25, "per_tensor")
    assert not (again["a"] & ~per_tensor["a"]).any()


def test_prune_reaches_target_sparsity_with_different_masks(
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, cfg = micro_config(tmp_path, micro_corpus)  # en, de: 0.5; es: 0.7; 2 rounds
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    path = run_prune(ctx)
    masks = load_masks(path)
    stats = masks.stats()
    assert sorted(masks.languages) == ["de", "en", "es"]
    # per-tensor rounding: within one weight per tensor of the target
    slack = len(masks.shapes) / stats.total_parameters
    assert stats.density["en"] == pytest.approx(0.5, abs=slack)
    assert stats.density["de"] == pytest.approx(0.5, abs=slack)
    assert stats.density["es"] == pytest.approx(0.3, abs=slack)
    assert stats.jaccard["en"]["de"] < 0.95, "languages got the same sub-network"
    saved = json.loads((path.parent / "mask_stats.json").read_text())
    assert saved["target_sparsity"] == {"de": 0.5, "en": 0.5, "es": 0.7}
    # Resumable per round: a second run finds every round's mask and adds nothing.
    assert (path.parent / "en" / "round2" / "mask.pt").exists()
    assert not (path.parent / "en" / "round1" / "checkpoint.pt").exists()


def test_one_shot_prune_with_the_contrastive_objective(
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, cfg = micro_config(tmp_path, micro_corpus)
    cfg.prune.method = "one_shot"  # rounds = 2 in the micro config: one_shot ignores it
    cfg.prune.objective = "contrastive"
    cfg.prune.granularity = "global"
    cfg.prune.contrastive = ContrastiveConfig(
        num_negatives=5, codebook_entries=16, codevector_dim=32, final_dim=32, mask_length=4
    )
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    path = run_prune(ctx)
    stats = load_masks(path).stats()
    assert stats.density["en"] == pytest.approx(0.5, abs=1e-3)
    assert stats.density["es"] == pytest.approx(0.3, abs=1e-3)
    for lang in ("de", "en", "es"):
        folder = path.parent / lang
        assert sorted(p.name for p in folder.iterdir()) == ["round1"], "one round only"
        rows = read_metrics(folder / "round1")
        assert rows[-1]["step"] == str(cfg.prune.steps) and rows[-1]["contrastive"], rows


def test_masked_finetune_never_moves_weights_every_language_pruned(
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, cfg = micro_config(tmp_path, micro_corpus)
    cfg.finetune.lid_steps = 0
    # AdamW's decoupled decay shrinks every weight; without it, a weight no language keeps
    # must stay bit-identical (its gradient is exactly zero).
    cfg.finetune.optim.weight_decay = 0.0
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    masks_path = run_prune(ctx)
    start = new_model(cfg.model, ctx.vocab()).state_dict()
    art = load_artifact(run_finetune(ctx))
    masks = load_masks(masks_path)
    assert art.masks is not None and art.masks.languages == masks.languages
    after = art.model.state_dict()
    name = next(iter(masks.shapes))
    kept_by_any = torch.zeros(masks.shapes[name], dtype=torch.bool)
    for lang in masks.languages:
        kept_by_any |= masks.get(lang, name)
    moved = after[name] != start[name]
    assert not moved[~kept_by_any].any(), "a weight pruned by every language changed"
    assert moved[kept_by_any].float().mean() > 0.9
    assert art.history[-1]["stage"] == "finetune"


def test_adapters_baseline_trains_only_adapters_and_ctc_head(
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, cfg = micro_config(tmp_path, micro_corpus, method="adapters")
    cfg.finetune.lid_steps = 0
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    start = new_model(cfg.model, ctx.vocab()).state_dict()
    art = load_artifact(run_finetune(ctx))
    after = art.model.state_dict()
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed == {"ctc_head.weight", "ctc_head.bias"}
    adapters = LanguageAdapters.for_model(art.model, cfg.finetune.adapter_dim)
    adapters.load_state_dict(art.heads["adapters"])
    assert any(
        float(p.detach().abs().sum()) > 0 for p in adapters.adapters["en"][0].up.parameters()
    )
    # Attached, the adapters change the output of their language only.
    model = art.model.eval()
    waveform = torch.randn(2, 16000)
    lang_ids = torch.tensor([0, 1])
    plain = model(waveform, None, lang_ids).logits
    adapters.attach(model)
    adapted = model(waveform, None, lang_ids).logits
    adapters.detach_from(model)
    assert not torch.allclose(plain, adapted)
    assert "adapters" not in dict(model.named_children())


def test_pretrain_starts_from_a_local_hugging_face_checkpoint(
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    transformers = pytest.importorskip("transformers")
    from model.checkpoint_hf import load_hf_wav2vec2
    from model.train.pretrain import run_pretrain

    hf_config = transformers.Wav2Vec2Config(
        vocab_size=12,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(hf_config).save_pretrained(tmp_path / "hf")
    _, cfg = micro_config(tmp_path, micro_corpus)
    cfg.model.init_from = str(tmp_path / "hf")
    cfg.pretrain.steps = 0  # only load and hand over
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    art = load_artifact(run_pretrain(ctx))
    _, hf_state, _ = load_hf_wav2vec2(tmp_path / "hf")
    own = art.model.state_dict()
    assert art.model.config.encoder_embed_dim == 32
    assert art.model.vocab_size == len(ctx.vocab()) != 12  # a new CTC head for our vocabulary
    shared = [k for k in hf_state if not k.startswith("ctc_head.")]
    assert shared and all(torch.equal(own[k], hf_state[k]) for k in shared)


def test_dense_baseline_exports_with_all_ones_masks(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    from model.bundle import read_bundle
    from model.train.export import run_export

    _, cfg = micro_config(tmp_path, micro_corpus, method="dense")
    cfg.finetune.steps = 1
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    run_finetune(ctx)
    bundle = read_bundle(run_export(ctx))
    assert set(bundle.masks.stats().density.values()) == {1.0}
    assert bundle.manifest["provenance"]["method"] == "dense"
    assert bundle.manifest["metrics"] is None or bundle.manifest["metrics"] == {}


def test_adapt_updates_only_the_sub_networks(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    from model.train.adapt import run_adapt

    _, cfg = micro_config(tmp_path, micro_corpus)
    cfg.adapt.optim.weight_decay = 0.0
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    masks = load_masks(run_prune(ctx))
    start = new_model(cfg.model, ctx.vocab()).state_dict()
    art = load_artifact(run_adapt(ctx))
    assert "contrastive" in art.heads and art.masks is not None
    after = art.model.state_dict()
    for name in masks.shapes:
        kept_by_any = torch.zeros(masks.shapes[name], dtype=torch.bool)
        for lang in masks.languages:
            kept_by_any |= masks.get(lang, name)
        moved = after[name] != start[name]
        assert not moved[~kept_by_any].any(), name
        assert moved[kept_by_any].any(), name
    assert not torch.equal(after["ctc_head.weight"], torch.zeros(1)) and torch.equal(
        after["ctc_head.weight"], start["ctc_head.weight"]
    ), "the contrastive objective must not touch the CTC head"


def test_dense_adapt_updates_the_whole_backbone(micro_corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    from model.train.adapt import run_adapt

    _, cfg = micro_config(tmp_path, micro_corpus, method="dense_adapt")
    cfg.adapt.optim.weight_decay = 0.0
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    start = new_model(cfg.model, ctx.vocab()).state_dict()
    art = load_artifact(run_adapt(ctx))  # no prune stage: no masks needed
    assert art.masks is None and not (tmp_path / "work" / "prune").exists()
    assert art.history[-1]["stage"] == "adapt" and art.history[-1]["masked"] is False
    after = art.model.state_dict()
    for name in art.model.prunable_shapes():
        assert (after[name] != start[name]).float().mean() > 0.9, name
    assert torch.equal(after["ctc_head.weight"], start["ctc_head.weight"])


def test_finetune_trains_a_fresh_lid_head_of_the_configured_kind(
    micro_corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from model.train.adapt import run_adapt

    _, cfg = micro_config(tmp_path, micro_corpus)
    cfg.model.lid_input = "features"
    cfg.finetune.steps = 1
    cfg.finetune.lid_steps = 2
    ctx = Context.create(cfg, tmp_path / "work", quiet=True)
    run_prune(ctx)
    adapted = load_artifact(run_adapt(ctx))
    assert adapted.model.lid_input == "features"
    cfg.model.lid_input = "encoder"  # the config changed after the earlier stages ran
    art = load_artifact(run_finetune(ctx))
    assert art.model.lid_input == "encoder"
    state = art.model.state_dict()
    assert state["lid_head.norm.weight"].shape == (art.model.config.encoder_embed_dim,)
    rows = read_metrics(ctx.stage_dir("finetune") / "lid")
    assert rows[-1]["step"] == "2" and rows[-1]["lid_accuracy"], rows
    # the CTC weights came from fine-tuning, not from a re-initialised model
    assert not torch.equal(state["ctc_head.weight"], adapted.model.state_dict()["ctc_head.weight"])
