"""Shared by the stage tests: a micro espeak-ng corpus and a micro pipeline config.

The model is far smaller than ``tiny`` (2 layers of 64) so that every stage runs a few
steps in seconds on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model.train.config import PipelineConfig, load_config
from model.train.data.espeak import Voice, synthesize_to_wav
from model.train.data.manifest import ManifestEntry, write_manifest

SENTENCES = {
    "en": ["the cat sat on the mat", "good morning to you", "a red bus", "we like tea"],
    "de": ["guten morgen", "das wetter ist schön", "ich bin müde", "der hund bellt"],
    "es": ["buenos días", "el perro come pan", "la casa es azul", "me gusta el sol"],
}

MICRO_MODEL = """
[model]
preset = "tiny"
[model.overrides]
extractor_conv_layer_config = [
    [32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2],
]
encoder_embed_dim = 64
encoder_num_layers = 2
encoder_num_heads = 2
encoder_ff_interm_features = 128
encoder_pos_conv_kernel = 16
encoder_pos_conv_groups = 4
encoder_projection_dropout = 0.0
encoder_attention_dropout = 0.0
encoder_ff_interm_dropout = 0.0
encoder_dropout = 0.0
"""

MICRO_STAGES = """
[pretrain]
steps = 3
checkpoint_every = 2
log_every = 1
batch_seconds = 30.0
max_batch_size = 6
[pretrain.optim]
warmup_steps = 1
[pretrain.contrastive]
num_negatives = 5
codebook_entries = 16
codevector_dim = 32
final_dim = 32
mask_length = 4
[prune]
method = "iterative"
rounds = 2
steps = 2
sparsity = 0.5
sparsity_per_language = { es = 0.7 }
max_batch_size = 4
[prune.optim]
lr = 1e-2  # a few steps must move the weights enough to rank them per language
warmup_steps = 1
[adapt]
steps = 2
max_batch_size = 6
[adapt.contrastive]
num_negatives = 5
codebook_entries = 16
codevector_dim = 32
final_dim = 32
mask_length = 4
[finetune]
steps = 3
lid_steps = 2
max_batch_size = 6
checkpoint_every = 2
log_every = 1
[evaluate]
beam_width = 4
batch_size = 6
split = "dev"
[lm]
order = 2
"""


@pytest.fixture(scope="session")
def micro_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train.jsonl`` (4 per language) and ``dev.jsonl`` (2 per language) of espeak speech."""
    root = tmp_path_factory.mktemp("micro_corpus")
    train: list[ManifestEntry] = []
    dev: list[ManifestEntry] = []
    for lang, sentences in SENTENCES.items():
        for i, text in enumerate(sentences):
            rel = f"{lang}/{i}.wav"
            duration = synthesize_to_wav(text, Voice(lang, rate=200), root / rel)
            train.append(ManifestEntry(rel, text, lang, duration))
            if i < 2:
                dev.append(ManifestEntry(rel, text, lang, duration))
    write_manifest(root / "train.jsonl", train)
    write_manifest(root / "dev.jsonl", dev)
    return root


def micro_config(
    tmp_path: Path, corpus: Path, method: str = "lass", extra: str = ""
) -> tuple[Path, PipelineConfig]:
    """Write a micro pipeline config into ``tmp_path``; returns (path, loaded config)."""
    text = (
        f'name = "micro"\nmethod = "{method}"\nwork_dir = "work"\n'
        f'[data]\ntrain = "{corpus / "train.jsonl"}"\ndev = "{corpus / "dev.jsonl"}"\n'
        f'test = "{corpus / "dev.jsonl"}"\n' + MICRO_MODEL + MICRO_STAGES + extra
    )
    path = tmp_path / "micro.toml"
    path.write_text(text)
    return path, load_config(path)
