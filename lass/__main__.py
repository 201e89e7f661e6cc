"""``python -m lass`` is the ``lass`` command."""

from lass.cli import app

app()
