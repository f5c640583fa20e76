"""``ngram-hash`` (text): signed feature hashing of word 1..n-grams and within-word char n-grams.

A light built-in encoder: no download, deterministic across processes (blake2b, never Python's ``hash()``),
real signal (the embedded default, the demo and the tests). The output row is L2-normalised (cosine
similarity = dot product); the feature kinds are weighted by the options stated next to them. dim = 512.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from e2i.encoders.base import ERROR, Encoder, check_text

STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "with",
        "by",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "some",
        "someone",
        "something",
        "while",
        "into",
        "onto",
        "over",
        "under",
        "very",
        "can",
        "could",
        "then",
        "than",
    }
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


@dataclass(frozen=True)
class NgramOptions:
    dim: int = 512  # hashed buckets
    word_ngrams: int = 2  # word 1..n-grams
    char_ngrams: int = 3  # within-word char n-grams (fastText style, "<word>"); 0 = off
    unigram_weight: float = 1.0
    bigram_weight: float = 0.6  # weight of all word n-grams with n >= 2
    char_weight: float = 0.8  # char n-grams make "bird"/"birds", "chirp"/"chirping" overlap
    stopword_weight: float = 0.25  # down-weights function words (an idf stand-in without corpus stats)
    seed: int = 0  # salt of the hash: different seeds give independent bucket assignments

    def __post_init__(self) -> None:
        if self.dim < 8 or self.word_ngrams < 1 or self.char_ngrams < 0:
            raise ValueError("need dim >= 8, word_ngrams >= 1, char_ngrams >= 0")


@functools.lru_cache(maxsize=1 << 18)
def _hash(token: str, seed: int) -> int:
    """Deterministic 64-bit hash (blake2b with the seed as salt); never Python's randomised hash()."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8, salt=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little")


def ngram_features(text: str, o: NgramOptions) -> dict[str, Counter]:
    """Counts per feature kind: ``w`` word unigrams, ``b`` word n>=2-grams, ``c`` char n-grams."""
    words = _WORD.findall(text.lower())
    grams: dict[str, Counter] = {"w": Counter(words), "b": Counter(), "c": Counter()}
    for n in range(2, o.word_ngrams + 1):
        grams["b"].update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if o.char_ngrams:
        k = o.char_ngrams
        for w in words:
            padded = f"<{w}>"
            grams["c"].update(padded[i : i + k] for i in range(max(1, len(padded) - k + 1)))
    return grams


def hash_text(text: str, o: NgramOptions) -> np.ndarray:
    """(dim,) float32, L2-normalised: per kind, sum of sign(h) * log1p(count) * weight into bucket h % dim,
    each kind normalised, then weighted and summed (signed hashing keeps collisions unbiased)."""
    out = np.zeros(o.dim, dtype=np.float64)
    weights = {"w": o.unigram_weight, "b": o.bigram_weight, "c": o.char_weight}
    for kind, counts in ngram_features(text, o).items():
        if not counts or not weights[kind]:
            continue
        vec = np.zeros(o.dim, dtype=np.float64)
        for tok, c in counts.items():
            h = _hash(f"{kind}\x1f{tok}", o.seed)
            stop = kind != "c" and all(t in STOPWORDS for t in tok.split(" "))
            sign = 1.0 if h >> 63 else -1.0
            vec[h % o.dim] += sign * math.log1p(c) * (o.stopword_weight if stop else 1.0)
        norm = np.linalg.norm(vec)
        if norm > 0:
            out += weights[kind] * vec / norm
    norm = np.linalg.norm(out)
    return (out / norm if norm > 0 else out).astype(np.float32)


class NgramHashEncoder(Encoder):
    """Hashed bag of word uni/bigrams and char trigrams (signed hashing, log tf, L2-normalised)."""

    name = "ngram-hash"
    modality = "text"
    input_column = "text"
    Options = NgramOptions

    def _static_dim(self) -> int:
        return self.opts.dim

    def preprocess(self, batch):
        errors = []
        for text in batch["text"]:
            reason = check_text(text)
            if not reason and not _WORD.search(text):
                reason = "text has no words"
            errors.append(reason)
        out = dict(batch)
        out[ERROR] = np.array(errors, dtype=object)
        return out

    def _embed(self, batch):
        return np.stack([hash_text(str(t), self.opts) for t in batch["text"]])
