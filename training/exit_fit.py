"""Fits the early exit's head (serve_app/governance/early_exit.py) and chooses its threshold.

The head is trained on the training set's served (int8) embeddings at the split, with the
fine-tuning's class weights. Its threshold is chosen on dev: the highest one under which
at most MAX_LOST of the dev harmful items (hazards and injection) that the full classifier
flags at its *lowest* threshold (the most sensitive budget a policy may choose) would
exit. The same rule chooses the lexical screen's threshold (training/lexical_fit.py).
Both are cached under var/governance/ beside the classifier's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from serve_app.governance.early_exit import EXIT_LAYER, ExitHead, harmful_mass
from serve_app.governance.embedding import Embedder
from serve_app.governance.harm import SCALE, HarmClassifier
from serve_app.governance.hazards import BENIGN, CLASSES
from training import classifier as harm
from training import finetune
from training.labeled import load_items

log = logging.getLogger("promethios.training.exit")

# One hidden layer of 256 (GELU): at 3 layers it let 80 % of dev benign items exit against
# a linear head's 65 %, at the same loss (MAX_LOST).
HIDDEN = 256
STEPS = 800
LR = 3e-3
L2 = 1e-4  # times the squared weights, added to the loss
SEED = 0
# Dev harmful items (of ~1,100 the full classifier flags at its lowest threshold) that may
# exit: 2 is 0.2 % of them.
MAX_LOST = 2
MARGIN = 1e-6  # the exit threshold sits this far under the first kept item's mass (dev)
PARAMS = (EXIT_LAYER, HIDDEN, STEPS, LR, L2, SEED, SCALE, finetune.BENIGN_WEIGHT,
          finetune.LABEL_SMOOTHING, finetune.THREADS)  # fmt: skip


def fit(emb: np.ndarray, labels: list[int], benign: int) -> ExitHead:
    """The exit head fitted to unit embeddings at the split (full batch Adam, the
    fine-tuning's weighted, label-smoothed loss); deterministic for the same inputs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(finetune.THREADS)
    try:
        gen = torch.Generator().manual_seed(SEED)
        x = torch.tensor(SCALE * np.asarray(emb), dtype=torch.float32)
        y = torch.tensor(labels)
        n_classes = len(CLASSES)
        bound1, bound2 = 1 / np.sqrt(x.shape[1]), 1 / np.sqrt(HIDDEN)
        w1 = ((torch.rand(x.shape[1], HIDDEN, generator=gen) * 2 - 1) * bound1).requires_grad_()
        b1 = ((torch.rand(HIDDEN, generator=gen) * 2 - 1) * bound1).requires_grad_()
        w2 = ((torch.rand(HIDDEN, n_classes, generator=gen) * 2 - 1) * bound2).requires_grad_()
        b2 = ((torch.rand(n_classes, generator=gen) * 2 - 1) * bound2).requires_grad_()
        loss_fn = finetune._weighted_loss(labels, n_classes, benign)
        opt = torch.optim.Adam([w1, b1, w2, b2], lr=LR)
        for _ in range(STEPS):
            logits = torch.nn.functional.gelu(x @ w1 + b1, approximate="tanh") @ w2 + b2
            loss = loss_fn(logits, y) + L2 * ((w1**2).sum() + (w2**2).sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
        log.info("exit head fitted: loss %.4f", loss.item())
        return ExitHead(*(t.detach().double().numpy() for t in (w1, b1, w2, b2)))
    finally:
        torch.set_num_threads(threads)


def choose_threshold(exit_mass: np.ndarray, flagged_harmful: np.ndarray, max_lost: int) -> float:
    """The highest exit threshold under which at most `max_lost` of the items in
    `flagged_harmful` (a mask: harmful items the full classifier flags) exit (exit: the
    exit head's harmful mass is below the threshold; MARGIN under the next one's). 0.0
    (none exit) when there are no more than `max_lost` of them: too few to choose by."""
    masses = np.sort(exit_mass[flagged_harmful])
    # Just under the next one's mass: one text's mass, computed alone when served, may
    # differ from its batch figure here in the last bits.
    return float(masses[max_lost]) - MARGIN if max_lost < len(masses) else 0.0


def exit_key(embedder: Embedder) -> str:
    """Changes with the served embeddings (the variant names the tuned weights) and PARAMS."""
    return hashlib.sha256(f"{embedder.variant}|{PARAMS}".encode()).hexdigest()[:12]


def head_name(embedder: Embedder) -> str:
    """The exit head's file (cached and shipped under this name)."""
    return f"harm-v{harm.FORMAT}-{harm.cache_key()}-exit-{exit_key(embedder)}.npz"


def load_or_fit(
    cache_dir: Path, embedder: Embedder, classifier: HarmClassifier
) -> tuple[ExitHead, Path, dict]:
    """The exit head for `embedder`'s served encoder with its dev threshold (both cached),
    its file, and the threshold's dev figures. The encoder must be split (ONNX Runtime)."""
    if not embedder.staged:
        raise RuntimeError("the early exit is built on the split ONNX encoder (onnxruntime)")
    path = cache_dir / head_name(embedder)
    head = _load(harm.cached_or_shipped(path))
    if head is None:
        texts, labels = harm.training_set()
        started = time.monotonic()
        emb = _early(embedder, texts)
        head = fit(emb, [CLASSES.index(lab) for lab in labels], CLASSES.index(BENIGN))
        log.info("exit head fitted on %d texts in %.0f s", len(texts), time.monotonic() - started)
        buf = io.BytesIO()
        np.savez(buf, w1=head.w1, b1=head.b1, w2=head.w2, b2=head.b2)
        harm.write_atomic(path, buf.getvalue())
    else:
        path = harm.cached_or_shipped(path)
    chosen = dev_threshold(
        cache_dir, path, embedder, classifier, MAX_LOST,
        lambda texts: head.harmful_mass(_early(embedder, texts)), "exit",
    )  # fmt: skip
    head.threshold = chosen["threshold"]
    return head, path, chosen


def dev_threshold(
    cache_dir: Path,
    weights: Path,
    embedder: Embedder,
    classifier: HarmClassifier,
    max_lost: int,
    mass: Callable[[list[str]], np.ndarray],
    verb: str,
) -> dict:
    """The threshold of a stage in front of the full classifier (texts whose `mass` is
    under it are decided benign there), chosen on dev by `choose_threshold` against the
    dev harmful items the full classifier flags at its lowest threshold, and cached beside
    the stage's `weights`; returned with the share of dev benign items that `verb`."""
    lowest = min([classifier.threshold, *classifier.by_budget.values()])
    tkey = hashlib.sha256(
        f"{weights.name}|{harm.threshold_key(embedder)}|{lowest}|{max_lost}|{MARGIN}".encode()
    ).hexdigest()[:12]
    tpath = cache_dir / f"{weights.stem}-threshold-{tkey}.json"
    try:
        chosen = json.loads(tpath.read_text())
        float(chosen["threshold"])
        return chosen
    except (OSError, ValueError, KeyError, TypeError):
        pass
    dev = [i for i in load_items() if i.split == "dev"]
    texts = [i.text for i in dev]
    full_mass = harmful_mass(classifier.probabilities(embedder.embed(texts)))
    harmful = np.array([harm.gold_class(i) != BENIGN for i in dev])
    flagged = harmful & (full_mass >= lowest)
    stage_mass = mass(texts)
    threshold = choose_threshold(stage_mass, flagged, max_lost)
    benign = float((stage_mass[~harmful] < threshold).mean()) if (~harmful).any() else 0
    chosen = {"threshold": threshold, "dev_flagged_harmful": int(flagged.sum()),
              f"dev_benign_{verb}_rate": round(benign, 4)}  # fmt: skip
    log.info("%s: dev threshold %s", weights.stem, chosen)
    harm.write_atomic(tpath, json.dumps(chosen).encode())
    return chosen


def _early(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Unit embeddings at the split (the layers above are not run)."""
    return np.stack([e for e, _ in embedder.embed_staged(texts, lambda _e: False)])


def _load(path: Path) -> ExitHead | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return ExitHead(z["w1"], z["b1"], z["w2"], z["b2"])
    except (OSError, ValueError, KeyError):
        log.warning("exit head %s unreadable; fitting it again", path)
        return None
