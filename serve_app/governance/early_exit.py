"""The early exit: texts the encoder's bottom layers already read as plainly benign stop there.

Why: the encoder is nearly all of a request's scoring time (two texts, 6 layers each), and
most texts are ordinary. The served ONNX encoder is split after EXIT_LAYER layers
(serve_app/governance/onnx_encoder.py); a small head (one hidden layer) reads the
mean-pooled, unit-length hidden state there and gives the same 16 class probabilities as
the full classifier. When its harmful mass is under the exit threshold the text is done:
not flagged, its probabilities the exit head's. Otherwise the layers above run from that
hidden state (nothing is computed twice) and the full classifier decides, as before.

The exit can only un-flag: a text flagged after exiting is impossible, so the benign
false-positive rate never rises; what it may cost is recall. The exit threshold is chosen
on dev: the highest one under which at most MAX_LOST of the dev harmful items (hazards and
injection) that the full classifier flags at its *lowest* threshold (the most sensitive
budget a policy may choose) would exit. The head is trained on the train split's served
(int8) embeddings at the split, with the fine-tuning's class weights; it ships with the
other weights (harm.SHIPPED_DIR) and is cached under var/governance/.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.governance import finetune, harm
from serve_app.governance.dataset import load_items
from serve_app.governance.embedding import Embedder
from serve_app.governance.hazards import BENIGN, CLASSES

log = logging.getLogger("promethios.governance.early_exit")
_GELU_C = float(np.sqrt(2.0 / np.pi))

# After 3 of the 6 layers. Measured on dataset 2026.12-6's served build (Intel Xeon, AMX),
# 200 bench requests: exit heads after 1 / 2 / 3 layers let 33-39 / 45-62 / 67-70 % of the
# bench's texts exit at the dev-chosen threshold, the encoder's median per request falling
# from 9.6 ms to 5.4-7.2 / 5.0-5.6 / 5.5 ms; after 3 layers the 75th percentile stays lowest
# (6.4 ms against 7.3-7.8 after 2) and dev benign items exit most (80 % against 50-58 %).
EXIT_LAYER = 3
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
PARAMS = (EXIT_LAYER, HIDDEN, STEPS, LR, L2, SEED, finetune.SCALE, finetune.BENIGN_WEIGHT,
          finetune.LABEL_SMOOTHING, finetune.THREADS)  # fmt: skip


@dataclass
class ExitHead:
    """The exit head's weights and its dev-chosen threshold on the harmful mass."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    threshold: float = 0.0

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        """Class probabilities (CLASSES order) from unit embeddings at the split."""
        x = finetune.SCALE * np.atleast_2d(emb).astype(np.float64)
        h = x @ self.w1 + self.b1
        h = 0.5 * h * (1.0 + np.tanh(_GELU_C * (h + 0.044715 * h**3)))  # GELU (tanh form)
        return harm._softmax(h @ self.w2 + self.b2)

    def harmful_mass(self, emb: np.ndarray) -> np.ndarray:
        return _harmful(self.probabilities(emb))

    def exits(self, probs: np.ndarray) -> bool:
        """Whether a text whose exit-head probabilities are `probs` stops at the split."""
        return bool(_harmful(probs) < self.threshold)


def _harmful(probs: np.ndarray) -> np.ndarray:
    """The probability mass off benign: of one row of class probabilities, or of each row."""
    return 1.0 - probs[..., CLASSES.index(BENIGN)]


def fit(emb: np.ndarray, labels: list[int], benign: int) -> ExitHead:
    """The exit head fitted to unit embeddings at the split (full batch Adam, the
    fine-tuning's weighted, label-smoothed loss); deterministic for the same inputs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(finetune.THREADS)
    try:
        gen = torch.Generator().manual_seed(SEED)
        x = torch.tensor(finetune.SCALE * np.asarray(emb), dtype=torch.float32)
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
    cache_dir: Path, embedder: Embedder, classifier: harm.HarmClassifier
) -> ExitHead | None:
    """The exit head for `embedder`'s served encoder, with its dev threshold (both cached);
    None where the encoder is not split (the torch runtime): every text runs in full."""
    if not embedder.staged:
        log.warning("the governance encoder is not split; every text runs all its layers")
        return None
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
        harm._write_atomic(path, buf.getvalue())
    head.threshold = dev_threshold(
        cache_dir, path, embedder, classifier, MAX_LOST,
        lambda texts: head.harmful_mass(_early(embedder, texts)), "exit",
    )  # fmt: skip
    return head


def dev_threshold(
    cache_dir: Path,
    weights: Path,
    embedder: Embedder,
    classifier: harm.HarmClassifier,
    max_lost: int,
    mass: Callable[[list[str]], np.ndarray],
    verb: str,
) -> float:
    """The threshold of a stage in front of the full classifier (texts whose `mass` is
    under it are decided benign there), chosen on dev by `choose_threshold` against the
    dev harmful items the full classifier flags at its lowest threshold, and cached beside
    the stage's `weights` (logged and saved with the share of dev benign items that `verb`)."""
    lowest = min([classifier.threshold, *classifier.by_budget.values()])
    tkey = hashlib.sha256(
        f"{weights.name}|{harm.threshold_key(embedder)}|{lowest}|{max_lost}|{MARGIN}".encode()
    ).hexdigest()[:12]
    tpath = cache_dir / f"{weights.stem}-threshold-{tkey}.json"
    try:
        return float(json.loads(tpath.read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    dev = [i for i in load_items() if i.split == "dev"]
    texts = [i.text for i in dev]
    full_mass = _harmful(classifier.probabilities(embedder.embed(texts)))
    harmful = np.array([harm._gold(i) != BENIGN for i in dev])
    flagged = harmful & (full_mass >= lowest)
    stage_mass = mass(texts)
    threshold = choose_threshold(stage_mass, flagged, max_lost)
    benign = float((stage_mass[~harmful] < threshold).mean()) if (~harmful).any() else 0
    chosen = {"threshold": threshold, "dev_flagged_harmful": int(flagged.sum()),
              f"dev_benign_{verb}_rate": round(benign, 4)}  # fmt: skip
    log.info("%s: dev threshold %s", weights.stem, chosen)
    harm._write_atomic(tpath, json.dumps(chosen).encode())
    return threshold


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
