"""The service imports the model core, never the trainer: a serving image needs no
training code paths at run time."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_service_never_imports_model_train() -> None:
    code = (
        "import sys, pkgutil, importlib, service\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    importlib.import_module(m.name)\n"
        "from service.app import create_app\n"
        "create_app()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] == ['model', 'train'])\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
