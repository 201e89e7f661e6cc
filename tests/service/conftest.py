"""Service test fixtures: a tiny random-weight bundle and real servers serving it.

The bundle is a random tiny LassModel with random masks (never shipped): enough to check
that the service plumbing is exact (batched == alone, timestamps, formats), not accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model.bundle import write_bundle
from model.config import get_preset
from model.masks import LanguageMasks
from model.network import LassModel
from model.vocab import Vocabulary
from tests.conftest import SENTENCES, Server, start_server, stop_server

TEST_MODEL = "lass-test-tiny"
MAX_UPLOAD = 3_000_000  # bytes: a 70 s 16 kHz WAV fits, 4 MB does not
MAX_SECONDS = 80.0


def make_bundle(
    out: Path,
    languages: list[str],
    texts: dict[str, list[str]],
    seed: int = 0,
    lid_head: bool = True,
) -> Path:
    """Write a random tiny bundle for ``languages`` (alphabets from ``texts``)."""
    torch.manual_seed(seed)
    vocab = Vocabulary.build({lang: texts[lang] for lang in languages})
    model = LassModel(get_preset("tiny"), len(vocab), languages, lid_head=lid_head).eval()
    shapes = model.prunable_shapes()
    masks = LanguageMasks(shapes)
    gen = torch.Generator().manual_seed(seed + 1)
    for lang in languages:
        masks.add(lang, {n: torch.rand(s, generator=gen) < 0.7 for n, s in shapes.items()})
    return write_bundle(out, model, vocab, masks, provenance={"name": TEST_MODEL, "test": True})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-language (en, de, es, it) tiny bundle with a LID head."""
    root = tmp_path_factory.mktemp("bundle")
    return make_bundle(root / "tiny", sorted(SENTENCES), SENTENCES)


def serve(tmp_path: Path, bundle: Path, **env: str) -> Server:
    """A real ``lass serve`` on ``bundle``, returned once /health/ready says 200."""
    # The eager forward: compiling (LASS_COMPILE=auto on the CPU) takes minutes at start-up;
    # the compiled forward has its own tests (tests/model/test_compiled.py, test_worker.py).
    full = {"LASS_BUNDLE": str(bundle), "LASS_TORCH_THREADS": "1", "LASS_COMPILE": "off", **env}
    return start_server(tmp_path, full, ready_path="/health/ready")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[Server]:
    """One server for the session (starting one costs seconds), batching mixed languages
    with a 300 ms window so that concurrent requests share a batch."""
    srv = serve(
        tmp_path_factory.mktemp("server"),
        tiny_bundle,
        LASS_BATCH_MODE="mixed",
        LASS_MAX_WAIT_MS="300",
        LASS_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        LASS_MAX_AUDIO_SECONDS=str(MAX_SECONDS),
    )
    yield srv
    stop_server(srv)
