"""Builds the hazard classifier: fine-tuning, the head's refit, and the dev thresholds.

The encoder's layers and the head are fine-tuned (training/finetune.py) on the training
set (the labeled set's train split, the chat corpus's benign turns and the public sources
of training/sources.yaml), then the head is fitted again on the served (int8) embeddings
of the same texts, and dev chooses a threshold on the harmful mass for each benign
false-positive budget (on the served int8 encoder). The results are cached under
var/governance/ keyed by the training data and the hyper-parameters (the tuned weights)
and by the embedding variant (the head and thresholds); `training/build.py` writes them out
as governance artifacts. A cached file may also be found among the current artifacts
(same file names): an unchanged build reuses them instead of fine-tuning again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from serve_app.governance.artifacts import ARTIFACT_DIR
from serve_app.governance.embedding import Embedder
from serve_app.governance.harm import MAX_DEV_BENIGN_FPR, HarmClassifier
from serve_app.governance.hazards import BENIGN, BENIGN_FPR_BUDGETS, CLASSES
from training import finetune
from training.labeled import Item, load_items

log = logging.getLogger("promethios.training.classifier")
# 4: the encoder depth is stored with the weights; 5: the tuned layers are stored (and
# served) in fp16 — the shipped file is half the size, and a fresh build and the build that
# trained them serve the very same weights.
FORMAT = 5
CORPUS_BENIGN = 400  # benign texts drawn from the shipped chat corpus (training only)
# The thresholds dev may choose among: steps of 0.005 up to 0.99, then finer towards 1
# (1 - 10^-2 ... 1 - 10^-4): the harmful mass of confident look-alikes sits within 0.01
# of 1, where a step of 0.005 left no threshold within the budget on 2026.12-3's dev.
THRESHOLDS = np.unique(
    np.round(np.concatenate([np.arange(0.30, 0.99, 0.005), 1.0 - np.geomspace(1e-2, 1e-4, 25)]), 6)
)


def build_classifier(
    cache_dir: Path, embedder: Embedder
) -> tuple[Path, Path, HarmClassifier, dict]:
    """The tuned layers' and the refitted head's files (cached or fitted here), the
    classifier with its dev thresholds, and the dev figures of each budget. Points
    `embedder` at the fine-tuned encoder: its embeddings are what the head reads."""
    key = cache_key()
    tuned = cache_dir / _tuned_name(key)
    weights, tuned = _load_or_tune(tuned)
    embedder.use_weights(weights.encoder, key, weights.layers)
    head = cache_dir / _head_name(key, embedder)
    (w, b), head = _load_or_refit(head, weights, embedder)
    path = cache_dir / f"harm-v{FORMAT}-{key}-threshold-{threshold_key(embedder)}.json"
    try:
        per_budget = {float(k): v for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        model = HarmClassifier(w, b, 0.0)
        dev = [i for i in load_items() if i.split == "dev"]
        probs = model.probabilities(embedder.embed([i.text for i in dev]))
        gold = [gold_class(i) for i in dev]
        per_budget = {b: choose_threshold(probs, gold, b) for b in BENIGN_FPR_BUDGETS}
        log.info("harm classifier: dev thresholds %s", per_budget)
        write_atomic(path, json.dumps({str(k): v for k, v in per_budget.items()}).encode())
    by_budget = {b: float(c["threshold"]) for b, c in per_budget.items()}
    return tuned, head, HarmClassifier(w, b, by_budget[MAX_DEV_BENIGN_FPR], by_budget), per_budget


def cached_or_shipped(path: Path) -> Path:
    """`path` where it exists, else the current artifact of the same name (which may not)."""
    shipped = ARTIFACT_DIR / path.name
    return shipped if not path.exists() and shipped.exists() else path


def _load_or_tune(path: Path) -> tuple[finetune.TunedWeights, Path]:
    """The tuned weights and the file they are in (cached, an artifact, or tuned here)."""
    import torch

    if (found := cached_or_shipped(path)).exists():
        try:
            z = torch.load(found, weights_only=True)
            return finetune.TunedWeights(
                z["encoder"], z["w"].numpy(), z["b"].numpy(), int(z["layers"])
            ), found
        except (OSError, RuntimeError, KeyError, ValueError):
            log.warning("harm classifier cache %s unreadable; fine-tuning again", found)
    texts, labels = training_set()
    log.warning(  # 6 tuned layers: ~1.5 minutes per 1,000 texts on 2 AVX2 cores
        "fine-tuning the hazard classifier on %d texts (no cached or shipped weights for "
        "this data; about %d minutes)",
        len(texts),
        max(1, round(1.5 * len(texts) / 1000)),
    )
    started = time.monotonic()
    weights = finetune.fine_tune(
        texts, [CLASSES.index(lab) for lab in labels], len(CLASSES), CLASSES.index(BENIGN)
    )
    log.warning("hazard classifier fine-tuned in %.0f s", time.monotonic() - started)
    # Kept in fp16 from here on (the encoder loads them into fp32 and serves int8), so the
    # weights served now are the ones the file gives a fresh build.
    weights.encoder = {name: t.to(torch.float16) for name, t in weights.encoder.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt")
    os.close(fd)
    blob = {"encoder": weights.encoder, "w": torch.from_numpy(weights.w),
            "b": torch.from_numpy(weights.b), "layers": weights.layers}  # fmt: skip
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return weights, path


def _load_or_refit(
    path: Path, weights: finetune.TunedWeights, embedder: Embedder
) -> tuple[tuple[np.ndarray, np.ndarray], Path]:
    """The head refitted on the served embeddings of the training texts (cached), and its file."""
    if (found := cached_or_shipped(path)).exists():
        try:
            with np.load(found) as z:
                return (z["w"], z["b"]), found
        except (OSError, ValueError, KeyError):
            log.warning("refitted head cache %s unreadable; fitting it again", found)
    texts, labels = training_set()
    started = time.monotonic()
    w, b = finetune.refit_head(
        weights.w, weights.b, embedder.embed(texts), [CLASSES.index(lab) for lab in labels],
        CLASSES.index(BENIGN),
    )  # fmt: skip
    log.info("head refitted on %d served embeddings in %.0f s", len(texts),
             time.monotonic() - started)  # fmt: skip
    buf = io.BytesIO()
    np.savez(buf, w=w, b=b)
    write_atomic(path, buf.getvalue())
    return (w, b), path


def _tuned_name(key: str) -> str:
    """The tuned layers' file for training data and settings keyed `key`."""
    return f"harm-v{FORMAT}-{key}.pt"


def _head_name(key: str, embedder: Embedder) -> str:
    """The refitted head's file for those weights as `embedder`'s variant serves them."""
    return f"harm-v{FORMAT}-{key}-head-{head_key(embedder)}.npz"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def gold_class(item: Item) -> str:
    """The classifier's class of an item (PII and secrets are the rules' business: benign)."""
    return item.label if item.label in CLASSES else BENIGN


def _corpus_benign() -> list[str]:
    """Benign user turns and every assistant turn (refusals included) of the chat corpus,
    less any text that is also a dev or test item."""
    import random

    from serve_app.model.corpus import chat_turns

    held_out = {i.text for i in load_items() if i.split != "train"}
    texts: set[str] = set()
    for category, user, answer in chat_turns():
        if not category.startswith("refusal"):
            texts.add(user)
        texts.add(answer)
    ordered = sorted(texts - held_out)
    random.Random(0).shuffle(ordered)
    return ordered[:CORPUS_BENIGN]


def _training_items() -> list[Item]:
    return [i for i in load_items() if i.split == "train"]


def training_set() -> tuple[list[str], list[str]]:
    """(texts, classes) the encoder is fine-tuned on: the train split and corpus benign."""
    items = _training_items()
    corpus = _corpus_benign()
    return [i.text for i in items] + corpus, [gold_class(i) for i in items] + [BENIGN] * len(corpus)


def cache_key() -> str:
    """Changes with the training items (texts, labels, splits), the chat corpus and every
    hyper-parameter: stale weights are never loaded."""
    from serve_app.model.corpus import CORPUS_PATH

    h = hashlib.sha256()
    for item in _training_items():
        h.update(f"{item.label}\t{item.split}\t{item.group}\t{item.text}\n".encode())
    h.update(CORPUS_PATH.read_bytes())
    h.update(repr((FORMAT, finetune.PARAMS, CORPUS_BENIGN)).encode())
    return h.hexdigest()[:16]


def head_key(embedder: Embedder) -> str:
    """Changes with the embedding variant (the head reads the served embeddings) and the
    refit's settings; the training data are in `cache_key`, beside it in the file name."""
    return hashlib.sha256(f"{embedder.variant}|{finetune.REFIT_PARAMS}".encode()).hexdigest()[:12]


def threshold_key(embedder: Embedder) -> str:
    """Changes with the dev items, the embedding variant, the head's refit, the
    false-positive budgets and the thresholds to choose among."""
    h = hashlib.sha256()
    for item in load_items():
        if item.split == "dev":
            h.update(f"{item.label}\t{item.text}\n".encode())
    h.update(f"{embedder.variant}|{finetune.REFIT_PARAMS}".encode())
    h.update(THRESHOLDS.tobytes())
    h.update(repr(BENIGN_FPR_BUDGETS).encode())
    return h.hexdigest()[:12]


def choose_threshold(
    probs: np.ndarray, gold: list[str], budget: float = MAX_DEV_BENIGN_FPR
) -> dict:
    """The threshold on the harmful mass with the best dev macro F1 (hazards and injection)
    among those whose dev benign false-positive rate is within `budget` (ties: the higher
    threshold); with the dev figures it gives."""
    benign = CLASSES.index(BENIGN)
    y = np.array([CLASSES.index(g) for g in gold])
    mass = 1.0 - probs[:, benign]
    harmful = probs.copy()
    harmful[:, benign] = -1.0
    top = harmful.argmax(1)
    best: dict = {"threshold": float(THRESHOLDS[-1]), "dev_macro_f1": 0.0, "dev_benign_fpr": None}
    for t in THRESHOLDS:
        pred = np.where(mass >= t, top, benign)
        fpr = float((pred[y == benign] != benign).mean()) if (y == benign).any() else 0.0
        if fpr > budget:
            continue
        f1 = [
            2 * ((pred == c) & (y == c)).sum() / max(1, (pred == c).sum() + (y == c).sum())
            for c in range(len(CLASSES))
            if c != benign
        ]
        macro = float(np.mean(f1))
        if macro >= best["dev_macro_f1"]:
            best = {"threshold": round(float(t), 6), "dev_macro_f1": round(macro, 4),
                    "dev_benign_fpr": round(fpr, 4)}  # fmt: skip
    return best
