"""lass: Language-Adaptive Sparse Sharing speech recognition."""

__version__ = "0.1.0"
