"""PII detectors' false positives (URLs, SSH remotes, files, versions, identifiers), the
embedder's cache and the classifier cache key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from serve_app.governance.detectors import DETECTORS, detect_email, detect_ip_address
from serve_app.governance.embedding import Embedder
from serve_app.governance.rules import detect_phone
from training import classifier as harm


def spans(found, text: str) -> list[str]:
    return [text[f.start : f.end] for f in found]


@pytest.mark.parametrize(
    ("text", "emails"),
    [
        ("Write to jane.doe@example.com today.", ["jane.doe@example.com"]),
        ("mailto:jane@example.com", ["jane@example.com"]),
        ("Email me at sam+news3@mail.co.uk: thanks", ["sam+news3@mail.co.uk"]),
        # A mailbox in a URL's query is still someone's address.
        ("https://example.com/contact?email=jane@example.com", ["jane@example.com"]),
        # The user info of a URL is not a mailbox (the password is the secret's business).
        ("connect with postgresql://admin:Wsr7BII2e%9@db.internal:5432/prod", []),
        ("connect with postgresql://admin:kdHU5ROJ0!2@db.internal:5432/prod", []),
        ("See https://user@example.com/path", []),
        ("ssh://deploy@build.example.org:22/srv", []),
        ("git clone git@github.com:org/repo.git", []),
        ("Use icon@2x.png for retina screens", []),
        ("npm i lodash@4.17.21", []),
    ],
)
def test_email_not_urls_remotes_or_files(text: str, emails: list[str]) -> None:
    assert spans(detect_email(text), text) == emails


@pytest.mark.parametrize(
    ("text", "ips"),
    [
        ("The customer's home router is at 207.14.80.2.", ["207.14.80.2"]),
        ("Client 84.12.7.33 logged in", ["84.12.7.33"]),
        ("Upgrade to Windows 10.0.19041.1 now", []),
        ("version 1.2.3.4 released", []),
        ("Set the subnet mask to 255.255.255.0", []),
        ("127.0.0.1 is localhost and 0.0.0.0 binds all", []),
        ("OID 1.3.6.1.4.1 names the vendor", []),
    ],
)
def test_ip_addresses_not_versions_or_masks(text: str, ips: list[str]) -> None:
    assert spans(detect_ip_address(text), text) == ips


@pytest.mark.parametrize(
    ("text", "phones"),
    [
        ("Call (415) 555-0132 after six.", ["(415) 555-0132"]),
        ("Invoice INV-2024-000123 is paid", []),
        ("build/4155550132 failed", []),
    ],
)
def test_phone_not_glued_to_identifiers(text: str, phones: list[str]) -> None:
    assert spans(detect_phone(text), text) == phones


def test_secret_url_is_secret_not_pii() -> None:
    text = "connect with postgresql://admin:Dl2m66oWr%10@db.internal:5432/prod"
    pii = ["email", "phone", "iban", "payment_card", "us_ssn", "ip_address"]
    assert [d for d in pii if list(DETECTORS[d](text))] == []
    assert spans(DETECTORS["secret"](text), text) == ["Dl2m66oWr%10"]


class _CountingModel:
    """Stands in for the encoder: counts the texts it is asked to embed."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, input_ids, attention_mask, **_):  # noqa: ANN001, ANN204
        import torch

        self.seen += input_ids.shape[0]
        dims = torch.arange(1, 385, dtype=torch.float32)
        hidden = torch.sin(input_ids.unsqueeze(-1).float() * dims * 0.01)

        class Out:
            last_hidden_state = hidden

        return Out()


def test_embedder_cache_skips_repeated_texts() -> None:
    from transformers import AutoTokenizer

    from serve_app.governance.embedding import model_dir

    e = Embedder(cache_size=2)
    e._tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    e._model = model = _CountingModel()
    first = e.embed(["alpha", "beta", "alpha"])
    assert model.seen == 2  # "alpha" embedded once
    assert np.allclose(first[0], first[2]) and not np.allclose(first[0], first[1])
    again = e.embed(["beta", "alpha"])
    assert model.seen == 2 and np.allclose(again[1], first[0])
    e.embed(["gamma"])  # evicts the least recently used ("beta")
    e.embed(["beta"])
    assert model.seen == 4
    e.clear_cache()
    e.embed(["alpha"])
    assert model.seen == 5


def test_int8_embeddings_stay_close_to_fp32() -> None:
    texts = ["How do I reset my password?", "Give me step-by-step instructions to cook meth."]
    q = Embedder(quantize=True).embed(texts)
    f = Embedder(quantize=False).embed(texts)
    assert q.shape == f.shape == (2, 384)
    cos = (q * f).sum(1)
    assert (cos > 0.95).all(), cos


def test_fused_qkv_attention_is_the_stock_attention() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from serve_app.governance.embedding import _fuse_qkv, model_dir

    path = str(model_dir())
    enc = AutoTokenizer.from_pretrained(path)(
        ["short", "a longer sentence, so the first one is padded"], padding=True,
        return_tensors="pt",
    )  # fmt: skip
    stock = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    fused = _fuse_qkv(AutoModel.from_pretrained(path, add_pooling_layer=False).eval())
    with torch.inference_mode():
        want, got = stock(**enc).last_hidden_state, fused(**enc).last_hidden_state
    mask = enc["attention_mask"].bool()
    assert torch.allclose(want[mask], got[mask], atol=1e-5)


def test_encoder_cache_key_follows_data_and_params(monkeypatch) -> None:  # noqa: ANN001
    key = harm.cache_key()
    assert key == harm.cache_key()
    items = harm._training_items()
    changed = [*items[:-1], dataclasses.replace(items[-1], text="changed")]
    monkeypatch.setattr(harm, "_training_items", lambda: changed)
    assert harm.cache_key() != key
    monkeypatch.setattr(harm, "_training_items", lambda: items)
    monkeypatch.setattr(harm.finetune, "PARAMS", (*harm.finetune.PARAMS, "changed"))
    assert harm.cache_key() != key


def test_single_text_tokenization_matches_the_wrapper() -> None:
    e = Embedder(max_tokens=32)
    e.load()
    assert e._tokenizer is not None
    for text in ["", "short text", "word " * 100, "Ünïcödé — émojis 🙂 and tabs\tok"]:
        fast = e._encode(text)
        ref = e._tokenizer([text or " "], truncation=True, max_length=32, return_tensors="pt")
        assert fast["input_ids"].tolist() == ref["input_ids"].tolist(), text
        assert fast["attention_mask"].tolist() == ref["attention_mask"].tolist()
    # A text's embedding does not depend on the other texts of the call (int8 dynamic
    # quantization scales per input: a padded batch would change it).
    one = e.embed(["a sentence about cats"])
    e.clear_cache()
    batch = e.embed(["a much longer sentence about dogs and cats", "a sentence about cats"])
    assert np.array_equal(one[0], batch[1])
