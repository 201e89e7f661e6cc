"""Fault injection, for tests and reliability runs only (``LASS_FAULTS``; empty = off).

The engine isolates failures: a failing batch is re-run one item at a time so that only
the item that fails again fails; an out-of-memory error splits the batch in halves and
retries; a failing decode fails its own request. Each ends as 503 ``model_error`` for the
affected requests only, counted in ``lass_engine_faults_total``. These faults are rare in
real life, so the tests and ``bench/reliability.py`` provoke them on purpose through a
comma-separated spec:

- ``forward:<lang>``: a forward pass holding an item of ``<lang>`` raises an error;
- ``oom:<n>``: a forward pass of more than ``n`` items raises ``torch.OutOfMemoryError``;
- ``decode:<lang>``: decoding an utterance of ``<lang>`` raises an error.

Example: ``LASS_FAULTS="forward:de,oom:2,decode:fr"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class InjectedFaultError(RuntimeError):
    """A fault that ``LASS_FAULTS`` asked for."""


@dataclass(frozen=True)
class Faults:
    """The parsed ``LASS_FAULTS`` spec; ``Faults()`` injects nothing."""

    forward: frozenset[str] = frozenset()
    decode: frozenset[str] = frozenset()
    oom_above: int | None = None

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``"forward:de,oom:2,decode:fr"`` -> Faults; ValueError naming a bad entry."""
        forward: set[str] = set()
        decode: set[str] = set()
        oom_above: int | None = None
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            kind, _, arg = entry.partition(":")
            if kind == "forward" and arg:
                forward.add(arg)
            elif kind == "decode" and arg:
                decode.add(arg)
            elif kind == "oom" and arg.isdigit():
                oom_above = int(arg)
            else:
                raise ValueError(
                    f"LASS_FAULTS entry {entry!r}: expected forward:<lang>, decode:<lang> "
                    "or oom:<items>"
                )
        return cls(frozenset(forward), frozenset(decode), oom_above)

    @property
    def active(self) -> bool:
        return bool(self.forward or self.decode or self.oom_above is not None)

    def before_forward(self, languages: Sequence[str]) -> None:
        """Raise what the spec asks of a forward pass over items in ``languages``."""
        if self.oom_above is not None and len(languages) > self.oom_above:
            raise torch.OutOfMemoryError(
                f"injected: out of memory for a batch of {len(languages)} (LASS_FAULTS)"
            )
        hit = self.forward.intersection(languages)
        if hit:
            raise InjectedFaultError(f"injected forward failure for {sorted(hit)} (LASS_FAULTS)")

    def before_decode(self, language: str) -> None:
        """Raise what the spec asks of decoding an utterance in ``language``."""
        if language in self.decode:
            raise InjectedFaultError(f"injected decoder failure for {language!r} (LASS_FAULTS)")
