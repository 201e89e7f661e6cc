"""How the trainer names files in what it writes (reports, corpus summaries, bundles).

Never an absolute path: a bundle must say nothing about the machine or the folder that
trained it, and every name must still lead to its file from the work folder.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def recorded_path(path: Path | str, work_dir: Path | str) -> str:
    """``path`` as the trainer records it.

    Relative to the work folder when inside it (``corpus/test.jsonl``, ``lm/en.arpa``);
    else relative to this repository when inside it (``configs/default.toml``: the
    provenance names the commit); else relative to the work folder with ``..`` segments.
    """
    # abspath, not resolve: a link inside the work folder keeps its name there.
    target = Path(os.path.abspath(path))
    work = Path(os.path.abspath(work_dir))
    for base in (work, REPO):
        if target.is_relative_to(base):
            return target.relative_to(base).as_posix()
    return Path(os.path.relpath(target, work)).as_posix()
