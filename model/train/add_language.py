"""``lass train add-language``: one more language for a bundle, as a language pack.

The bundle's weights stay exactly as they are (every existing language's output is
bit-identical with the pack served); what is learnt is what the new language needs:

- ``learned`` (default): its keep-mask over the **frozen** prunable weights, learnt with
  CTC. Each prunable weight ``W`` gets a real-valued score ``s`` (initialised from
  ``|W|``, or from the importance ``|W ⊙ ∂L/∂W|`` of a few batches); the forward pass uses
  ``W ⊙ M`` with ``M`` the top ``density`` share of scores per tensor, and the backward
  pass hands ``M``'s gradient straight to ``s`` (straight-through estimator: ``∂L/∂s =
  ∂L/∂(W ⊙ M) ⊙ W``), so scores of weights that would help rise into the kept set. The
  density stays at the target at every step. The CTC rows of the characters the bundle
  lacks train with it; the rows of characters it has stay the bundle's.
- ``baseline``: the bundle's densest mask (or the union of all its masks), fixed, and only
  the new rows train: the cheap reference the learnt mask has to beat.

Both score over the language's own columns (blank + its alphabet), as it is decoded.
Training runs through the shared loop (``model/train/loop.py``: resumable checkpoint,
progress bar, ``metrics.csv``) in ``<work>/add_language/<lang>-<method>/``; then the
language's LM is built, the pack is evaluated on the test split *as the server runs it*
(``model.packs.install_pack``) and written with ``model.packs.write_pack`` (and a tar of
it beside, ready for ``POST /v1/languages``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic.dataclasses
import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call

import lass
from model.bundle import Bundle, read_bundle
from model.masks import LanguageMasks
from model.network import LassModel
from model.packs import (
    LANGUAGE_CODE,
    LanguagePack,
    archive_pack,
    backbone_binding,
    install_pack,
    write_pack,
)
from model.train.config import (
    TABLE,
    Bool,
    Float,
    Int,
    LoopConfig,
    OptimConfig,
    PipelineConfig,
    load_config_with,
)
from model.train.context import Context, StageError
from model.train.export import git_version
from model.train.inputs import make_inputs
from model.train.loop import CHECKPOINT, train_stage_loop
from model.train.objectives import StepResult, ctc_loss
from model.train.paths import recorded_path
from model.vocab import ColumnVocabulary, Vocabulary

Method = Literal["learned", "baseline"]


@pydantic.dataclasses.dataclass(config=TABLE)
class AddLanguageConfig(LoopConfig):
    """The ``[add_language]`` table (loop keys, plus these)."""

    method: Method = "learned"
    # Kept share of the prunable weights; 0 = the mean density of the bundle's languages.
    density: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.0
    score_init: Literal["magnitude", "importance"] = "magnitude"
    importance_batches: Int = 4  # batches whose gradients rank the weights (importance)
    baseline_mask: Literal["densest", "union"] = "densest"
    lm: Bool = True  # build the language's n-gram LM (the [lm] table's settings)
    evaluate: Bool = True  # score the pack on the [evaluate] split
    # Scores start at |W| (~0.05 in the default bundle), so one learning rate suits both
    # them and the new rows; no weight decay (it would pull every score towards pruned).
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=10)
    )


def load_add_language_config(
    path: Path, overrides: Mapping[str, Any] | None = None
) -> tuple[PipelineConfig, AddLanguageConfig]:
    """A pipeline config (its ``[data]``, ``[lm]``, ``[evaluate]``, ``device`` ...) with an
    optional ``[add_language]`` table; dotted ``overrides`` reach both."""
    return load_config_with(path, "add_language", AddLanguageConfig, overrides)


# ------------------------------------------------------------------------- pieces
class _Encoder(nn.Module):
    """The transformer part of a LassModel as a module of its own, so that
    ``functional_call`` can run it with substituted (masked) prunable weights."""

    def __init__(self, model: LassModel):
        super().__init__()
        self.model = model

    def forward(self, features: Tensor, frames: Tensor | None) -> Tensor:
        """conv features ``[B, F, C]`` -> hidden ``[B, F, D]`` (dense routing)."""
        return self.model.encode(features, frames, None)


class NewRows(nn.Module):
    """The CTC rows of the characters the bundle lacks: ``weight [k, D]``, ``bias [k]``."""

    def __init__(self, k: int, dim: int):
        super().__init__()
        # The bundle's head initialisation (normal, std 0.02; zero bias).
        self.weight = nn.Parameter(torch.randn(k, dim) * 0.02)
        self.bias = nn.Parameter(torch.zeros(k))


class Scores(nn.Module):
    """One real-valued score per prunable weight, in ``names`` order."""

    def __init__(self, shapes: Mapping[str, torch.Size]):
        super().__init__()
        self.names = list(shapes)
        self.values = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes.values()])


def top_mask(score: Tensor, density: float) -> Tensor:
    """0/1 mask (``score``'s dtype and shape) keeping the ``round(density * numel)`` largest
    scores: exactly the target density, whatever the ties."""
    keep = round(density * score.numel())
    flat = torch.zeros(score.numel(), dtype=score.dtype, device=score.device)
    if keep:
        flat[torch.topk(score.detach().reshape(-1), keep).indices] = 1.0
    return flat.view_as(score)


class _StraightThrough(torch.autograd.Function):
    """Forward: the exact 0/1 top mask (``M + s - s.detach()`` would be off by rounding);
    backward: the mask's gradient handed to the scores unchanged."""

    @staticmethod
    def forward(ctx: Any, score: Tensor, density: float) -> Tensor:
        return top_mask(score, density)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def ste_mask(score: Tensor, density: float) -> Tensor:
    """:func:`top_mask` forward, identity backward (straight-through estimator)."""
    out: Tensor = _StraightThrough.apply(score, density)
    return out


@dataclass
class Columns:
    """The new language's columns: ``ids`` (blank first) into the extended vocabulary and
    the map from a global token id to its position there."""

    ids: Tensor  # [C] long
    local: Tensor  # [V_ext] long, -1 outside the language


def language_columns(vocab: Vocabulary, language: str) -> Columns:
    ids = torch.tensor(vocab.language_token_ids(language))
    local = torch.full((len(vocab),), -1, dtype=torch.long)
    local[ids] = torch.arange(len(ids))
    return Columns(ids, local)


class PackModel:
    """The frozen bundle model plus what the pack learns, for one language's batches."""

    def __init__(
        self,
        model: LassModel,
        rows: NewRows,
        columns: Columns,
        density: float,
        scores: Scores | None = None,
        fixed: Mapping[str, Tensor] | None = None,
    ):
        self.model = model
        self.encoder = _Encoder(model)
        self.rows = rows
        self.columns = columns
        self.density = density
        self.scores = scores
        self.params = dict(model.named_parameters())
        self.names = list(model.prunable_shapes())
        # baseline: W ⊙ M once (nothing upstream of the head trains)
        self.fixed = (
            {n: self.params[n].detach() * fixed[n].to(self.params[n].dtype) for n in self.names}
            if fixed is not None
            else None
        )

    def masked_weights(self) -> dict[str, Tensor]:
        """``{"model.<name>": W ⊙ M}`` for ``functional_call`` (STE masks when learning)."""
        if self.fixed is not None:
            return {f"model.{n}": w for n, w in self.fixed.items()}
        assert self.scores is not None
        return {
            f"model.{n}": self.params[n].detach() * ste_mask(s, self.density)
            for n, s in zip(self.scores.names, self.scores.values, strict=True)
        }

    def logits(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, F, C]`` logits over the language's columns and ``[B]`` frames."""
        with torch.no_grad():  # the conv encoder is frozen and not prunable
            features, frames = self.model.extract_features(waveforms, lengths)
        assert frames is not None
        if self.fixed is not None:
            with torch.no_grad():
                hidden = functional_call(self.encoder, self.masked_weights(), (features, frames))
        else:
            hidden = functional_call(self.encoder, self.masked_weights(), (features, frames))
        head = self.model.ctc_head
        weight = torch.cat([head.weight.detach(), self.rows.weight])[self.columns.ids]
        bias = torch.cat([head.bias.detach(), self.rows.bias])[self.columns.ids]
        return hidden @ weight.T.to(hidden.dtype) + bias.to(hidden.dtype), frames

    def step(self, batch: Any) -> StepResult:
        logits, frames = self.logits(batch.waveforms, batch.lengths)
        targets = self.columns.local.to(batch.targets.device)[batch.targets]
        per_sample = ctc_loss(logits, frames, targets, batch.target_lengths)
        return StepResult(
            loss=per_sample.mean(),
            weight=float(per_sample.shape[0]),
            metrics={"ctc": float(per_sample.detach().mean())},
        )

    def final_masks(self) -> dict[str, Tensor]:
        """Bool keep-masks per prunable tensor (CPU)."""
        if self.scores is not None:
            return {
                n: top_mask(s, self.density).bool().cpu()
                for n, s in zip(self.scores.names, self.scores.values, strict=True)
            }
        assert self.fixed is not None
        return {n: (w != 0).cpu() for n, w in self.fixed.items()}


def baseline_masks(masks: LanguageMasks, how: str) -> tuple[dict[str, Tensor], str]:
    """The bundle's densest language's mask, or the union of all; and a note saying which."""
    names = list(masks.shapes)
    if how == "union":
        out = {n: torch.zeros(masks.shapes[n], dtype=torch.bool) for n in names}
        for lang in masks.languages:
            for n in names:
                out[n] |= masks.get(lang, n).cpu()
        return out, f"union of {', '.join(masks.languages)}"
    density = masks.stats().density
    best = max(masks.languages, key=lambda lang: (density[lang], lang))
    return {n: masks.get(best, n).cpu() for n in names}, f"densest bundle mask ({best})"


def importance_scores(pm: PackModel, batches: list[Any], device: torch.device) -> list[Tensor]:
    """``|W ⊙ ∂L/∂W|`` summed over ``batches`` (dense weights), rescaled per tensor to the
    mean of ``|W|`` so the learning rate means the same as for magnitude scores."""
    assert pm.scores is not None
    weights = [pm.params[n] for n in pm.scores.names]
    grads = [torch.zeros_like(w) for w in weights]
    for batch in batches:
        batch = batch.to(device)
        dense = {
            f"model.{n}": w.detach().requires_grad_(True)
            for n, w in zip(pm.scores.names, weights, strict=True)
        }
        with torch.no_grad():
            features, frames = pm.model.extract_features(batch.waveforms, batch.lengths)
        hidden = functional_call(pm.encoder, dense, (features, frames))
        head = pm.model.ctc_head
        weight = torch.cat([head.weight.detach(), pm.rows.weight.detach()])[pm.columns.ids]
        bias = torch.cat([head.bias.detach(), pm.rows.bias.detach()])[pm.columns.ids]
        logits = hidden @ weight.T + bias
        assert frames is not None
        targets = pm.columns.local.to(device)[batch.targets]
        loss = ctc_loss(logits, frames, targets, batch.target_lengths).mean()
        for g, w in zip(grads, torch.autograd.grad(loss, list(dense.values())), strict=True):
            g += w.abs()
    out = []
    for w, g in zip(weights, grads, strict=True):
        imp = (w.detach() * g).abs()
        out.append(imp * (w.detach().abs().mean() / imp.mean().clamp_min(1e-30)))
    return out


# --------------------------------------------------------------------------- stage
def _extended_vocabulary(
    ctx: Context, base: Vocabulary, language: str
) -> tuple[Vocabulary, list[str]]:
    """The bundle's vocabulary plus ``language`` (its alphabet from its training text); the
    characters the bundle lacks come last, in sorted order, as the pack's rows will."""
    texts = [e.text for e in ctx.split("train").entries if e.language == language]
    if not texts:
        found = sorted({e.language for e in ctx.split("train").entries})
        raise StageError(f"no training utterances for {language!r} (the corpus has {found})")
    alphabet = Vocabulary.build({language: texts}).alphabets[language]
    new_tokens = [c for c in alphabet if c not in base.tokens]
    vocab = Vocabulary(
        tokens=[*base.tokens, *new_tokens], alphabets={**base.alphabets, language: alphabet}
    )
    return vocab, new_tokens


def _ensure_corpus(ctx: Context) -> None:
    if ctx.cfg.data.train or (ctx.work_dir / "corpus" / "train.jsonl").exists():
        return
    if not ctx.cfg.data.corpus:
        raise StageError("set data.train (a manifest) or data.corpus (a synthetic corpus TOML)")
    from model.train.tasks import run_corpus

    run_corpus(ctx)


def run_add_language(
    ctx: Context,
    acfg: AddLanguageConfig,
    bundle_path: Path,
    language: str,
    out: Path | None = None,
) -> Path:
    """Train (or resume) a pack for ``language`` over the bundle at ``bundle_path`` and
    write it to ``out`` (default ``<work>/packs/<lang>-<method>``, plus ``.tar``)."""
    if not LANGUAGE_CODE.match(language):
        raise StageError(f"language code {language!r}: letters, digits, '-' and '_' only")
    method = acfg.method
    out = out or ctx.work_dir / "packs" / f"{language}-{method}"
    if (out / "manifest.json").exists():
        ctx.echo(f"add-language: {out} exists, skipping")
        return out
    device = ctx.device
    bundle: Bundle = read_bundle(bundle_path, device=device, dtype=torch.float32)
    model = bundle.model
    if language in model.languages:
        raise StageError(f"{language!r} is already a language of {bundle_path}")
    _ensure_corpus(ctx)
    vocab, new_tokens = _extended_vocabulary(ctx, bundle.vocab, language)
    ctx._vocab = vocab  # the stage inputs encode targets with it
    columns = language_columns(vocab, language)
    assert bundle.masks is not None
    density = acfg.density or sum(bundle.masks.stats().density.values()) / len(bundle.masks)

    model.requires_grad_(False)
    model.eval()  # frozen: no dropout, as served
    torch.manual_seed(acfg.seed)
    rows = NewRows(len(new_tokens), model.config.encoder_embed_dim).to(device)
    shapes = model.prunable_shapes()
    folder = ctx.stage_dir("add_language") / f"{language}-{method}"
    note = f"learned over the frozen weights from {acfg.score_init} scores"
    if method == "learned":
        scores = Scores(shapes).to(device)
        pm = PackModel(model, rows, columns, density, scores=scores)
        modules: dict[str, nn.Module] = {"rows": rows, "scores": scores}
        params = [*rows.parameters(), *scores.parameters()]
    else:
        fixed, note = baseline_masks(bundle.masks, acfg.baseline_mask)
        density = sum(int(m.sum()) for m in fixed.values()) / sum(m.numel() for m in fixed.values())
        pm = PackModel(model, rows, columns, density, fixed=fixed)
        modules, params = {"rows": rows}, list(rows.parameters())
    inputs = make_inputs(ctx, "train", acfg, mode="per_language", languages=[language])
    if method == "learned" and not (folder / CHECKPOINT).exists():
        assert pm.scores is not None
        if acfg.score_init == "importance":
            first = inputs.plan(0)[: max(1, acfg.importance_batches)]
            batches = [inputs.collate([inputs.dataset[i] for i in b]) for b in first]
            init = importance_scores(pm, batches, device)
        else:
            init = [pm.params[n].detach().abs() for n in pm.scores.names]
        with torch.no_grad():
            for s, v in zip(pm.scores.values, init, strict=True):
                s.copy_(v)
    ctx.echo(
        f"add-language {language} ({method}): density {density:.3f}, {len(new_tokens)} new "
        f"CTC rows {new_tokens}, {len(inputs.dataset)} utterances"
    )
    if params and acfg.steps > 0:
        train_stage_loop(
            ctx,
            inputs,
            name=f"add-language {language} {method}",
            out_dir=folder,
            cfg=acfg,
            modules=modules,
            params=params,
            step_fn=lambda batch, step: pm.step(batch),
        )
    else:
        ctx.echo(
            f"add-language {language}: nothing to train ({method}, {len(new_tokens)} new rows)"
        )

    # The pack: the final mask, packed as one language of the bundle's masks.
    combined = LanguageMasks.from_state_dict(bundle.masks.state_dict(), shapes)
    combined.add(language, pm.final_masks())
    stats = combined.stats()
    mask_stats = {
        "density": stats.density[language],
        "kept": stats.kept[language],
        "specific": stats.specific[language],
        "jaccard": {k: v for k, v in stats.jaccard[language].items() if k != language},
    }
    packed = combined.packed(language).cpu()
    lm_file = _build_lm(ctx, language, folder) if acfg.lm else None
    pack = LanguagePack(
        path=folder,
        manifest={},
        language=language,
        alphabet=vocab.alphabets[language],
        new_tokens=new_tokens,
        mask=packed,
        rows_weight=rows.weight.detach().cpu(),
        rows_bias=rows.bias.detach().cpu(),
        lm_path=lm_file,
    )
    metrics = _evaluate(ctx, pack, bundle_path, vocab, folder) if acfg.evaluate else {}
    provenance = {
        "trainer": {"name": "lass", "version": lass.__version__, **git_version()},
        "method": method,
        "mask": note,
        "target_density": density,
        "bundle": recorded_path(bundle_path, ctx.work_dir),
        "config": {
            "add_language": dataclasses.asdict(acfg),
            "data": dataclasses.asdict(ctx.cfg.data),
        },
    }
    if ctx.dist.is_main:
        write_pack(
            out,
            language=language,
            alphabet=pack.alphabet,
            new_tokens=new_tokens,
            mask=packed,
            rows_weight=pack.rows_weight,
            rows_bias=pack.rows_bias,
            binding=backbone_binding(bundle.manifest),
            mask_stats=mask_stats,
            lm_file=lm_file,
            provenance=provenance,
            metrics=metrics,
        )
        archive_pack(out, out.with_name(out.name + ".tar"))
        ctx.echo(
            f"add-language: wrote {out} and {out.name}.tar (density {mask_stats['density']:.3f}, "
            f"{packed.numel()} mask bytes + {len(new_tokens)} rows)"
        )
    return out


def _build_lm(ctx: Context, language: str, folder: Path) -> Path | None:
    from model.train.lm import build_lm
    from model.train.tasks import lm_text

    for suffix in (".bin", ".arpa"):
        if (folder / "lm" / f"{language}{suffix}").exists():
            return folder / "lm" / f"{language}{suffix}"
    text = lm_text(ctx, language)
    if not text:
        ctx.echo(f"[yellow]add-language: no text for an LM of {language}")
        return None
    cfg = ctx.cfg.lm
    (folder / "lm").mkdir(exist_ok=True)
    return build_lm(
        text,
        folder / "lm" / language,
        order=cfg.order,
        prune_singletons_from=cfg.prune_singletons_from,
        binary=cfg.binary,
    )


def _evaluate(
    ctx: Context, pack: LanguagePack, bundle_path: Path, vocab: Vocabulary, folder: Path
) -> dict[str, Any]:
    """CER/WER of the pack on the evaluation split, run the way the server runs it: the
    bundle read afresh and the pack installed over it (masked routing, extended head)."""
    from model.train import evaluate as ev

    cfg = ctx.cfg.evaluate
    try:
        split = ctx.split(cfg.split)
    except StageError as exc:
        ctx.echo(f"[yellow]add-language: not evaluated ({exc})")
        return {}
    entries = [e for e in split.entries if e.language == pack.language]
    if not entries:
        ctx.echo(f"[yellow]add-language: no {cfg.split} utterances of {pack.language}")
        return {}
    served = read_bundle(bundle_path, device=ctx.device)
    install_pack(served.model, ColumnVocabulary.from_vocabulary(served.vocab), pack)
    report = ev.evaluate(
        served.model,
        vocab,
        entries,
        root=split.root,
        languages=[pack.language],
        lm_paths={pack.language: pack.lm_path} if pack.lm_path and cfg.use_lm else None,
        beam_width=cfg.beam_width,
        batch_size=cfg.batch_size,
        device=ctx.device,
        progress=ctx.dist.is_main and not ctx.quiet,
        relative_to=ctx.work_dir,
    )
    report.write_json(folder / "report.json")
    report.write_markdown(folder / "report.md")
    result = report.languages[pack.language]
    ctx.echo(f"add-language {pack.language}: CER {json.dumps(result.cer)}")
    return {
        "split": cfg.split,
        "utterances": result.utterances,
        "cer": result.cer,
        "wer": result.wer,
    }
