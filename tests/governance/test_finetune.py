"""Fine-tuning itself on a handful of texts: deterministic, run on its own thread count,
and the caller's thread count given back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import finetune


def test_fine_tune_is_deterministic_and_restores_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finetune, "EPOCHS", 1)
    texts = [f"how do I {verb} my {thing}" for verb in ("fix", "paint", "sell")
             for thing in ("bike", "fence", "laptop", "boat")]  # fmt: skip
    labels = [i % 3 for i in range(len(texts))]
    set_threads, calls = torch.set_num_threads, []

    def record(n: int) -> None:
        calls.append(n)
        set_threads(n)

    before = torch.get_num_threads()
    set_threads(1)
    monkeypatch.setattr(torch, "set_num_threads", record)
    try:
        a = finetune.fine_tune(texts, labels, n_classes=3, benign=0)
        assert torch.get_num_threads() == 1  # the caller's count, given back
        b = finetune.fine_tune(texts, labels, n_classes=3, benign=0)
    finally:
        set_threads(before)
    assert calls == [finetune.THREADS, 1, finetune.THREADS, 1]
    assert a.w.shape == (384, 3) and a.b.shape == (3,)
    assert a.layers == finetune.ENCODER_LAYERS
    tuned = {int(name.split(".")[2]) for name in a.encoder}
    assert tuned == set(range(a.layers - finetune.TUNED_LAYERS, a.layers))
    np.testing.assert_array_equal(a.w, b.w)  # same data, same weights
    for name, tensor in a.encoder.items():
        assert torch.equal(tensor, b.encoder[name]), name
