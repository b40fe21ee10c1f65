"""The harmful-content classifier: multinomial logistic regression over MiniLM embeddings.

Trained (numpy, a few seconds) on the train and dev splits of the shipped dataset (never
test). The decision threshold is chosen from out-of-fold predictions: a grouped k-fold
cross-validation over the same items (a seed's framings stay in one fold) gives every
item a score from a model that did not see its seed; the threshold is the lowest whose
out-of-fold false-positive rate on the shipped benign items is within budget. The final
weights are fitted on all of train + dev. Cached under var/governance/ keyed by the
training data itself, the embedding variant and the hyper-parameters. Classes: the 14
MLCommons hazards, prompt injection, and benign (which includes risky-sounding benign
prompts, the over-refusal guard).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.governance.dataset import load_items
from serve_app.governance.embedding import Embedder
from serve_app.governance.hazards import BENIGN, CLASSES

log = logging.getLogger("promethios.governance.harm")
FORMAT = 2
# Out-of-fold false positives allowed on shipped benign items, chosen on dev: a model
# fitted on train, its threshold from train-only folds at this budget, gave a dev benign
# FPR of 0.9 % at 0.04, 2.3 % at 0.05 and 4.6 % at 0.06 (target: 3 % on test).
MAX_BENIGN_FPR_OOF = 0.05
CV_FOLDS = 5
SCALE = 5.0  # embeddings are unit length; a larger input scale lets the model be sharper
L2 = 1e-3
STEPS = 800
BENIGN_WEIGHT = True  # benign weighs as much as all harmful classes together
CORPUS_BENIGN = 400  # benign texts drawn from the shipped chat corpus (training only)


@dataclass(frozen=True)
class Classification:
    """Class probabilities of one text and the class it is flagged as (None: not flagged)."""

    probs: dict[str, float]
    flagged: str | None
    confidence: float


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_logreg(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2: float = 1e-3,
    steps: int = 800,
    benign: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced softmax regression by Adam on the full batch; returns (W, b)."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.01, (x.shape[1], n_classes)).astype(np.float64)
    b = np.zeros(n_classes)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    class_w = len(y) / (n_classes * np.maximum(counts, 1))
    if benign is not None:  # benign weighs as much as all harmful classes together
        class_w[benign] *= n_classes - 1
    sample_w = class_w[y]
    onehot = np.eye(n_classes)[y]
    m_w = v_w = np.zeros_like(w)
    m_b = v_b = np.zeros_like(b)
    lr, b1, b2 = 0.05, 0.9, 0.999
    for t in range(1, steps + 1):
        p = _softmax(x @ w + b)
        g = (p - onehot) * sample_w[:, None] / sample_w.sum()
        gw = x.T @ g + l2 * w
        gb = g.sum(0)
        m_w, v_w = b1 * m_w + (1 - b1) * gw, b2 * v_w + (1 - b2) * gw * gw
        m_b, v_b = b1 * m_b + (1 - b1) * gb, b2 * v_b + (1 - b2) * gb * gb
        w -= lr * (m_w / (1 - b1**t)) / (np.sqrt(v_w / (1 - b2**t)) + 1e-8)
        b -= lr * (m_b / (1 - b1**t)) / (np.sqrt(v_b / (1 - b2**t)) + 1e-8)
    return w, b


class HarmClassifier:
    """Classifies embeddings into hazard / injection / benign."""

    def __init__(self, w: np.ndarray, b: np.ndarray, threshold: float) -> None:
        self.w, self.b, self.threshold = w, b, threshold
        self._benign = CLASSES.index(BENIGN)

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        return _softmax(SCALE * np.atleast_2d(emb).astype(np.float64) @ self.w + self.b)

    def classify(self, emb: np.ndarray) -> list[Classification]:
        out = []
        for p in self.probabilities(emb):
            # Flag when the harmful mass (1 - p(benign)) reaches the threshold; the
            # category is the most probable harmful class.
            harm = p.copy()
            harm[self._benign] = -1.0
            top = int(harm.argmax())
            mass = 1.0 - float(p[self._benign])
            out.append(
                Classification(
                    probs={c: round(float(v), 4) for c, v in zip(CLASSES, p, strict=True)},
                    flagged=CLASSES[top] if mass >= self.threshold else None,
                    confidence=round(mass, 4),
                )
            )
        return out

    # -- building -------------------------------------------------------------------

    @classmethod
    def train(cls, embedder: Embedder) -> HarmClassifier:
        items = _training_items()
        corpus = _corpus_benign()
        texts = [i.text for i in items] + corpus
        labels = [i.label if i.label in CLASSES else BENIGN for i in items]
        labels += [BENIGN] * len(corpus)
        groups = [i.group for i in items] + [f"corpus:{t}" for t in corpus]
        x = embedder.embed(texts).astype(np.float64)
        y = np.array([CLASSES.index(lab) for lab in labels])
        shipped_benign = np.array([i.label == BENIGN for i in items] + [False] * len(corpus))
        benign = CLASSES.index(BENIGN)
        fold = np.array([_fold_of(g) for g in groups])
        oof = np.zeros((len(y), len(CLASSES)))
        for k in range(CV_FOLDS):
            w, b = _fit(x[fold != k], y[fold != k], benign)
            oof[fold == k] = cls(w, b, 0.0).probabilities(x[fold == k])
        threshold = _tune_threshold(1.0 - oof[shipped_benign, benign])
        w, b = _fit(x, y, benign)
        log.info("harm classifier trained on %d items; threshold %.3f", len(y), threshold)
        return cls(w, b, threshold)

    @classmethod
    def load_or_train(cls, cache_dir: Path, embedder: Embedder) -> HarmClassifier:
        """The cached classifier for this dataset, training (and caching) it if absent."""
        key = cache_key(embedder)
        path = cache_dir / f"harm-v{FORMAT}-{key}.npz"
        if path.exists():
            try:
                z = np.load(path)
                return cls(z["w"], z["b"], float(z["threshold"]))
            except (OSError, ValueError, KeyError):
                log.warning("harm classifier cache %s unreadable; retraining", path)
        model = cls.train(embedder)
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz")
        os.close(fd)
        np.savez(tmp, w=model.w, b=model.b, threshold=model.threshold)
        os.replace(tmp, path)
        return model


def _corpus_benign() -> list[str]:
    """Benign user turns and every assistant turn (refusals included) of the chat corpus."""
    import json
    import random

    from serve_app.model.corpus import CORPUS_PATH

    texts: set[str] = set()
    for line in CORPUS_PATH.read_text().splitlines():
        row = json.loads(line)
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        if not row["category"].startswith("refusal"):
            texts.add(user)
        texts.add(answer)
    ordered = sorted(texts)
    random.Random(0).shuffle(ordered)
    return ordered[:CORPUS_BENIGN]


def _training_items() -> list:
    return [i for i in load_items() if i.split in ("train", "dev")]


def _fold_of(group: str) -> int:
    return int(hashlib.sha256(f"fold:{group}".encode()).hexdigest()[:8], 16) % CV_FOLDS


def _fit(x: np.ndarray, y: np.ndarray, benign: int) -> tuple[np.ndarray, np.ndarray]:
    return train_logreg(
        SCALE * x, y, len(CLASSES), l2=L2, steps=STEPS, benign=benign if BENIGN_WEIGHT else None
    )


def cache_key(embedder: Embedder) -> str:
    """Changes with the training items (texts, labels, splits), the chat corpus, the
    embedding variant and every hyper-parameter: a stale classifier is never loaded."""
    from serve_app.model.corpus import CORPUS_PATH

    h = hashlib.sha256()
    for item in _training_items():
        h.update(f"{item.label}\t{item.split}\t{item.group}\t{item.text}\n".encode())
    h.update(CORPUS_PATH.read_bytes())
    h.update(embedder.variant.encode())
    params = (SCALE, L2, STEPS, BENIGN_WEIGHT, CV_FOLDS, MAX_BENIGN_FPR_OOF, CORPUS_BENIGN)
    h.update(repr(params).encode())
    return h.hexdigest()[:16]


def _tune_threshold(benign_harm: np.ndarray) -> float:
    """The lowest threshold on the harmful mass whose false-positive rate on the
    (out-of-fold) benign scores `benign_harm` is within MAX_BENIGN_FPR_OOF."""
    for t in np.arange(0.30, 0.995, 0.005):
        fpr = float((benign_harm >= t).mean()) if len(benign_harm) else 0.0
        if fpr <= MAX_BENIGN_FPR_OOF:
            return round(float(t), 3)
    return 0.995
