"""Benchmarks: each module is runnable as a script and as ``lass bench <name>``."""
