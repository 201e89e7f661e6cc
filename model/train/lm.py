"""Word n-gram language models for CTC beam search, as ARPA or KenLM binary files.

Estimation: KenLM's ``lmplz`` when it is found (pip's ``kenlm`` package ships only the
query module; ``scripts/build-kenlm.sh`` compiles ``lmplz`` and ``build_binary`` from its
sdist into ``build/kenlm/bin``, as ``make setup-dev`` does), otherwise our own pure-Python
estimator, which the tests also use as lmplz's oracle. Both compute **interpolated
modified Kneser-Ney** smoothing (Chen & Goodman 1998), with

- KenLM-style sentence padding: one ``<s>`` and one ``</s>`` per sentence; n-grams that
  start with ``<s>`` keep their raw counts at every order (nothing can precede ``<s>``),
  all other lower-order n-grams use continuation counts (number of distinct left words);
- three discounts per order (D1, D2, D3+) from the count-of-counts; when a small corpus
  makes them undefined (a count-of-count is zero or a discount falls outside (0, k)),
  that order falls back to (0.5, 1.0, 1.5), as ``lmplz --discount_fallback`` does;
- unigrams interpolated with the uniform distribution over the vocabulary (words,
  ``</s>`` and ``<unk>``), so ``<unk>`` gets exactly the leftover mass;
- optional pruning of singletons (raw count 1) from a given order up (``lmplz --prune``
  with thresholds 0 below that order and 1 from it); an n-gram that is the prefix or
  suffix of a kept longer n-gram is never pruned.

Unpruned, the two agree to float32 precision (lmplz computes in float32). Pruned, both
sum to one but share out the pruned n-grams' mass differently: we keep a kept n-gram's
unpruned probability and recompute its context's backoff, so the mass goes to the words
that back off; lmplz adds the pruned n-grams' whole counts to the context's
interpolation weight, which raises the kept n-grams' probabilities too.

ARPA stores an interpolated model exactly: the probability of an observed n-gram is the
interpolated one, and the backoff weight of a context is its interpolation weight gamma.

With ``binary`` (off by default), KenLM's ``build_binary`` converts the ARPA to a trie
with 8-bit quantised probabilities and backoffs when it is found; otherwise the ARPA is
the result. ``kenlm.Model`` and pyctcdecode load either.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from model.atomic import atomic_write_text, atomic_writer
from model.text import normalize as normalize_text
from model.train.config import LMConfig  # the [lm] table; 0 = no pruning

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
# log10 probability ARPA files give <s>, which is a context only and never predicted.
BOS_LOG10_PROB = -99.0
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)

NGram = tuple[str, ...]


class LMError(Exception):
    """Bad input or a failed conversion while building a language model."""


@dataclass
class NGramModel:
    """An estimated model: log10 probabilities and backoff weights per order (1-based)."""

    order: int
    log10_prob: list[dict[NGram, float]] = field(default_factory=list)
    log10_backoff: list[dict[NGram, float]] = field(default_factory=list)
    discounts: list[tuple[float, float, float]] = field(default_factory=list)
    fallback_orders: list[int] = field(default_factory=list)

    def counts(self) -> list[int]:
        """Number of n-grams per order, as in the ARPA header."""
        return [len(p) for p in self.log10_prob]

    def backoffs(self, n: int) -> dict[NGram, float]:
        """log10 backoff weights of the order-``n`` contexts (created on first use)."""
        while len(self.log10_backoff) < n:
            self.log10_backoff.append({})
        return self.log10_backoff[n - 1]


def _sentences(lines: Iterable[str], normalize: Callable[[str], str]) -> list[list[str]]:
    out = []
    for line in lines:
        words = normalize(line).split()
        if words:
            out.append(words)
    return out


def _raw_counts(sentences: Sequence[Sequence[str]], order: int) -> list[Counter[NGram]]:
    """Raw counts of every n-gram (n = 1..order) in the padded sentences."""
    counts: list[Counter[NGram]] = [Counter() for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for n in range(1, order + 1):
            c = counts[n - 1]
            for i in range(len(padded) - n + 1):
                c[padded[i : i + n]] += 1
    return counts


def _adjusted_counts(raw: list[Counter[NGram]]) -> list[dict[NGram, int]]:
    """Kneser-Ney counts: raw at the top order and for n-grams starting with <s>,
    otherwise the number of distinct words seen to the left."""
    order = len(raw)
    adjusted: list[dict[NGram, int]] = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(raw[order - 1])
    for n in range(order - 1, 0, -1):
        left: Counter[NGram] = Counter(g[1:] for g in raw[n])  # distinct (n+1)-grams by suffix
        adj = adjusted[n - 1]
        for g, c in raw[n - 1].items():
            adj[g] = c if g[0] == BOS else left[g]
    return adjusted


def _discounts(adjusted: dict[NGram, int]) -> tuple[tuple[float, float, float], bool]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) and whether the fallback was used.

    Chen & Goodman's eq. 26 with t_k the number of n-grams of adjusted count exactly k
    (k = 1..4); defined, as in lmplz, when t1, t2 and t3 are non-zero and each D_k lies
    in (0, k] (t4 = 0 gives D3+ = 3). lmplz also takes D_k = 0 (it can only happen to D2
    or D3+, by an exact tie); we fall back there, since it can leave a backoff of zero.
    """
    t = Counter(c for g, c in adjusted.items() if g != (BOS,) and c <= 4)
    t1, t2, t3, t4 = t[1], t[2], t[3], t[4]
    if min(t1, t2, t3) == 0:
        return FALLBACK_DISCOUNTS, True
    y = t1 / (t1 + 2 * t2)
    d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0 < dk <= k for k, dk in zip((1, 2, 3), d, strict=True)):
        return FALLBACK_DISCOUNTS, True
    return d, False


def _kept(raw: list[Counter[NGram]], prune_from: int) -> list[set[NGram]]:
    """N-grams that stay in the model: all, minus pruned singletons that no kept longer
    n-gram needs as prefix or suffix (ARPA needs both in the file)."""
    order = len(raw)
    kept: list[set[NGram]] = [set() for _ in range(order)]
    for n in range(order, 0, -1):
        needed: set[NGram] = set()
        if n < order:
            for g in kept[n]:
                needed.add(g[:-1])
                needed.add(g[1:])
        for g, c in raw[n - 1].items():
            if not prune_from or n < prune_from or c > 1 or g in needed:
                kept[n - 1].add(g)
    return kept


def estimate(
    lines: Iterable[str],
    config: LMConfig | None = None,
    normalize: Callable[[str], str] = normalize_text,
) -> NGramModel:
    """Estimate an interpolated modified Kneser-Ney model from text, one sentence a line."""
    return estimate_sentences(_nonempty(_sentences(lines, normalize)), config or LMConfig())


def _nonempty(sentences: list[list[str]]) -> list[list[str]]:
    if not sentences:
        raise LMError("no words in the language model's training text")
    return sentences


def estimate_sentences(sentences: Sequence[Sequence[str]], config: LMConfig) -> NGramModel:
    """Our estimator (pure Python) on sentences already split into words."""
    order = config.order
    raw = _raw_counts(sentences, order)
    adjusted = _adjusted_counts(raw)
    kept = _kept(raw, config.prune_singletons_from)
    model = NGramModel(order=order)

    # Unigrams: discounted adjusted counts, interpolated with the uniform distribution.
    uni = {g: c for g, c in adjusted[0].items() if g != (BOS,)}
    d, fell_back = _discounts(adjusted[0])
    model.discounts.append(d)
    if fell_back:
        model.fallback_orders.append(1)
    vocab_size = len(uni) + 1  # + <unk>
    total = sum(uni.values())
    n_k = Counter(min(c, 3) for c in uni.values())
    gamma = (d[0] * n_k[1] + d[1] * n_k[2] + d[2] * n_k[3]) / total
    probs: dict[NGram, float] = {(UNK,): gamma / vocab_size}
    for g, c in uni.items():
        probs[g] = (c - d[min(c, 3) - 1]) / total + gamma / vocab_size
    model.log10_prob.append({g: math.log10(p) for g, p in probs.items()})
    model.log10_prob[0][(BOS,)] = BOS_LOG10_PROB
    interpolated: dict[NGram, float] = probs  # lower-order p(w | h') for the next order

    for n in range(2, order + 1):
        adj = adjusted[n - 1]
        d, fell_back = _discounts(adj)
        model.discounts.append(d)
        if fell_back:
            model.fallback_orders.append(n)
        by_context: dict[NGram, list[tuple[str, int]]] = defaultdict(list)
        for g, c in adj.items():
            by_context[g[:-1]].append((g[-1], c))
        probs = {}
        backoff: dict[NGram, float] = {}
        for h, followers in by_context.items():
            total = sum(c for _, c in followers)
            n_k = Counter(min(c, 3) for _, c in followers)
            gamma = (d[0] * n_k[1] + d[1] * n_k[2] + d[2] * n_k[3]) / total
            kept_mass = lower_mass = 0.0
            pruned_any = False
            for w, c in followers:
                g = (*h, w)
                # Every observed n-gram's suffix is observed, so the lower order has it.
                lower = interpolated[g[1:]]
                p = (c - d[min(c, 3) - 1]) / total + gamma * lower
                probs[g] = p
                if g in kept[n - 1]:
                    kept_mass += p
                    lower_mass += lower
                else:
                    pruned_any = True
            if pruned_any:
                # Backoff that keeps sum_w p(w|h) = 1 once the pruned n-grams are gone.
                gamma = max(1.0 - kept_mass, 1e-12) / max(1.0 - lower_mass, 1e-12)
            backoff[h] = gamma
        model.log10_prob.append({g: math.log10(p) for g, p in probs.items() if g in kept[n - 1]})
        for h, b in backoff.items():
            if h in kept[n - 2]:
                model.backoffs(n - 1)[h] = math.log10(b)
        interpolated = probs
    return model


def write_arpa(model: NGramModel, path: Path) -> None:
    """Write ``model`` as an ARPA file (atomically: temp file, then rename)."""
    with atomic_writer(path) as f:
        f.write("\n\\data\\\n")
        for n, count in enumerate(model.counts(), start=1):
            f.write(f"ngram {n}={count}\n")
        for n in range(1, model.order + 1):
            f.write(f"\n\\{n}-grams:\n")
            backoffs = model.backoffs(n)
            for g in sorted(model.log10_prob[n - 1]):
                line = f"{model.log10_prob[n - 1][g]:.7f}\t{' '.join(g)}"
                if n < model.order and g in backoffs:
                    # "0" is the same float as "0.0000000", 8 bytes shorter: a third of the
                    # lines of a pruned bigram model, which must fit the 30 MB bundle.
                    line += "\t0" if backoffs[g] == 0 else f"\t{backoffs[g]:.7f}"
                elif n < model.order and g[-1] != EOS:
                    line += "\t0"
                f.write(line + "\n")
        f.write("\n\\end\\\n")


# Sort memory for lmplz and build_binary (both default to 80 % of the machine's RAM);
# past it they sort on disk in a temporary folder, so any corpus still builds.
KENLM_SORT_MEMORY = "1G"
# build_binary's quantised format: a bit-packed trie, 8-bit probabilities and backoffs.
QUANTISED_TRIE = ("-q", "8", "-b", "8", "trie")
# A checkout's build/kenlm/bin, where scripts/build-kenlm.sh puts the tools.
_CHECKOUT_BIN = Path(__file__).resolve().parents[2] / "build" / "kenlm" / "bin"

Estimator = Literal["auto", "lmplz", "python"]


def find_kenlm_tool(name: str) -> str | None:
    """A KenLM program (``lmplz``, ``build_binary``): ``$LASS_KENLM_<NAME>`` (a path; any
    value that is not a file turns the tool off), a checkout's ``build/kenlm/bin``, next
    to the running Python (a venv's ``bin/``), or on ``PATH``."""
    env = os.environ.get(f"LASS_KENLM_{name.upper()}")
    if env:
        return env if Path(env).is_file() else None
    for folder in (_CHECKOUT_BIN, Path(sys.executable).parent):
        if (folder / name).is_file():
            return str(folder / name)
    return shutil.which(name)


def find_build_binary() -> str | None:
    """KenLM's ``build_binary`` (see ``find_kenlm_tool``)."""
    return find_kenlm_tool("build_binary")


def find_lmplz() -> str | None:
    """KenLM's ``lmplz`` (see ``find_kenlm_tool``)."""
    return find_kenlm_tool("lmplz")


def _run_tool(cmd: list[str], what: Path, stdin: str | None = None) -> None:
    result = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LMError(f"{Path(cmd[0]).name} failed on {what}: {result.stderr.strip()[-500:]}")


def lmplz_arguments(config: LMConfig) -> list[str]:
    """lmplz's options for ``config``: the order, the same fallback discounts as ours
    (lmplz refuses undefined discounts without ``--discount_fallback``), and pruning as
    per-order count thresholds (the last one applies to every higher order)."""
    args = ["--order", str(config.order), "--discount_fallback", *map(str, FALLBACK_DISCOUNTS)]
    k = config.prune_singletons_from
    if k and k <= config.order:
        args += ["--prune", *["0"] * (k - 1), "1"]
    return args


def run_lmplz(sentences: Sequence[Sequence[str]], arpa: Path, config: LMConfig, tool: str) -> Path:
    """Estimate with KenLM's ``lmplz`` and write the ARPA file ``arpa`` (atomically).

    The sentences are already normalised and split: lmplz only splits at spaces.
    ``--skip_symbols`` reads a literal ``<s>``, ``</s>`` or ``<unk>`` in the text as a
    space, where lmplz would stop with an error.
    """
    tmp = arpa.with_name(f".{arpa.name}.tmp")
    arpa.parent.mkdir(parents=True, exist_ok=True)  # as our atomic_writer does
    text = "".join(" ".join(words) + "\n" for words in sentences)
    with tempfile.TemporaryDirectory(prefix="lmplz-") as scratch:
        cmd = [tool, *lmplz_arguments(config), "--skip_symbols", "-S", KENLM_SORT_MEMORY]
        cmd += ["-T", scratch + "/", "--arpa", str(tmp)]
        try:
            _run_tool(cmd, arpa, stdin=text)
        except LMError:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, arpa)
    return arpa


def to_binary(arpa: Path, out: Path, tool: str, quantised: bool = False) -> Path:
    """Convert an ARPA file with ``build_binary``: the probing hash table, or with
    ``quantised`` the 8-bit quantised trie (``QUANTISED_TRIE``); atomic."""
    tmp = out.with_name(f".{out.name}.tmp")
    structure = QUANTISED_TRIE if quantised else ("probing",)
    cmd = [tool, "-s", "-S", KENLM_SORT_MEMORY, *structure, str(arpa), str(tmp)]
    try:
        _run_tool(cmd, arpa)
    except LMError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out


def build_lm(
    text: Path | str | Iterable[str],
    out_path: Path | str,
    order: int = LMConfig.order,
    prune_singletons_from: int = LMConfig.prune_singletons_from,
    binary: bool = LMConfig.binary,
    normalize: Callable[[str], str] = normalize_text,
    estimator: Estimator = "auto",
) -> Path:
    """Build a word n-gram LM from text (a file path, or lines) and return the file written.

    ``out_path`` names the result: with ``binary`` and ``build_binary`` found it is the
    quantised trie ``<name>.bin``, its words go to ``<name>.bin.unigrams.txt``
    (``unigrams_path``; decoders read it) and the ARPA is removed; otherwise the result is
    ``<name>.arpa``. ``normalize`` maps a line to space-separated words; the default,
    :func:`model.text.normalize`, splits them as the decoder does (combining marks stay
    inside words). Idempotent, so lines the vocabulary already normalised (its
    alphabet's characters only) keep their words. ``estimator``: ``auto`` runs lmplz when
    it is found and our estimator otherwise; ``lmplz`` fails without it; ``python``
    always runs ours.
    """
    config = LMConfig(order=order, prune_singletons_from=prune_singletons_from, binary=binary)
    if isinstance(text, str | Path):
        source = Path(text)
        if not source.is_file():
            raise LMError(f"language model text not found: {source}")
        with source.open(encoding="utf-8") as f:
            sentences = _nonempty(_sentences(f, normalize))
    else:
        sentences = _nonempty(_sentences(text, normalize))
    lmplz = find_lmplz() if estimator != "python" else None
    if estimator == "lmplz" and lmplz is None:
        raise LMError("KenLM's lmplz is not installed (scripts/build-kenlm.sh builds it)")
    out = Path(out_path)
    arpa = out.with_suffix(".arpa")
    if lmplz is not None:
        run_lmplz(sentences, arpa, config, lmplz)
    else:
        write_arpa(estimate_sentences(sentences, config), arpa)
    tool = find_build_binary() if config.binary else None
    if tool is None:
        return arpa
    binary_path = to_binary(arpa, out.with_suffix(".bin"), tool, quantised=True)
    # A binary LM cannot list its words; pyctcdecode needs them to score partial words.
    words = sorted(w for w in read_arpa_unigrams(arpa) if w not in (BOS, EOS, UNK))
    atomic_write_text(unigrams_path(binary_path), "\n".join(words) + "\n")
    arpa.unlink()
    return binary_path


def unigrams_path(lm_path: Path) -> Path:
    """Side file with the words of a binary LM (``<name>.bin.unigrams.txt``)."""
    return lm_path.with_name(lm_path.name + ".unigrams.txt")


def read_arpa_counts(path: Path) -> tuple[list[int], list[int]]:
    """(counts declared in the header, n-gram lines found per section) of an ARPA file."""
    declared: list[int] = []
    found: list[int] = []
    section = 0
    with path.open(encoding="utf-8") as f:
        for raw_line in f:
            line = raw_line.strip()
            if line.startswith("ngram ") and section == 0:
                declared.append(int(line.split("=", 1)[1]))
            elif line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:].split("-", 1)[0])
                found.append(0)
            elif line == "\\end\\":
                section = -1
            elif line and section > 0:
                found[section - 1] += 1
    return declared, found


def read_arpa(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(log10 probability, log10 backoff) of every n-gram of an ARPA file, keyed by its
    text (tests and ``bench/lm_build.py`` compare two estimators with it)."""
    probs: dict[str, float] = {}
    backoffs: dict[str, float] = {}
    in_section = False
    with path.open(encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("\\"):
                in_section = line.endswith("-grams:")
            elif in_section and line:
                fields = line.split("\t")
                probs[fields[1]] = float(fields[0])
                if len(fields) > 2:
                    backoffs[fields[1]] = float(fields[2])
    return probs, backoffs


def read_arpa_unigrams(path: Path) -> list[str]:
    """The words of an ARPA file's 1-gram section, in file order (``<s>``, ``</s>`` and
    ``<unk>`` included)."""
    words: list[str] = []
    in_unigrams = False
    with path.open(encoding="utf-8") as f:
        for raw_line in f:
            line = raw_line.strip()
            if line.startswith("\\"):
                in_unigrams = line == "\\1-grams:"
                if words and not in_unigrams:
                    break
            elif in_unigrams and line:
                words.append(line.split("\t")[1])
    return words
