"""The lexical screen: texts whose words already read as plainly benign skip the encoder.

Why: the encoder is nearly all of a request's scoring time; the early exit (early_exit.py)
already stops most benign texts after its bottom layers, but those layers still cost ~1 ms
plus ~60 µs per token on this 2-core machine. Before them, a logistic regression over the
text's hashed words and word pairs (TF-IDF) — ~0.07 ms a text — decides the texts it reads
as plainly benign; the rest go to the encoder as before.

The screen can only un-flag, as the early exit: a text it passes is not flagged by the
classifier (the rule detectors — PII, secrets, the injection patterns — still run on every
text), so the benign false-positive rate never rises; what it may cost is recall. Its
weights and threshold are governance artifacts (serve_app/governance/artifacts.py), fitted
and chosen by training/lexical_fit.py.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from serve_app.governance.artifacts import Manifest

FORMAT = 1  # bump when the features or the file change meaning
BUCKETS = 1 << 18  # hashed feature space (words and word pairs; collisions are shared)
# Words of two or more word characters, lower-cased (scikit-learn's default pattern).
PATTERN = r"\b\w\w+\b"
_WORD = re.compile(PATTERN)


def features(text: str) -> Counter:
    """Hashed bucket -> count of the text's lower-cased words and adjacent word pairs."""
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return Counter(zlib.crc32(g.encode()) % BUCKETS for g in grams)


@dataclass
class LexicalScreen:
    """The regression's weights, the buckets' IDF and the dev-chosen threshold."""

    weights: np.ndarray  # (BUCKETS,) float32
    bias: float
    idf: np.ndarray  # (BUCKETS,) float32
    threshold: float = 0.0

    def harmful_probability(self, text: str) -> float:
        """The probability that `text` is harmful (any class but benign), by its words."""
        buckets, tf = _term_frequencies(text)
        x = _unit(tf * self.idf[buckets])
        return _sigmoid(float(x @ self.weights[buckets]) + self.bias)

    def passes(self, probability: float) -> bool:
        """Whether a text of this harmful probability is decided benign here."""
        return probability < self.threshold


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


def _term_frequencies(text: str) -> tuple[np.ndarray, np.ndarray]:
    """The text's buckets and their sublinear term frequencies (1 + ln count)."""
    counts = features(text)
    buckets = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    return buckets, tf


def _unit(x: np.ndarray) -> np.ndarray:
    """`x` scaled to length 1 (a text with no words stays all zero)."""
    norm = float(np.sqrt(x @ x))
    return x / norm if norm > 0 else x


def from_manifest(manifest: Manifest) -> LexicalScreen:
    """The screen and its threshold of a verified artifact manifest."""
    with np.load(manifest.path("lexical")) as z:
        screen = LexicalScreen(
            z["weights"].astype(np.float32), float(z["bias"]), z["idf"].astype(np.float32)
        )
    screen.threshold = float(manifest.thresholds["lexical"])
    return screen
