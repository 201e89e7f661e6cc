"""Corpus: manifests, importers, the synthetic espeak-ng corpus, batching."""
