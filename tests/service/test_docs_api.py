"""docs/api.md: every ```bash example runs against a real server, every route is documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from service.app import create_app
from service.settings import Settings
from tests.conftest import REPO, Server, Utterance

DOC = REPO / "docs" / "api.md"


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)


def test_every_route_is_documented() -> None:
    text = DOC.read_text()
    app = create_app(Settings(bundle=Path("/nonexistent")))  # routes only; nothing loads
    paths = {
        getattr(r, "path", "")
        for r in app.routes
        if not getattr(r, "path", "").startswith(("/docs", "/redoc", "/openapi"))
    }
    for path in paths:
        documented = path.replace("{model_id}", "whisper-1")
        assert documented in text, f"{path} is not in docs/api.md"


def test_curl_examples_run(
    server: Server, speech: dict[str, list[Utterance]], tmp_path: Path
) -> None:
    blocks = bash_blocks()
    assert len(blocks) >= 10
    shutil.copy(speech["en"][0].path, tmp_path / "speech.wav")
    env = {**os.environ, "LASS_URL": server.base_url}
    for block in blocks:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (
            proc.returncode == 0
        ), f"{block}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        if "curl" in block:
            assert proc.stdout.strip(), block
