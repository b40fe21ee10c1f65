"""The governance encoder under ONNX Runtime: the same embeddings as the fp32 encoder
(within int8 error), built once and cached, and torch where ONNX Runtime cannot serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.governance import onnx_encoder
from serve_app.governance.embedding import Embedder

TEXTS = [
    "How do I kill a hung Python process?",
    "Give me step-by-step instructions to cook meth.",
    "word " * 400,  # cut at max_tokens
    "",
]


@pytest.fixture(scope="module")
def fp32() -> np.ndarray:
    return Embedder(quantize=False).embed(TEXTS)


def test_onnx_int8_embeddings_match_fp32(tmp_path: Path, fp32: np.ndarray) -> None:
    e = Embedder(cache_dir=tmp_path)
    got = e.embed(TEXTS)
    assert "ort-int8" in e.variant
    assert got.shape == fp32.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * fp32).sum(1)
    assert (cos > 0.97).all(), cos
    # torch's int8 encoder is no closer to fp32 than ONNX Runtime's.
    torch_int8 = Embedder(runtime="torch").embed(TEXTS)
    assert cos.mean() >= (torch_int8 * fp32).sum(1).mean() - 0.01, cos


def test_built_encoder_is_cached_and_reused(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    first = Embedder(cache_dir=tmp_path)
    want = first.embed(TEXTS[:1])
    (cached,) = tmp_path.glob("encoder-int8-*.onnx")

    def no_export(*_a):  # noqa: ANN002, ANN202
        raise AssertionError("exported again despite the cache")

    monkeypatch.setattr(onnx_encoder, "export_int8", no_export)
    again = Embedder(cache_dir=tmp_path)
    assert np.array_equal(again.embed(TEXTS[:1]), want)
    assert "ort-int8" in again.variant
    # Other weights are another file: a tuned encoder never loads the shipped one's graph.
    assert onnx_encoder.cache_name("shipped|layers:None") == cached.name
    assert onnx_encoder.cache_name("tuned-key|layers:6") != cached.name


def test_damaged_cache_is_rebuilt(tmp_path: Path, fp32: np.ndarray) -> None:
    path = tmp_path / onnx_encoder.cache_name("shipped|layers:None")
    path.write_bytes(b"not an onnx model")
    got = Embedder(cache_dir=tmp_path).embed(TEXTS[:2])
    assert ((got * fp32[:2]).sum(1) > 0.97).all()
    assert path.stat().st_size > 1_000_000  # the rebuilt graph replaced the damaged file


def test_torch_serves_when_the_export_fails(tmp_path: Path, monkeypatch, caplog) -> None:  # noqa: ANN001
    def broken(*_a):  # noqa: ANN002, ANN202
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(onnx_encoder, "export_int8", broken)
    e = Embedder(cache_dir=tmp_path)
    got = e.embed(TEXTS[:1])
    assert "|int8-pc|" in e.variant  # the threshold is chosen again for this variant
    assert got.shape == (1, 384)
    assert "exporter broke" in caplog.text
    assert not list(tmp_path.glob("*.onnx"))


def test_split_encoder_computes_what_the_one_graph_does(tmp_path: Path) -> None:
    one, two = Embedder(cache_dir=tmp_path), Embedder(cache_dir=tmp_path, split=2)
    assert two.staged and not one.staged
    assert len(list(tmp_path.glob("encoder-int8-*-split2-*of2.onnx"))) == 2
    # Stopping at the split: no full embedding, and a unit one at the split.
    stopped = two.embed_staged(TEXTS, lambda _e: False)
    assert all(full is None for _, full in stopped)
    early = np.stack([e for e, _ in stopped])
    assert np.allclose(np.linalg.norm(early, axis=1), 1.0, atol=1e-5)
    # The two graphs chained give the one graph's numbers exactly (the texts stopped at the
    # split above are finished from scratch, not read as done from the cache).
    want = one.embed(TEXTS)
    assert np.array_equal(two.embed(TEXTS), want)
    two.clear_cache()
    went_on = two.embed_staged(TEXTS, lambda _e: True)
    assert np.array_equal(np.stack([f for _, f in went_on]), want)
    assert np.array_equal(np.stack([e for e, _ in went_on]), early)
    assert ((early * want).sum(1) < 0.999).any()  # the split layer's reading differs
    # Unsplit, embed_staged gives the full embeddings and never asks.
    unsplit = one.embed_staged(TEXTS[:2], lambda _e: pytest.fail("asked although unsplit"))
    assert all(e is None for e, _ in unsplit)
    assert np.array_equal(np.stack([f for _, f in unsplit]), want[:2])


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        Embedder(runtime="tensorrt")


def test_torch_serves_without_onnxruntime(tmp_path: Path, monkeypatch, caplog) -> None:  # noqa: ANN001
    monkeypatch.setattr(onnx_encoder, "available", lambda: False)
    e = Embedder(cache_dir=tmp_path)
    assert e.embed(TEXTS[:1]).shape == (1, 384)
    assert "|int8-pc|" in e.variant and "onnxruntime is not installed" in caplog.text
