"""constraints.txt, the lock: every distribution pinned once, every requirement of
pyproject.toml (run time and dev) pinned to a version its range allows, and the venv the
tests run in holds exactly the pinned versions (make setup-dev installs with ``-c``)."""

from __future__ import annotations

import re
import sysconfig
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO
from tests.test_runtime_dependencies import _pyproject, normalize, project_dependencies

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins() -> dict[str, Version]:
    """``name==version`` lines of constraints.txt, by normalized name; other lines fail."""
    out: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"not a name==version pin: {line!r} (no paths, URLs or editables)"
        name = normalize(match.group(1))
        assert name not in out, f"{name} pinned twice"
        out[name] = Version(match.group(2))
    return out


def installed_versions() -> dict[str, Version]:
    """Distributions installed in the venv's site-packages, by normalized name. Only there:
    once imported, setuptools puts its ``_vendor`` folder on sys.path, whose private copies
    (packaging among them) ``metadata.distributions()`` would list as well."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {
        normalize(d.metadata["Name"]): Version(d.version)
        for d in metadata.distributions(path=paths)
    }


def test_every_requirement_is_pinned_within_its_range() -> None:
    locked = pins()
    assert "lass-asr" not in locked  # our own package is installed from the checkout
    dev = _pyproject()["project"]["optional-dependencies"]["dev"]
    for text in [*project_dependencies(), *dev]:
        requirement = Requirement(text)
        name = normalize(requirement.name)
        assert name in locked, f"{name} is required but not in constraints.txt: run make lock"
        assert requirement.specifier.contains(
            locked[name], prereleases=True
        ), f"constraints.txt pins {name}=={locked[name]}, outside pyproject's {requirement}"


def test_the_venv_holds_the_locked_versions() -> None:
    # What the tests run with is what the lock says; a drifted venv (a pip install -U
    # without make lock) fails here instead of landing an untested pin.
    import setuptools  # noqa: F401  # appends its _vendor folder to sys.path, as in CI

    installed, locked = installed_versions(), pins()
    assert installed["packaging"] == locked["packaging"]  # not setuptools' vendored copy
    wrong = {
        name: f"locked {version}, installed {installed[name]}"
        for name, version in locked.items()
        if name in installed and installed[name] != version
    }
    assert not wrong, f"{wrong}: make setup-dev, or make lock after a tested upgrade"
    # And nothing in the venv escapes the lock (setuptools once did: pip freeze omits it),
    # but pip, which comes with the interpreter, and our own package.
    unlocked = set(installed) - set(locked) - {"pip", "lass-asr"}
    assert not unlocked, f"installed but not locked: {sorted(unlocked)}: run make lock"
    for name in ("torch", "av", "fastapi", "pytest"):  # the core is there at all
        assert name in installed
