"""The fine-tuned encoder of the hazard classifier, and our labeled set's training texts.

The encoder's layers are fine-tuned (training/finetune.py) with a softmax head on the
training set (the labeled set's train split and the chat corpus's benign turns), cached
under var/governance/ keyed by the training data and the hyper-parameters. A cached file
may also be found among the current artifacts (same file names): an unchanged build
reuses it instead of fine-tuning again. training/build.py trains the served heads over
this encoder's embeddings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

from serve_app.governance.artifacts import ARTIFACT_DIR
from serve_app.governance.hazards import BENIGN, CLASSES
from training import finetune
from training.labeled import Item, load_items

log = logging.getLogger("promethios.training.classifier")
# 4: the encoder depth is stored with the weights; 5: the tuned layers are stored (and
# served) in fp16 — the shipped file is half the size, and a fresh build and the build that
# trained them serve the very same weights.
FORMAT = 5
CORPUS_BENIGN = 400  # benign texts drawn from the shipped chat corpus (training only)


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


def _tuned_name(key: str) -> str:
    """The tuned layers' file for training data and settings keyed `key`."""
    return f"harm-v{FORMAT}-{key}.pt"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def gold_class(item: Item) -> str:
    """The classifier's class of an item (PII and secrets are the rules' business: benign)."""
    return item.label if item.label in CLASSES else BENIGN


def corpus_benign() -> list[str]:
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
    corpus = corpus_benign()
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
