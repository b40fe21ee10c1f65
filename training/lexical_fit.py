"""Fits the lexical screen (serve_app/governance/lexical_screen.py) and chooses its threshold.

A logistic regression (L2, balanced class weights, full-batch L-BFGS) over the TF-IDF rows
of the classifier's training set (harmful = any class but benign). Its threshold is chosen
on dev as the early exit's is (training/exit_fit.py): the highest under which at most
MAX_LOST (none) of the dev harmful items that the full classifier flags at its lowest
threshold would pass. Cached under var/governance/.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path

import numpy as np

from serve_app.governance.harm import HarmClassifier
from serve_app.governance.hazards import BENIGN
from serve_app.governance.lexical_screen import (
    BUCKETS,
    FORMAT,
    PATTERN,
    LexicalScreen,
    _term_frequencies,
    _unit,
)
from training import classifier as harm
from training import exit_fit, finetune

log = logging.getLogger("promethios.training.lexical")

C = 10.0  # inverse L2 strength (scikit-learn's convention: C times the summed loss)
MAX_ITER = 300
# Dev harmful items (of ~1,140 the full classifier flags at its lowest threshold) that may
# pass the screen: none. Measured on dataset 2026.12-6's dev: 0 / 1 / 2 let 34 / 49 / 62 %
# of the dev benign items pass (54 / 60 / 64 % of the cost bench's texts), but the items
# the first two would lose are two phrasings of hiding self-harm from a therapist, which
# its words read as benign: a lexical screen should not be where that is decided.
MAX_LOST = 0
PARAMS = (FORMAT, BUCKETS, PATTERN, C, MAX_ITER, finetune.THREADS)


def _matrix(texts: list[str]):  # noqa: ANN202 - torch types
    """The texts' TF-IDF rows (sublinear TF, smoothed IDF, L2-normalised) as a sparse CSR
    tensor, and the IDF of each bucket, learnt from these texts."""
    import warnings

    import torch

    crow, cols, vals = [0], [], []
    df = np.zeros(BUCKETS, dtype=np.int64)
    for text in texts:
        buckets, tf = _term_frequencies(text)
        df[buckets] += 1
        cols.append(buckets)
        vals.append(tf)
        crow.append(crow[-1] + len(buckets))
    idf = (np.log((1 + len(texts)) / (1 + df)) + 1.0).astype(np.float32)  # ln((1+n)/(1+df))+1
    rows = [_unit(tf * idf[b]) for b, tf in zip(cols, vals, strict=True)]
    with warnings.catch_warnings():  # torch calls its sparse CSR support a beta
        warnings.simplefilter("ignore")
        matrix = torch.sparse_csr_tensor(
            torch.tensor(crow), torch.from_numpy(np.concatenate(cols or [np.zeros(0, np.int64)])),
            torch.from_numpy(np.concatenate(rows or [np.zeros(0)]).astype(np.float32)),
            size=(len(texts), BUCKETS),
        )  # fmt: skip
    return matrix, idf


def fit(texts: list[str], harmful: list[bool]) -> LexicalScreen:
    """Logistic regression (L2, balanced class weights, full-batch L-BFGS) on the texts'
    TF-IDF rows; deterministic for the same inputs and thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(finetune.THREADS)
    try:
        x, idf = _matrix(texts)
        y = torch.tensor(harmful, dtype=torch.float32)
        n, pos = len(harmful), float(sum(harmful))
        if pos in (0.0, n):
            raise ValueError("the lexical screen needs harmful and benign texts")
        # Balanced: each class weighs half the total, as scikit-learn's "balanced".
        sample_w = torch.where(y > 0, n / (2 * pos), n / (2 * (n - pos)))
        w = torch.zeros(BUCKETS, 1, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w, b], lr=1.0, max_iter=MAX_ITER, tolerance_grad=1e-6, tolerance_change=1e-9,
            history_size=20, line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            z = (x @ w).squeeze(1) + b
            loss = (sample_w * torch.nn.functional.binary_cross_entropy_with_logits(
                z, y, reduction="none")).sum() + 0.5 * (w**2).sum() / C  # fmt: skip
            loss = loss / n
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            z = (x @ w).squeeze(1) + b
            hit = float(((z > 0) == (y > 0)).float().mean())
        log.info("lexical screen fitted: training accuracy %.4f", hit)
        return LexicalScreen(w.detach().numpy()[:, 0].copy(), float(b.detach()), idf)
    finally:
        torch.set_num_threads(threads)


def screen_key() -> str:
    """Changes with the training data (harm.cache_key) and PARAMS."""
    return hashlib.sha256(f"{harm.cache_key()}|{PARAMS}".encode()).hexdigest()[:12]


def screen_name() -> str:
    """The screen's weights file (cached and shipped under this name)."""
    return f"harm-v{harm.FORMAT}-lexical-{screen_key()}.npz"


def load_or_fit(
    cache_dir: Path,
    embedder,
    classifier: HarmClassifier,  # noqa: ANN001
) -> tuple[LexicalScreen, Path, dict]:
    """The screen (cached, an artifact, or fitted here) with its dev threshold (cached), its
    file, and the threshold's dev figures."""
    path = cache_dir / screen_name()
    screen = _load(harm.cached_or_shipped(path))
    if screen is None:
        texts, labels = harm.training_set()
        started = time.monotonic()
        screen = fit(texts, [label != BENIGN for label in labels])
        took = time.monotonic() - started
        log.info("lexical screen fitted on %d texts in %.0f s", len(texts), took)
        buf = io.BytesIO()
        np.savez_compressed(buf, weights=screen.weights, bias=np.array(screen.bias), idf=screen.idf)
        harm.write_atomic(path, buf.getvalue())
    else:
        path = harm.cached_or_shipped(path)
    chosen = exit_fit.dev_threshold(
        cache_dir, path, embedder, classifier, MAX_LOST,
        lambda texts: np.array([screen.harmful_probability(t) for t in texts]), "pass",
    )  # fmt: skip
    screen.threshold = chosen["threshold"]
    return screen, path, chosen


def _load(path: Path) -> LexicalScreen | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return LexicalScreen(
                z["weights"].astype(np.float32), float(z["bias"]), z["idf"].astype(np.float32)
            )
    except (OSError, ValueError, KeyError):
        log.warning("lexical screen %s unreadable; fitting it again", path)
        return None
