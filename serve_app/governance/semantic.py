"""The meaning-based half of governance: MiniLM embeddings + the hazard classifier."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serve_app.governance.embedding import Embedder
from serve_app.governance.harm import Classification, HarmClassifier

log = logging.getLogger("promethios.governance.semantic")


class SemanticModel:
    """Embeds texts and classifies them; `classify` is the synchronous one-shot path."""

    def __init__(self, embedder: Embedder, classifier: HarmClassifier) -> None:
        self.embedder = embedder
        self.classifier = classifier

    @classmethod
    def load(
        cls, var_dir: Path, threads: int = 1, quantize: bool = True, runtime: str = "onnx"
    ) -> SemanticModel:
        """Load the embedding model and the cached classifier (trained here on first use)."""
        cache = Path(var_dir) / "governance"
        embedder = Embedder(threads=threads, quantize=quantize, runtime=runtime, cache_dir=cache)
        classifier = HarmClassifier.load_or_train(cache, embedder)
        return cls(embedder, classifier)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def classify(self, texts: list[str], budget: float | None = None) -> list[Classification]:
        """`budget`: the dev benign false-positive budget whose threshold decides (None:
        the default); see HarmClassifier.classify."""
        return self.classifier.classify(self.embedder.embed(texts), budget)


_default: SemanticModel | None = None


def default_semantic() -> SemanticModel:
    """The process-wide model over the configured var/ directory (loaded once)."""
    global _default
    if _default is None:
        from serve_app.settings import get_settings

        _default = SemanticModel.load(get_settings().var_dir)
    return _default


if __name__ == "__main__":  # `make model`: fine-tune (or reuse) the classifier before serving
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    model = default_semantic()
    print(f"governance classifier ready: {model.embedder.variant}")
