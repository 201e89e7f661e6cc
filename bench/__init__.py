"""Benchmarks: each module is runnable as a script and as ``lass bench <name>``."""

import model  # noqa: F401  (sets the OpenMP wait policy before anything imports torch)
