"""The pooled governance data: our labeled set beside the public sources, with splits.

Every example carries its source. Our labeled set keeps its splits (train / dev / test;
test is never used to build). A public source of role `train` is split by text hash:
80 % train, 20 % dev — the pooled dev that chooses the operating points spans every
source and the real benign traffic, not one hand-written set. A source of role `eval`
(built to evaluate guard models or jailbreaks) is `eval` whole: never trained or tuned on.
The big benign intent sets (tens of thousands of short commands) are capped, so that short
does not come to mean benign. A public text that is also one of our dev or test items is
left out of the public sources.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from serve_app.governance.hazards import BENIGN, CLASSES
from training import public
from training.classifier import corpus_benign
from training.labeled import load_items

OWN = "own"  # our labeled set (training/data/labeled_seeds.yaml) and the chat corpus
# Benign items kept per public source (train + dev), chosen by text hash: deterministic.
BENIGN_CAP = 3000


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # one of CLASSES, or public.HARMFUL (some hazard, which unknown)
    source: str  # OWN or a public source's name
    split: str  # train | dev | test (ours only) | eval (an eval-role source)

    @property
    def harmful(self) -> bool:
        return self.label != BENIGN


def _rank(text: str) -> int:
    return int(hashlib.sha256(("cap:" + text).encode()).hexdigest()[:12], 16)


@lru_cache(maxsize=4)
def examples(sources: tuple[str, ...] | None = None) -> tuple[Example, ...]:
    """Every example: ours, then each public source's (`sources` None: all in the manifest)."""
    out: list[Example] = []
    own = load_items()
    for item in own:
        label = item.label if item.label in CLASSES else BENIGN  # PII and secrets: rules'
        out.append(Example(item.text, label, OWN, item.split))
    out += [Example(t, BENIGN, OWN, "train") for t in corpus_benign()]
    held = {" ".join(i.text.lower().split()) for i in own if i.split != "train"}
    for name in sources if sources is not None else tuple(public.names()):
        role = public.entry(name)["role"]
        items = [i for i in public.read(name) if i.key not in held]
        benign = sorted((i for i in items if i.label == BENIGN), key=lambda i: _rank(i.key))
        keep = {id(i) for i in benign[:BENIGN_CAP]}
        for i in items:
            if i.label == BENIGN and id(i) not in keep:
                continue
            split = "eval" if role == "eval" else public.split_of(i)
            out.append(Example(i.text, i.label, name, split))
    return tuple(out)
