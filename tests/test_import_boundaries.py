"""Who may import what (docs/interfaces.md, "Parts and imports"), checked on the source.

Static: every ``import`` / ``from ... import`` in a part's files, at any depth (a lazy
import inside a function still runs), except under ``if TYPE_CHECKING:``. Relative imports
are not used in this repository. ``tests/service/test_no_training_code.py`` checks the
service's import closure at run time as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

# part -> module prefixes its files must never import (``lass`` itself, the version, is
# fine; its command line and client are not)
LASS_APPS = ("lass.cli", "lass.client", "lass.__main__")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "model": ("model.train", "service", "bench", *LASS_APPS),  # the core, not model/train
    "model.train": ("service", "bench", *LASS_APPS),
    "service": ("model.train", "bench", *LASS_APPS),
}
# Modules that must load without torch: the beam-search child starts in ~0.3 s, the
# batcher and the endpointer are pure logic, `lass --help` stays fast.
TORCH_FREE = (
    "model.config",
    "model.beam_search",
    "service.batcher",
    "service.streaming.endpointer",
    "lass.cli",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str | None:
    """The part a module belongs to (the longest matching key of FORBIDDEN)."""
    best = None
    for part in FORBIDDEN:
        if (module == part or module.startswith(part + ".")) and len(part) > len(best or ""):
            best = part
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import outside ``if TYPE_CHECKING:`` blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            # "from model import train" imports model.train
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def violations() -> list[str]:
    found = []
    for path in sorted(REPO.glob("*/**/*.py")):
        module = _module_name(path)
        part = _part(module)
        if part is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, imported in _imports(tree):
            bad = [p for p in FORBIDDEN[part] if imported == p or imported.startswith(p + ".")]
            if bad:
                rel = path.relative_to(REPO)
                found.append(f"{rel}:{line}: {part} imports {imported}")
    return found


def test_parts_import_only_what_they_may() -> None:
    assert violations() == []


def test_the_rules_see_a_forbidden_import(tmp_path: Path) -> None:
    """The walker finds lazy and from-imports, and skips TYPE_CHECKING blocks."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from service.app import App\n"
        "def f():\n    from model import train\n    import service.audio\n"
    )
    seen = [name for _, name in _imports(ast.parse(code))]
    assert "model.train" in seen and "service.audio" in seen and "service.app" not in seen
    assert _part("model.train.lm") == "model.train" and _part("model.vocab") == "model"
    assert _part("bench.decoding") is None


@pytest.mark.parametrize("module", TORCH_FREE)
def test_module_loads_without_torch(module: str) -> None:
    code = f"import sys, {module}\nsys.exit('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{module} imports torch\n{result.stderr}"
