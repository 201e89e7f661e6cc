"""Every third-party module the shipped code imports comes with ``pip install lass-asr``.

The shipped code is the non-test Python in ``model/``, ``service/``, ``lass/`` and
``bench/`` (all four are packaged, and ``lass bench`` runs the benchmarks). Each top-level
module they import statically (``ast``: ``import x`` and ``from x import y``, at any depth)
must be provided by a distribution that ``[project] dependencies`` installs; a module found
only in the ``dev`` extra fails the test.

What counts as installed: the listed distributions and, transitively, what they require
(with the extras asked for, markers evaluated here, per ``importlib.metadata.requires``).
pip installs that closure, so the import works after a plain install; e.g. ``starlette``
comes with ``fastapi`` whose API is built on it. Listing a directly imported distribution
is still preferred: a dependency that merely happens to pull it in may drop it.

Not checked: the standard library, our own packages, relative imports, imports under
``if TYPE_CHECKING:`` (never run) and optional ones, i.e. imports inside a ``try`` body
whose handlers name ``ImportError`` or ``ModuleNotFoundError`` (the code copes when they
are missing). Dynamic imports (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from importlib import metadata
from typing import Any

from packaging.requirements import Requirement

from tests.conftest import REPO

SHIPPED = ("model", "service", "lass", "bench")
OPTIONAL_GUARDS = {"ImportError", "ModuleNotFoundError"}


def normalize(name: str) -> str:
    """PEP 503: case-insensitive, runs of ``-``, ``_`` and ``.`` are one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def project_dependencies() -> list[str]:
    """The requirement strings of ``[project] dependencies``."""
    return list(_pyproject()["project"]["dependencies"])


def own_packages() -> set[str]:
    """Top-level packages of this project (setuptools' ``packages.find`` include)."""
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.rstrip("*").rstrip(".") for pattern in include} | {"tests"}


def _guards_imports(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught] if caught else []
    return any(isinstance(n, ast.Name) and n.id in OPTIONAL_GUARDS for n in names)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _required_imports(node: ast.AST) -> Iterator[tuple[str, int]]:
    """(top-level module, line) of every absolute import that is neither optional nor
    type-checking only, anywhere below ``node``."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name.partition(".")[0], node.lineno
        return
    if isinstance(node, ast.ImportFrom):
        if node.level == 0 and node.module:
            yield node.module.partition(".")[0], node.lineno
        return
    skip: list[ast.stmt] = []
    if (isinstance(node, ast.Try | ast.TryStar) and any(map(_guards_imports, node.handlers))) or (
        isinstance(node, ast.If) and _is_type_checking(node.test)
    ):
        skip = node.body  # optional, or never run
    for child in ast.iter_child_nodes(node):
        if child not in skip:
            yield from _required_imports(child)


def imports_of(source: str, filename: str = "<source>") -> dict[str, list[int]]:
    """Top-level module -> lines where ``source`` imports it unconditionally."""
    found: dict[str, list[int]] = {}
    for module, line in _required_imports(ast.parse(source, filename)):
        found.setdefault(module, []).append(line)
    return found


def runtime_imports(roots: Iterable[str] = SHIPPED) -> dict[str, list[str]]:
    """Third-party top-level module -> ``path:line`` of its imports in the shipped code."""
    ignored = set(sys.stdlib_module_names) | own_packages()
    found: dict[str, list[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO)
            if "tests" in rel.parts or path.name.startswith("test_"):
                continue
            for module, lines in imports_of(path.read_text(encoding="utf-8"), str(rel)).items():
                if module not in ignored:
                    found.setdefault(module, []).extend(f"{rel}:{n}" for n in lines)
    return found


def installed_closure(requirements: Iterable[str]) -> set[str]:
    """Normalized names of the distributions that installing ``requirements`` brings:
    them and, recursively, what each requires (with the extras asked for)."""
    seen: set[tuple[str, str]] = set()  # (distribution, extra or "")
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = normalize(req.name)
        wanted = {(name, ""), *((name, normalize(e)) for e in req.extras)} - seen
        if not wanted:
            continue
        seen |= wanted
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (e.g. another platform's): nothing to follow
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": extra}) for _, extra in wanted
            ):
                todo.append(sub)
    return {name for name, _ in seen}


def missing_runtime_dependencies(
    imports: dict[str, list[str]], dependencies: Iterable[str]
) -> dict[str, str]:
    """Module -> why it is not provided, for the imported modules that installing
    ``dependencies`` does not bring."""
    provided = installed_closure(dependencies)
    by_module = metadata.packages_distributions()
    missing = {}
    for module, where in sorted(imports.items()):
        dists = sorted({normalize(d) for d in by_module.get(module, [])})
        if not dists:
            missing[module] = (
                f"no installed distribution provides it (imported at {', '.join(where)})"
            )
        elif not provided & set(dists):
            missing[module] = (
                f"provided by {' or '.join(dists)}, which [project] dependencies do not "
                f"install (imported at {', '.join(where)})"
            )
    return missing


def test_shipped_imports_are_runtime_dependencies() -> None:
    imports = runtime_imports()
    assert {"torch", "numpy", "fastapi", "jiwer"} <= set(imports)  # the scan sees the code
    missing = missing_runtime_dependencies(imports, project_dependencies())
    assert not missing, "\n".join(f"{m}: {why}" for m, why in missing.items())


def test_a_dependency_moved_to_the_dev_extra_is_reported() -> None:
    dependencies = [d for d in project_dependencies() if normalize(Requirement(d).name) != "jiwer"]
    missing = missing_runtime_dependencies(runtime_imports(), dependencies)
    assert set(missing) == {"jiwer"}
    assert "provided by jiwer" in missing["jiwer"]
    assert "model/train/evaluate.py:" in missing["jiwer"]


def test_optional_and_type_checking_imports_are_exempt() -> None:
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
import a.b
from c.d import e
from . import own
if TYPE_CHECKING:
    import typed_only
try:
    import optional
except (ModuleNotFoundError, OSError):
    optional = None
try:
    import needed
finally:
    pass
try:
    import broad
except Exception:
    pass
def f():
    try:
        from lazy_optional import g
    except ImportError:
        return None
    import lazy_needed
"""
    found = imports_of(source)
    assert set(found) == {"__future__", "typing", "a", "c", "needed", "broad", "lazy_needed"}
    assert found["needed"] == [14]


def test_transitive_requirements_count_as_installed() -> None:
    closure = installed_closure(["fastapi"])
    assert {"fastapi", "starlette", "pydantic"} <= closure
    assert "jiwer" not in closure
    # an extra's requirements only when the extra is asked for
    assert "httptools" not in installed_closure(["uvicorn"])
    if _installed("httptools"):
        assert "httptools" in installed_closure(["uvicorn[standard]"])


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_normalize() -> None:
    assert normalize("PyYAML") == normalize("pyyaml") == "pyyaml"
    assert normalize("pydantic_settings") == normalize("Pydantic.Settings") == "pydantic-settings"
