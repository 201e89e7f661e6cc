"""The README's `openai` client example runs unchanged against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Server, Utterance

README_URL = "http://127.0.0.1:8000/v1"


def test_readme_openai_example_runs(
    server: Server, speech: dict[str, list[Utterance]], tmp_path: Path
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    (example,) = [block for block in blocks if "OpenAI(" in block]
    assert README_URL in example
    shutil.copy(speech["de"][0].path, tmp_path / "a.wav")
    result = subprocess.run(
        [sys.executable, "-c", example.replace(README_URL, server.base_url + "/v1")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
