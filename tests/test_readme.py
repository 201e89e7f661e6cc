"""Every `lass` command line in the README parses: its sub-command exists and takes the
options the README gives it (each one's behaviour is tested where its code is)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from tests.conftest import REPO


def readme_lass_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("lass "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_readme_lass_commands_parse() -> None:
    commands = readme_lass_commands()
    assert len(commands) >= 5
    for args in commands:
        words = [a for a in args if not a.startswith("-")]
        options = [a.split("=")[0] for a in args if a.startswith("--")]
        result = subprocess.run(
            [sys.executable, "-m", "lass", *words[:2], "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (args, result.stderr)
        for option in options:
            if option != "--version":
                assert option in result.stdout, (args, option)
