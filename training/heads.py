"""Heads over the served encoder's window embeddings, trained as serving reads them.

Serving flags a text when its most harmful window's harmful mass (1 - p(benign)) reaches
the threshold. So a head is trained per example, not per window: a benign example's every
window must read benign; a harmful example's most harmful window (under the head being
trained) must read as its class. A public source that says only "harmful" (not which
hazard) gives a partial label: the loss is -log(1 - p(benign)) on that window, whichever
hazard takes the mass. Classes are weighted to balance (benign's times BENIGN_WEIGHT, as
the fine-tuning's), full-batch Adam, deterministic for the same inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from serve_app.governance.harm import SCALE, gelu
from serve_app.governance.hazards import BENIGN, CLASSES
from training import public

log = logging.getLogger("promethios.training.heads")
BENIGN_INDEX = CLASSES.index(BENIGN)
PARTIAL = -1  # a label index: some hazard, which unknown


@dataclass(frozen=True)
class HeadParams:
    steps: int = 300
    lr: float = 3e-3
    l2: float = 1e-4
    benign_weight: float = 5.0
    label_smoothing: float = 0.1
    hidden: int = 0  # 0: linear (the served head's form); else one GELU layer of this width
    seed: int = 0


def label_index(label: str) -> int:
    return PARTIAL if label == public.HARMFUL else CLASSES.index(label)


def fit(
    x: np.ndarray, owner: np.ndarray, labels: np.ndarray, params: HeadParams = HeadParams(),
) -> dict[str, np.ndarray]:  # fmt: skip
    """A head over window embeddings `x` whose windows belong to examples `owner` (0..E-1,
    windows of one example together) labelled `labels` (E class indices, PARTIAL allowed).
    Returns its weights: {"w", "b"} (linear) or {"w1", "b1", "w2", "b2"}."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(params.seed)
        xt = torch.tensor(SCALE * x, dtype=torch.float32)
        own = torch.tensor(owner, dtype=torch.long)
        y = torch.tensor(labels, dtype=torch.long)
        n_ex, n_cls = len(labels), len(CLASSES)
        weights = _example_weights(labels, params.benign_weight)
        wt = torch.tensor(weights, dtype=torch.float32)
        nwin = torch.bincount(own, minlength=n_ex).float()
        if params.hidden:
            d = params.hidden
            p = {"w1": torch.randn(x.shape[1], d) * (1 / np.sqrt(x.shape[1])),
                 "b1": torch.zeros(d), "w2": torch.randn(d, n_cls) * (1 / np.sqrt(d)),
                 "b2": torch.zeros(n_cls)}  # fmt: skip
        else:
            p = {"w": torch.zeros(x.shape[1], n_cls), "b": torch.zeros(n_cls)}
        for t in p.values():
            t.requires_grad_()
        opt = torch.optim.Adam(list(p.values()), lr=params.lr)
        benign_ex = y == BENIGN_INDEX
        exact = y >= 0
        eps = params.label_smoothing
        for _ in range(params.steps):
            logp = torch.log_softmax(_logits(p, xt), dim=1)
            harm_logp = torch.logsumexp(
                torch.cat([logp[:, :BENIGN_INDEX], logp[:, BENIGN_INDEX + 1 :]], dim=1), dim=1
            )
            with torch.no_grad():  # each example's most harmful window, as served
                mass = harm_logp.exp()
                top_mass = torch.full((n_ex,), -1.0).scatter_reduce(0, own, mass, "amax")
                top = mass >= top_mass[own]
                n_top = torch.bincount(own[top], minlength=n_ex).float().clamp(min=1)
            yw = y[own]
            smooth = -(1 - eps) * logp.gather(1, yw.clamp(min=0)[:, None])[:, 0] - eps * logp.mean(
                1
            )
            per_window = torch.where(exact[own], smooth, -harm_logp)
            share = torch.where(benign_ex[own], 1.0 / nwin[own], top.float() / n_top[own])
            loss = (wt[own] * share * per_window).sum() / wt.sum()
            loss = loss + params.l2 * sum((v**2).sum() for k, v in p.items() if k.startswith("w"))
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.info(
            "head fitted on %d examples (%d windows): loss %.4f", n_ex, len(owner), loss.item()
        )
        return {k: v.detach().double().numpy() for k, v in p.items()}
    finally:
        torch.set_num_threads(threads)


def probabilities(head: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = SCALE * np.asarray(x, dtype=np.float64)
    if "w1" in head:
        h = z @ head["w1"] + head["b1"]
        z = gelu(h) @ head["w2"] + head["b2"]
    else:
        z = z @ head["w"] + head["b"]
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def example_mass(probs: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each example's most harmful window: its harmful mass and that window's index."""
    mass = 1.0 - probs[:, BENIGN_INDEX]
    best = np.full(n, -1.0)
    where = np.zeros(n, dtype=np.int64)
    order = np.lexsort((-mass, owner))  # by example, most harmful first
    first = np.ones(len(order), bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    chosen = order[first]
    best[owner[chosen]] = mass[chosen]
    where[owner[chosen]] = chosen
    return best, where


def _logits(p, xt):  # noqa: ANN001, ANN202
    import torch

    if "w1" in p:
        return (
            torch.nn.functional.gelu(xt @ p["w1"] + p["b1"], approximate="tanh") @ p["w2"] + p["b2"]
        )
    return xt @ p["w"] + p["b"]


def _example_weights(labels: np.ndarray, benign_weight: float) -> np.ndarray:
    """Balanced class weights (PARTIAL counts as a class of its own), benign's times
    `benign_weight`."""
    values, counts = np.unique(labels, return_counts=True)
    per = {int(v): len(labels) / (len(values) * c) for v, c in zip(values, counts, strict=True)}
    per[BENIGN_INDEX] = per.get(BENIGN_INDEX, 0.0) * benign_weight
    return np.array([per[int(v)] for v in labels])
