"""lass service: the transcription server. Imports ``model``, never ``model.train``."""
