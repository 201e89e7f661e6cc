"""lass: Language-Adaptive Sparse Sharing speech recognition."""

import model  # noqa: F401  (sets the OpenMP wait policy before anything imports torch)

__version__ = "0.1.0"
