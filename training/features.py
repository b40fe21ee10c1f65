"""The served encoder's embeddings of the pooled examples, window by window (cached).

Serving reads a text over 200 characters in windows and takes its most harmful window's
verdict (serve_app/governance/text_windows.py), so heads are trained and scored on the
same windows: each example's windows are embedded by the served (int8, split) encoder, at
the split (what the early exit reads) and in full (what the classifier reads).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.governance.embedding import Embedder
from serve_app.governance.text_windows import WINDOW_CHARS, windows
from training.pool import Example

log = logging.getLogger("promethios.training.features")


@dataclass
class Features:
    """Window embeddings and which example each window belongs to."""

    early: np.ndarray  # (windows, 384) float32: unit embeddings at the split
    full: np.ndarray  # (windows, 384) float32: unit embeddings of the full encoder
    owner: np.ndarray  # (windows,) int: the example's index

    def of(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows of the examples `rows` (indices), and each window's position in `rows`."""
        position = np.full(int(self.owner.max()) + 1, -1)
        position[np.asarray(rows, dtype=int)] = np.arange(len(rows))
        at = position[self.owner]
        win = np.flatnonzero(at >= 0)
        return win, at[win]


def window_texts(examples: tuple[Example, ...] | list[Example]) -> tuple[list[str], np.ndarray]:
    texts: list[str] = []
    owner: list[int] = []
    for k, ex in enumerate(examples):
        for w in windows(ex.text, WINDOW_CHARS):
            texts.append(w)
            owner.append(k)
    return texts, np.array(owner)


def embed(
    examples: tuple[Example, ...] | list[Example], embedder: Embedder, cache_dir: Path
) -> Features:
    """The examples' window embeddings by `embedder` (cached by its variant and the texts)."""
    texts, owner = window_texts(examples)
    h = hashlib.sha256(embedder.variant.encode())
    for t in texts:
        h.update(t.encode() + b"\0")
    path = cache_dir / f"features-{h.hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return Features(z["early"], z["full"], owner)
    unique = sorted(set(texts))
    index = {t: i for i, t in enumerate(unique)}
    early = np.zeros((len(unique), 384), np.float32)
    full = np.zeros((len(unique), 384), np.float32)
    started = time.monotonic()
    step = 2000
    for start in range(0, len(unique), step):
        chunk = unique[start : start + step]
        for i, (e, f) in enumerate(embedder.embed_staged(chunk, lambda _e: True)):
            early[start + i], full[start + i] = e, f
        embedder.clear_cache()
        done = start + len(chunk)
        rate = done / max(1e-9, time.monotonic() - started)
        log.info("embedded %d / %d windows (%.0f a second, %.0f s left)", done, len(unique), rate,
                 (len(unique) - done) / rate)  # fmt: skip
    rows = np.array([index[t] for t in texts])
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, early=early[rows], full=full[rows])
    return Features(early[rows], full[rows], owner)
