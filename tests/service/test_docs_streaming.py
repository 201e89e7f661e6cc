"""docs/streaming.md: every example runs against a real server, and the events, close codes
and settings it lists are the ones the code has."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from service.settings import Settings
from tests.conftest import REPO, Server, Utterance

DOC = REPO / "docs" / "streaming.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_examples_run(server: Server, speech: dict[str, list[Utterance]], tmp_path: Path) -> None:
    shutil.copy(speech["en"][0].path, tmp_path / "speech.wav")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "LASS_URL": server.base_url, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    python, bash = blocks("python"), blocks("bash")
    assert len(python) == 2 and len(bash) == 1
    runs = [[sys.executable, "-c", code] for code in python]
    runs += [["bash", "-euo", "pipefail", "-c", code] for code in bash]
    for command in runs:
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, f"{command[-1]}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stdout.strip(), command[-1]


def test_every_stream_setting_is_documented() -> None:
    text = DOC.read_text()
    for name in Settings.model_fields:
        if name.startswith("stream_") or name == "max_streams":
            assert f"LASS_{name.upper()}" in text, name


def test_every_close_reason_the_code_raises_is_documented() -> None:
    text = DOC.read_text()
    sources = "".join(
        (REPO / f).read_text()
        for f in (
            "service/streaming/channel.py",
            "service/routers/stream.py",
            "service/routers/realtime.py",
        )
    )
    codes = set(re.findall(r'client_error\(\s*\w+,\s*"(\w+)"', sources))
    codes |= set(re.findall(r'RealtimeError\(\s*"(\w+)"', sources))
    assert len(codes) >= 12
    for code in codes:
        assert f"`{code}`" in text, code
