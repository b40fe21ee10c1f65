"""Fits the lexical screen (serve_app/governance/lexical_screen.py) and chooses its threshold.

A logistic regression (L2, balanced class weights, full-batch L-BFGS) over the TF-IDF rows
of the classifier's training set (harmful = any class but benign). training/build.py
trains it on the pooled windows and chooses its threshold on the pooled dev.
"""

from __future__ import annotations

import logging

import numpy as np

from serve_app.governance.lexical_screen import (
    BUCKETS,
    FORMAT,
    PATTERN,
    LexicalScreen,
    _term_frequencies,
    _unit,
)
from training import finetune

log = logging.getLogger("promethios.training.lexical")

C = 10.0  # inverse L2 strength (scikit-learn's convention: C times the summed loss)
MAX_ITER = 300
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
