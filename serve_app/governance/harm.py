"""The harmful-content classifier's serving half: a softmax head over the tuned encoder's
embedding, and its verdicts at the operating points chosen when it was built.

Classes: the 14 MLCommons hazards, prompt injection, and benign (which includes
risky-sounding benign prompts, the over-refusal guard). The head and its thresholds are
governance artifacts (serve_app/governance/artifacts.py), built by `training/` (the
fine-tuning, the head's refit on the served int8 embeddings, the thresholds chosen on dev
for each benign false-positive budget); nothing here trains or chooses a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.governance.artifacts import Manifest
from serve_app.governance.hazards import BENIGN, CLASSES

# The default benign false-positive budget whose threshold decides (a share of the build's
# dev benign items flagged); a policy file may choose another of BENIGN_FPR_BUDGETS
# (`classifier_max_benign_fpr`). Why 2 %: docs/governance.md.
MAX_DEV_BENIGN_FPR = 0.02
SCALE = 20.0  # the head's input is SCALE * the unit-length embedding (as it was trained)


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


_GELU_C = float(np.sqrt(2.0 / np.pi))


def gelu(h: np.ndarray) -> np.ndarray:
    """GELU, tanh form (as the heads are trained: torch's approximate="tanh")."""
    return 0.5 * h * (1.0 + np.tanh(_GELU_C * (h + 0.044715 * h**3)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class HarmClassifier:
    """Classifies embeddings (of the fine-tuned encoder) into hazard / injection / benign."""

    def __init__(
        self, w: np.ndarray, b: np.ndarray, threshold: float,
        by_budget: dict[float, float] | None = None,
        hidden: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:  # fmt: skip
        """`w`, `b`: the output layer; `hidden` (w1, b1): a GELU layer before it, or None
        (a linear head)."""
        self.w, self.b, self.threshold = w, b, threshold
        self.hidden = hidden
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
        x = SCALE * np.atleast_2d(emb).astype(np.float64)
        if self.hidden is not None:
            x = gelu(x @ self.hidden[0] + self.hidden[1])
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

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> HarmClassifier:
        """The head and the thresholds of a verified artifact manifest."""
        with np.load(manifest.path("head")) as z:
            if "w1" in z:  # one hidden GELU layer
                w, b, hidden = z["w2"], z["b2"], (z["w1"], z["b1"])
            else:
                w, b, hidden = z["w"], z["b"], None
        chosen = manifest.thresholds["classifier"]
        by_budget = {float(k): float(v) for k, v in chosen["by_budget"].items()}
        return cls(w, b, by_budget[float(chosen["default_budget"])], by_budget, hidden)
