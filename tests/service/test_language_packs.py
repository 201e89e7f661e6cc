"""Adding and removing languages in a running ``lass serve`` (POST/DELETE /v1/languages).

One real server on the tiny random bundle (en, de, es, it) with API keys and a packs
folder: a Swedish pack goes in over HTTP while another client keeps transcribing the
bundle's languages; nothing fails, their outputs stay bit-identical, Swedish transcribes
at once (in mixed batches), survives a restart, and is gone after DELETE.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jiwer

from model.bundle import read_bundle
from model.packs import check_pack, read_pack
from model.train.data.espeak import Voice, synthesize_to_wav
from service.settings import DEFAULT_BUNDLE
from tests.conftest import REPO, Server, Utterance, stop_server
from tests.model.test_packs import random_pack
from tests.service.conftest import make_bundle, serve

USER = "user-key-0001"
ADMIN = "admin-key-0001"
KEYS = f"{USER},{ADMIN} admin"
LANGS = ("en", "de", "es", "it")


def _auth(key: str = USER) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def transcribe(server: Server, utt: Utterance, language: str, fmt: str = "json") -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/audio/transcriptions",
        files={"file": ("a.wav", utt.path.read_bytes(), "audio/wav")},
        data={"language": language, "response_format": fmt},
        headers=_auth(),
        timeout=60,
    )


def upload(server: Server, archive: bytes, key: str = ADMIN) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/languages",
        files={"file": ("pack.tar", archive, "application/x-tar")},
        headers=_auth(key),
        timeout=60,
    )


def languages(server: Server) -> dict[str, dict[str, Any]]:
    body = httpx.get(server.base_url + "/v1/languages", headers=_auth(), timeout=10).json()
    return {entry["code"]: entry for entry in body["data"]}


def tar_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            tar.add(file, arcname=f"sv-pack/{file.relative_to(folder).as_posix()}")
    return buf.getvalue()


def verbose(server: Server, speech: dict[str, list[Utterance]]) -> dict[str, Any]:
    """Each bundle language alone: the whole verbose_json body (text, timestamps and the
    log-probabilities, so a change in any logit shows)."""
    out = {}
    for lang in LANGS:
        response = transcribe(server, speech[lang][0], lang, "verbose_json")
        assert response.status_code == 200, response.text
        out[lang] = response.json()
    return out


def test_a_pack_is_added_to_a_running_server_and_removed_again(
    tmp_path: Path, tiny_bundle: Path, speech: dict[str, list[Utterance]]
) -> None:
    packs_dir = tmp_path / "packs"
    env = {"LASS_API_KEYS": KEYS, "LASS_PACKS_DIR": str(packs_dir), "LASS_MAX_WAIT_MS": "200"}
    archive = tar_of(random_pack(tiny_bundle, tmp_path / "sv"))
    server = serve(tmp_path, tiny_bundle, **env)
    try:
        before = verbose(server, speech)
        baseline = {lang: before[lang]["text"] for lang in LANGS}

        # Another client keeps transcribing the bundle's languages throughout.
        stop = threading.Event()
        seen: list[tuple[str, int, str]] = []

        def keep_transcribing() -> None:
            i = 0
            while not stop.is_set():
                lang = LANGS[i % len(LANGS)]
                r = transcribe(server, speech[lang][0], lang)
                seen.append((lang, r.status_code, r.json().get("text", r.text)))
                i += 1

        def wait_for(count: int) -> None:
            deadline = time.monotonic() + 120
            while len(seen) < count and time.monotonic() < deadline:
                time.sleep(0.05)

        other = threading.Thread(target=keep_transcribing)
        other.start()
        try:
            wait_for(2)
            at_add = len(seen)
            # Admin only: a key without the scope is refused, and nothing is added.
            refused = upload(server, archive, key=USER)
            assert refused.status_code == 403, refused.text
            assert "sv" not in languages(server)

            added = upload(server, archive)
            assert added.status_code == 201, added.text
            assert added.json()["code"] == "sv" and added.json()["source"] == "pack"
            served = languages(server)
            assert served["sv"]["identifiable"] is False and served["en"]["source"] == "bundle"
            assert (packs_dir / "sv" / "manifest.json").is_file()

            # Usable at once, in batches shared with the other languages.
            utts = [speech["en"][1], speech["de"][1], speech["es"][1], speech["it"][1]]
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(
                    pool.map(
                        lambda u: transcribe(server, u, "sv" if u is utts[0] else u.language), utts
                    )
                )
            assert all(r.status_code == 200 for r in results), [r.text for r in results]
            assert results[0].headers["x-lass-language"] == "sv"
            batch = results[0].headers["x-lass-batches"]
            assert "sv" in batch and any(f"{lang}" in batch for lang in LANGS), batch

            again = upload(server, archive)
            assert again.status_code == 409 and again.json()["error"]["code"] == "language_exists"
            wait_for(at_add + 8)  # and it keeps going for a while with Swedish served
        finally:
            stop.set()
            other.join(timeout=120)
        assert len(seen) >= at_add + 8, seen
        failed = [s for s in seen if s[1] != 200]
        assert not failed, failed
        changed = [s for s in seen if s[2] != baseline[s[0]]]
        assert not changed, changed
        assert verbose(server, speech) == before  # bit-identical, alone as before

        sv_before = transcribe(server, speech["en"][0], "sv", "verbose_json").json()
        models = httpx.get(server.base_url + "/v1/models", headers=_auth(), timeout=10).json()
        assert "sv" in models["data"][0]["languages"]
        metrics = httpx.get(server.base_url + "/metrics", headers=_auth(), timeout=10).text
        info = next(line for line in metrics.splitlines() if line.startswith("lass_model_info"))
        assert 'languages="de,en,es,it,sv"' in info

        # A bundle language can go too; both changes survive a restart.
        deleted = httpx.delete(server.base_url + "/v1/languages/es", headers=_auth(ADMIN))
        assert deleted.status_code == 200, deleted.text
        stop_server(server)
        server = serve(tmp_path, tiny_bundle, **env)
        assert set(languages(server)) == {"de", "en", "it", "sv"}
        assert transcribe(server, speech["en"][0], "sv", "verbose_json").json() == sv_before
        gone = transcribe(server, speech["es"][0], "es")
        assert gone.status_code == 400 and gone.json()["error"]["code"] == "unsupported_language"

        deleted = httpx.delete(server.base_url + "/v1/languages/sv", headers=_auth(ADMIN))
        assert deleted.status_code == 200, deleted.text
        assert "sv" not in languages(server) and not (packs_dir / "sv").exists()
        refused_sv = transcribe(server, speech["en"][0], "sv")
        assert refused_sv.status_code == 400, refused_sv.text
        assert verbose_subset(server, speech, ("en", "de", "it")) == {
            k: before[k] for k in ("en", "de", "it")
        }
        missing = httpx.delete(server.base_url + "/v1/languages/sv", headers=_auth(ADMIN))
        assert missing.status_code == 404

        for lang in ("de", "it"):
            response = httpx.delete(server.base_url + f"/v1/languages/{lang}", headers=_auth(ADMIN))
            assert response.status_code == 200, response.text
        last = httpx.delete(server.base_url + "/v1/languages/en", headers=_auth(ADMIN))
        assert last.status_code == 409 and last.json()["error"]["code"] == "last_language"
        assert json.loads((packs_dir / "removed.json").read_text()) == ["de", "es", "it"]
    finally:
        stop_server(server)


def verbose_subset(
    server: Server, speech: dict[str, list[Utterance]], langs: tuple[str, ...]
) -> dict[str, Any]:
    return {
        lang: transcribe(server, speech[lang][0], lang, "verbose_json").json() for lang in langs
    }


def test_bad_packs_are_refused_with_what_is_wrong(
    tmp_path: Path, tiny_bundle: Path, server: Server
) -> None:
    # Trained on other weights: 409, naming the weights it needs.
    other = make_bundle(tmp_path / "other", ["de", "en"], {"de": ["äpfel"], "en": ["cat"]}, seed=9)
    mismatched = upload(server, tar_of(random_pack(other, tmp_path / "sv")))
    assert mismatched.status_code == 409, mismatched.text
    error = mismatched.json()["error"]
    assert error["code"] == "backbone_mismatch"
    needed = json.loads((other / "manifest.json").read_text())["files"]["backbone.safetensors"]
    assert needed in error["message"]

    # Malformed: 422 with the problem.
    folder = random_pack(tiny_bundle, tmp_path / "sv-bad")
    tensors = folder / "pack.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\0")
    tampered = upload(server, tar_of(folder))
    assert tampered.status_code == 422 and "checksum mismatch" in tampered.text

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    escape = upload(server, buf.getvalue())
    assert escape.status_code == 422 and "outside the pack" in escape.text
    assert upload(server, b"not an archive").status_code == 422
    assert "sv" not in languages(server)


# ----------------------------------------------------- the Swedish pack we ship
SHIPPED_SV = REPO / "model" / "language_packs" / "sv"
SWEDISH = "jag tycker om att läsa böcker på kvällen"


def test_the_shipped_swedish_pack_fits_the_default_bundle_and_transcribes_swedish(
    tmp_path: Path,
) -> None:
    """The pack `lass train add-language` learnt over the default bundle (docs/training.md):
    verified, added over HTTP, and it transcribes a sentence it never heard."""
    pack = read_pack(SHIPPED_SV)
    bundle = read_bundle(DEFAULT_BUNDLE)
    check_pack(pack, bundle.manifest, bundle.model)  # bound to these very weights
    assert pack.language == "sv" and pack.manifest["metrics"]["cer"]["greedy"] < 0.15
    wav = tmp_path / "sv.wav"
    synthesize_to_wav(SWEDISH, Voice("sv"), wav)
    server = serve(
        tmp_path, DEFAULT_BUNDLE, LASS_API_KEYS=KEYS, LASS_BATCH_MODE="mixed", LASS_WARMUP="false"
    )
    try:
        assert "sv" not in languages(server)
        added = upload(server, tar_of(SHIPPED_SV))
        assert added.status_code in (200, 201), added.text
        assert languages(server)["sv"]["identifiable"] is False
        response = transcribe(server, Utterance(wav, SWEDISH, "sv", 0.0), "sv")
        assert response.status_code == 200, response.text
        text = response.json()["text"]
        assert jiwer.cer(SWEDISH, text.strip().lower()) < 0.3, text
    finally:
        stop_server(server)
