"""The harmful-content classifier: fine-tuned MiniLM with a softmax head.

The top layers of the encoder and the head are fine-tuned (serve_app/governance/
finetune.py) on the train split of the shipped dataset plus benign turns of the chat
corpus, then the head is fitted again on the served (int8) embeddings of the same texts;
dev chooses the decision threshold (on the served int8 encoder: the lowest
false-positive budget's best macro F1); test is never used. Cached under var/governance/
keyed by the training data itself and the hyper-parameters (the tuned weights), and by
the embedding variant (the threshold). The tuned weights and refitted head of the shipped
data are shipped too (SHIPPED_DIR, same file names): a fresh checkout only exports the
encoder and chooses the threshold; a change to the data or the settings trains afresh.
Classes: the 14 MLCommons hazards, prompt injection, and benign (which includes
risky-sounding benign prompts, the over-refusal guard).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve_app.governance import finetune
from serve_app.governance.dataset import Item, load_items
from serve_app.governance.embedding import Embedder
from serve_app.governance.hazards import BENIGN, BENIGN_FPR_BUDGETS, CLASSES

log = logging.getLogger("promethios.governance.harm")
# 4: the encoder depth is stored with the weights; 5: the tuned layers are stored (and
# served) in fp16 — the shipped file is half the size, and a fresh build and the build that
# trained them serve the very same weights.
FORMAT = 5
# Dev benign items the threshold may flag. Test allows 3 %; dev has 657 benign items, mostly
# in groups of five framings of one seed (one seed is 0.8 %). Chosen on one half of dev's
# seeds, a 2 % budget flagged 2.0 % of the other half's benign items (over 3 % in 2 of 8
# halvings), a 3 % budget 2.7 % (over 3 % in 5 of 12): 2 % leaves the margin. The default:
# a policy file may choose another of BENIGN_FPR_BUDGETS (`classifier_max_benign_fpr`).
MAX_DEV_BENIGN_FPR = 0.02
CORPUS_BENIGN = 400  # benign texts drawn from the shipped chat corpus (training only)
# The tuned layers and the refitted head of the current training data, under the cache's
# file names (the keys in them say what they were built from). `python -m
# serve_app.governance.ship_weights` writes them; a first build without them fine-tunes
# for ~30 minutes on a 2-core AVX2 machine (all 6 layers), with them it takes ~40 s.
SHIPPED_DIR = Path(__file__).parent / "data" / "weights"
# The thresholds dev may choose among: steps of 0.005 up to 0.99, then finer towards 1
# (1 - 10^-2 ... 1 - 10^-4): the harmful mass of confident look-alikes sits within 0.01
# of 1, where a step of 0.005 left no threshold within the budget on 2026.12-3's dev.
THRESHOLDS = np.unique(
    np.round(np.concatenate([np.arange(0.30, 0.99, 0.005), 1.0 - np.geomspace(1e-2, 1e-4, 25)]), 6)
)


@dataclass(frozen=True)
class Classification:
    """Class probabilities of one text and the class it is flagged as (None: not flagged).

    `stage`: "full" (the classifier on the full encoder), "early" (the early exit's head
    read it as benign after the bottom layers: serve_app/governance/early_exit.py) or
    "lexical" (the lexical screen read its words as benign before the encoder ran:
    serve_app/governance/lexical_screen.py; `probs` then holds the benign class only)."""

    probs: dict[str, float]
    flagged: str | None
    confidence: float
    stage: str = "full"


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class HarmClassifier:
    """Classifies embeddings (of the fine-tuned encoder) into hazard / injection / benign."""

    def __init__(
        self, w: np.ndarray, b: np.ndarray, threshold: float,
        by_budget: dict[float, float] | None = None,
    ) -> None:  # fmt: skip
        self.w, self.b, self.threshold = w, b, threshold
        # Dev benign false-positive budget -> the threshold dev chose for it.
        self.by_budget: dict[float, float] = dict(by_budget or {})
        self._benign = CLASSES.index(BENIGN)

    def threshold_for(self, budget: float | None) -> float:
        """The threshold for a dev benign false-positive budget (None: the default one)."""
        if budget is None:
            return self.threshold
        try:
            return self.by_budget[budget]
        except KeyError:
            raise ValueError(
                f"no threshold for a benign false-positive budget of {budget}; "
                f"built for {sorted(self.by_budget)}"
            ) from None

    def probabilities(self, emb: np.ndarray) -> np.ndarray:
        x = finetune.SCALE * np.atleast_2d(emb).astype(np.float64)
        return _softmax(x @ self.w + self.b)

    def classify(self, emb: np.ndarray, budget: float | None = None) -> list[Classification]:
        """Each embedding's class probabilities and verdict at the threshold chosen on dev
        for `budget` (a share of dev benign items flagged; None: MAX_DEV_BENIGN_FPR)."""
        return [self.decide(p, "full", budget) for p in self.probabilities(emb)]

    def decide(self, p: np.ndarray, stage: str, budget: float | None = None) -> Classification:
        """The verdict on one text's class probabilities `p`: from this classifier (stage
        "full"), flagged when the harmful mass (1 - p(benign)) reaches the threshold for
        `budget`, as the most probable harmful class; from the early exit's head (stage
        "early") or the lexical screen ("lexical"), never flagged (they pass only texts they
        read as benign)."""
        threshold = self.threshold_for(budget)
        harm = np.array(p, dtype=np.float64)
        harm[self._benign] = -1.0
        top = int(harm.argmax())
        mass = 1.0 - float(p[self._benign])
        probs = dict(zip(CLASSES, np.round(p, 4).tolist(), strict=True))
        if stage == "lexical":  # the lexical screen gives the benign probability only
            probs = {BENIGN: probs[BENIGN]}
        return Classification(
            probs=probs,
            flagged=CLASSES[top] if stage == "full" and mass >= threshold else None,
            confidence=round(mass, 4),
            stage=stage,
        )

    # -- building -------------------------------------------------------------------

    @classmethod
    def load_or_train(cls, cache_dir: Path, embedder: Embedder) -> HarmClassifier:
        """The cached classifier for this dataset, fine-tuning (and caching) it if absent.

        Points `embedder` at the fine-tuned encoder: its embeddings are what the head reads."""
        key = cache_key()
        weights = _load_or_tune(cache_dir / _tuned_name(key))
        embedder.use_weights(weights.encoder, key, weights.layers)
        w, b = _load_or_refit(cache_dir / _head_name(key, embedder), weights, embedder)
        path = cache_dir / f"harm-v{FORMAT}-{key}-threshold-{threshold_key(embedder)}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                by_budget = {float(k): float(v) for k, v in saved["by_budget"].items()}
                return cls(w, b, float(saved["threshold"]), by_budget)
            except (OSError, ValueError, KeyError, AttributeError):
                log.warning("harm threshold cache %s unreadable; choosing it again", path)
        model = cls(w, b, 0.0)
        dev = [i for i in load_items() if i.split == "dev"]
        probs = model.probabilities(embedder.embed([i.text for i in dev]))
        gold = [_gold(i) for i in dev]
        per_budget = {b: choose_threshold(probs, gold, b) for b in BENIGN_FPR_BUDGETS}
        chosen = dict(per_budget[MAX_DEV_BENIGN_FPR])  # the default (one of the budgets)
        chosen["by_budget"] = {str(b): c["threshold"] for b, c in per_budget.items()}
        log.info("harm classifier: dev threshold %s", chosen)
        _write_atomic(path, json.dumps(chosen).encode())
        model.threshold = chosen["threshold"]
        model.by_budget = {float(k): v for k, v in chosen["by_budget"].items()}
        return model


def cached_or_shipped(path: Path) -> Path:
    """`path` where it exists, else the shipped file of the same name (which may not)."""
    shipped = SHIPPED_DIR / path.name
    return shipped if not path.exists() and shipped.exists() else path


def _load_or_tune(path: Path) -> finetune.TunedWeights:
    import torch

    if (found := cached_or_shipped(path)).exists():
        try:
            z = torch.load(found, weights_only=True)
            return finetune.TunedWeights(
                z["encoder"], z["w"].numpy(), z["b"].numpy(), int(z["layers"])
            )
        except (OSError, RuntimeError, KeyError, ValueError):
            log.warning("harm classifier cache %s unreadable; fine-tuning again", found)
    texts, labels = training_set()
    log.warning(  # 6 tuned layers: ~1.5 minutes per 1,000 texts on 2 AVX2 cores
        "fine-tuning the hazard classifier on %d texts (no cached or shipped weights for "
        "this data; about %d minutes; `python -m serve_app.governance.ship_weights` ships "
        "them afterwards)",
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
    return weights


def _load_or_refit(
    path: Path, weights: finetune.TunedWeights, embedder: Embedder
) -> tuple[np.ndarray, np.ndarray]:
    """The head refitted on the served embeddings of the training texts (cached)."""
    if (found := cached_or_shipped(path)).exists():
        try:
            with np.load(found) as z:
                return z["w"], z["b"]
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
    _write_atomic(path, buf.getvalue())
    return w, b


def _tuned_name(key: str) -> str:
    """The tuned layers' file for training data and settings keyed `key`."""
    return f"harm-v{FORMAT}-{key}.pt"


def _head_name(key: str, embedder: Embedder) -> str:
    """The refitted head's file for those weights as `embedder`'s variant serves them."""
    return f"harm-v{FORMAT}-{key}-head-{head_key(embedder)}.npz"


def weight_files(embedder: Embedder) -> list[str]:
    """The names of the tuned weights and the head `embedder`'s variant reads (the files
    SHIPPED_DIR holds for the served variant)."""
    key = cache_key()
    return [_tuned_name(key), _head_name(key, embedder)]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _gold(item: Item) -> str:
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
    return [i.text for i in items] + corpus, [_gold(i) for i in items] + [BENIGN] * len(corpus)


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
    h.update(f"{embedder.variant}|{finetune.REFIT_PARAMS}|{MAX_DEV_BENIGN_FPR}".encode())
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
