"""The meaning-based half of governance: MiniLM embeddings + the hazard classifier, with the
lexical screen (serve_app/governance/lexical_screen.py) in front of the encoder and the early
exit (serve_app/governance/early_exit.py) in front of its upper layers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serve_app.governance import artifacts, early_exit, harm, lexical_screen
from serve_app.governance.artifacts import Manifest
from serve_app.governance.embedding import Embedder
from serve_app.governance.harm import Classification, HarmClassifier
from serve_app.governance.hazards import BENIGN, CLASSES
from serve_app.governance.text_windows import WINDOW_CHARS, windows

# One text's screening: its class probabilities and the stage that gave them ("lexical": the
# lexical screen, before the encoder — only the benign probability is its own; "early": the
# exit head after early_exit.EXIT_LAYER layers; "full": the classifier on the full encoder).
Screening = tuple[np.ndarray, str]

log = logging.getLogger("promethios.governance.semantic")


class SemanticModel:
    """Embeds texts and classifies them; `classify` is the synchronous one-shot path.

    `lexical` None: no lexical screen (every text goes to the encoder); `exit_head` None: no
    early exit (every text the encoder reads runs all its layers). Texts are screened in
    windows of at most `window_chars` characters (serve_app/governance/text_windows.py)."""

    def __init__(
        self,
        embedder: Embedder,
        classifier: HarmClassifier,
        exit_head: early_exit.ExitHead | None = None,
        lexical: lexical_screen.LexicalScreen | None = None,
    ) -> None:
        self.embedder = embedder
        self.classifier = classifier
        self.exit_head = exit_head
        self.lexical = lexical
        self.window_chars: int | None = WINDOW_CHARS  # None: every text read whole
        self.manifest: Manifest | None = None  # the artifacts it was loaded from

    @classmethod
    def load(
        cls, var_dir: Path, threads: int = 1, quantize: bool = True, runtime: str = "onnx",
        artifact_dir: Path | None = None, shortcuts: bool | None = None,
    ) -> SemanticModel:  # fmt: skip
        """The model of the governance artifacts in `artifact_dir` (None: the configured
        ones, serve_app/governance/artifacts.py), checked against their manifest: raises
        ArtifactError when they are missing, altered or built for other serving settings.
        The encoder's ONNX export is cached under `var_dir`/governance. `shortcuts`: the
        lexical screen and the early exit in front of the classifier (None: the
        `governance_shortcuts` setting, off by default)."""
        if shortcuts is None:
            from serve_app.settings import get_settings

            shortcuts = get_settings().governance_shortcuts
        manifest = artifacts.load_manifest(artifact_dir, serving_settings())
        embedder = Embedder(
            threads=threads, quantize=quantize, runtime=runtime,
            cache_dir=Path(var_dir) / "governance", split=early_exit.EXIT_LAYER,
        )  # fmt: skip
        embedder.use_weights(
            load_encoder_weights(manifest),
            manifest.build_id,
            int(manifest.data["encoder"]["layers"]),
        )
        model = cls(
            embedder, HarmClassifier.from_manifest(manifest),
            early_exit.from_manifest(manifest) if shortcuts and embedder.staged else None,
            lexical_screen.from_manifest(manifest) if shortcuts else None,
        )  # fmt: skip
        if shortcuts and model.exit_head is None:
            log.warning("the governance encoder is not split; every text runs all its layers")
        model.manifest = manifest
        return model

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def screen(self, texts: list[str]) -> list[Screening]:
        """Each text's class probabilities, read in windows (text_windows.py; a text of at
        most `window_chars` characters is one): its most harmful window's — of the windows
        the full classifier read, the one of the highest harmful mass, else (every window
        decided benign before it) the highest of the others'."""
        if self.window_chars is None:
            return self._screen_windows(texts)
        groups = [windows(text, self.window_chars) for text in texts]
        screened = iter(self._screen_windows([w for group in groups for w in group]))
        benign = CLASSES.index(BENIGN)
        return [
            max((next(screened) for _ in group), key=lambda s: (s[1] == "full", 1.0 - s[0][benign]))
            for group in groups
        ]

    def _screen_windows(self, texts: list[str]) -> list[Screening]:
        """Each text's class probabilities, read whole: the lexical screen's where its words
        read as plainly benign (the encoder does not run), else the exit head's where it
        exits after the bottom layers, else the classifier's on the full encoder."""
        out: list[Screening | None] = [None] * len(texts)
        if self.lexical is not None:
            for i, text in enumerate(texts):
                harmful = self.lexical.harmful_probability(text)
                if self.lexical.passes(harmful):
                    probs = np.zeros(len(CLASSES))
                    probs[CLASSES.index(BENIGN)] = 1.0 - harmful
                    out[i] = (probs, "lexical")
        rest = [i for i, s in enumerate(out) if s is None]
        for i, screened in zip(rest, self._encoded([texts[i] for i in rest]), strict=True):
            out[i] = screened
        return out  # type: ignore[return-value]

    def _encoded(self, texts: list[str]) -> list[Screening]:
        """`screen` for texts the encoder reads: the early exit, then the full classifier."""
        if not texts:
            return []
        head = self.exit_head
        if head is None:
            return [(p, "full") for p in self.classifier.probabilities(self.embed(texts))]
        early_probs: list[np.ndarray] = []

        def go_on(early: np.ndarray) -> bool:  # asked once per text, in order
            early_probs.append(head.probabilities(early)[0])
            return not head.exits(early_probs[-1])

        staged = self.embedder.embed_staged(texts, go_on)
        return [
            (p, "early") if full is None else (self.classifier.probabilities(full)[0], "full")
            for p, (_, full) in zip(early_probs, staged, strict=True)
        ]

    def classify(self, texts: list[str], budget: float | None = None) -> list[Classification]:
        """`budget`: the dev benign false-positive budget whose threshold decides (None:
        the default); see HarmClassifier.decide."""
        return [self.classifier.decide(p, stage, budget) for p, stage in self.screen(texts)]


def serving_settings() -> dict:
    """What the serving code assumes of the artifacts (a manifest must say the same)."""
    return {
        "classes": list(CLASSES),
        "scale": harm.SCALE,
        "exit_layer": early_exit.EXIT_LAYER,
        "lexical_features": [lexical_screen.FORMAT, lexical_screen.BUCKETS, lexical_screen.PATTERN],
    }


def load_encoder_weights(manifest: Manifest) -> dict:
    """The tuned encoder layers (state-dict entries, fp16 as stored) of a verified manifest."""
    import torch

    return torch.load(manifest.path("encoder"), weights_only=True)["encoder"]


_default: SemanticModel | None = None


def default_semantic() -> SemanticModel:
    """The process-wide model over the configured var/ directory (loaded once)."""
    global _default
    if _default is None:
        from serve_app.settings import get_settings

        _default = SemanticModel.load(get_settings().var_dir)
    return _default


if __name__ == "__main__":  # `make model`: check the artifacts and export the encoder once
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model = default_semantic()
    print(f"governance classifier ready: {model.embedder.variant}")
