"""lass service: the transcription server. Imports ``model``, never ``model.train``."""

import model  # noqa: F401  (sets the OpenMP wait policy before anything imports torch)
