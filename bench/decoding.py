"""Decoding benchmark: LM build and load times, and greedy vs beam vs beam+LM per utterance.

Real German text (Debian's fortunes-de) trains a trigram LM; held-out sentences become
simulated CTC posteriors of 4 s (200 frames of 20 ms: each character 2 frames, a blank
between) where a fraction of characters lose to a random other letter, so the figures
show the decoders' cost and what the LM repairs on such errors. They are not a model's
accuracy. Run: ``.venv/bin/python -m bench.decoding``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import jiwer
import torch

from model.decoding import BeamConfig, BeamDecoders, greedy_decode_batch
from model.train.lm import build_lm, find_build_binary, read_arpa_counts, to_binary
from model.vocab import Vocabulary

FORTUNES = Path("/usr/share/games/fortunes/de")
FRAMES = 200


def german_sentences() -> list[str]:
    """Sentences of the German fortunes (UTF-8 files), split at . ! ? and fortune breaks."""
    text = []
    for path in sorted(FORTUNES.glob("*.u8")):
        text.append(path.read_text(encoding="utf-8", errors="replace"))
    chunks = re.split(r"[.!?]+\s|\n%\n", "\n".join(text))
    return [" ".join(c.split()) for c in chunks if len(c.split()) >= 4]


def posteriors(
    text: str, vocab: Vocabulary, error_rate: float, rng: random.Random
) -> tuple[torch.Tensor, str]:
    """Log-posteriors [FRAMES, V] for the start of ``text`` and the reference they encode."""
    index = {t: i for i, t in enumerate(vocab.tokens)}
    letters = [c for c in vocab.alphabets["de"] if c != " "]
    probs = torch.full((FRAMES, len(vocab.tokens)), 1e-3)
    f = 0
    said = []
    for ch in text:
        if f + 3 > FRAMES:
            break
        winner = ch
        if ch != " " and rng.random() < error_rate:
            winner = rng.choice([c for c in letters if c != ch])
        for k in range(2):
            probs[f + k, index[winner]] = 0.6
            probs[f + k, index[ch]] += 0.3
        probs[f + 2, 0] = 0.9
        f += 3
        said.append(ch)
    probs[f:, 0] = 0.9
    return (probs / probs.sum(-1, keepdim=True)).log(), "".join(said).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test", type=int, default=32, help="held-out utterances")
    parser.add_argument("--error-rate", type=float, default=0.15)
    parser.add_argument("--beam-width", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rng = random.Random(0)
    raw = german_sentences()
    rng.shuffle(raw)
    vocab = Vocabulary.build({"de": raw})
    sentences = [vocab.normalize(s, "de") for s in raw]
    sentences = [s for s in sentences if s]
    test, train = sentences[: args.test], sentences[args.test :]
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread",
        "lm_sentences": len(train),
        "lm_words": sum(len(s.split()) for s in train),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        arpa = build_lm(train, Path(tmp) / "de", order=3, binary=False)
        out["lm_build_s"] = round(time.perf_counter() - t0, 2)
        out["lm_ngrams"] = read_arpa_counts(arpa)[0]
        out["lm_arpa_mb"] = round(arpa.stat().st_size / 1e6, 2)
        t0 = time.perf_counter()
        pruned = build_lm(
            train, Path(tmp) / "de_pruned", order=3, prune_singletons_from=2, binary=False
        )
        out["lm_pruned_build_s"] = round(time.perf_counter() - t0, 2)
        out["lm_pruned_ngrams"] = read_arpa_counts(pruned)[0]
        out["lm_pruned_arpa_mb"] = round(pruned.stat().st_size / 1e6, 2)

        decoders = BeamDecoders(vocab, {"de": arpa}, BeamConfig(beam_width=args.beam_width))
        t0 = time.perf_counter()
        decoders.get("de", use_lm=True)
        out["lm_decoder_load_s"] = round(time.perf_counter() - t0, 2)

        tool = find_build_binary()
        if tool is not None:
            binary = to_binary(arpa, Path(tmp) / "de.bin", tool)
            words = sorted({w for s in train for w in s.split()})
            (Path(tmp) / "de.bin.unigrams.txt").write_text("\n".join(words), encoding="utf-8")
            out["lm_binary_mb"] = round(binary.stat().st_size / 1e6, 2)
            t0 = time.perf_counter()
            BeamDecoders(vocab, {"de": binary}).get("de").close()
            out["lm_binary_decoder_load_s"] = round(time.perf_counter() - t0, 2)

        samples = [posteriors(s, vocab, args.error_rate, rng) for s in test]
        logits = torch.stack([lp for lp, _ in samples])
        refs = [r for _, r in samples]
        lengths = [FRAMES] * len(samples)
        langs = ["de"] * len(samples)

        times: dict[str, list[float]] = {"greedy": [], "beam": [], "beam_lm": []}
        hyps: dict[str, list[str]] = {}
        for _ in range(5):
            t0 = time.perf_counter()
            greedy = greedy_decode_batch(logits, lengths, langs, vocab)
            times["greedy"].append((time.perf_counter() - t0) / len(samples))
        hyps["greedy"] = [t.text for t in greedy]
        for method, use_lm in (("beam", False), ("beam_lm", True)):
            hyps[method] = []
            for i in range(len(samples)):
                t0 = time.perf_counter()
                (t,) = decoders.decode_batch(logits[i : i + 1], [FRAMES], ["de"], use_lm=use_lm)
                times[method].append(time.perf_counter() - t0)
                hyps[method].append(t.text)
        decoders.close()

    for method in times:
        ms = 1000 * statistics.median(times[method])
        out[f"{method}_ms_per_4s"] = round(ms, 2)
        out[f"{method}_cer"] = round(jiwer.cer(refs, hyps[method]), 4)
        out[f"{method}_wer"] = round(jiwer.wer(refs, hyps[method]), 4)
    med = {m: statistics.median(t) for m, t in times.items()}
    out["beam_over_greedy"] = round(med["beam"] / med["greedy"], 1)
    out["beam_lm_over_beam"] = round(med["beam_lm"] / med["beam"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
