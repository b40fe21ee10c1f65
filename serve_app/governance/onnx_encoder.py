"""The governance encoder served by ONNX Runtime, int8.

Why: on this 2-core machine the encoder is ~85 % of a request's scoring time, and torch
spends a quarter of the encoder's time outside the int8 matmuls (its fused CPU attention
alone ~0.2 ms a call for a few dozen tokens). Under ONNX Runtime the same int8 encoder
scores a request in ~0.8x torch's time (bench/governance_cost.py --compare torch,
request by request in turn), so it is the default runtime; torch stays the fallback
(`serve_app/governance/embedding.py`).

How: the fp32 encoder (the fine-tuned layers already loaded, cut to its depth) is exported
with torch's TorchScript-based ONNX exporter, its MatMuls are quantized by ONNX Runtime
(dynamic int8, per-channel weights: what torch's dynamic quantization does), and the
result is cached as one file keyed by everything it is made from. The graph takes token
ids of one text (no padding, so no attention mask) and returns the last hidden state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger("promethios.governance.onnx")
FORMAT = 1  # bump when the exported graph changes shape or meaning
OPSET = 17


def available() -> bool:
    """Whether ONNX Runtime and its quantization tools can be imported here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def cache_name(tag: str) -> str:
    """The cached model's file name for encoder weights named `tag` (the fine-tuned weights'
    key and the depth): it also changes with the torch, ONNX and ONNX Runtime versions."""
    import onnx
    import onnxruntime
    import torch

    h = hashlib.sha256(
        f"{FORMAT}|{OPSET}|{tag}|{torch.__version__}|{onnx.__version__}|"
        f"{onnxruntime.__version__}".encode()
    )
    return f"encoder-int8-{h.hexdigest()[:16]}.onnx"


class OnnxEncoder:
    """One text's token ids (1, n) -> its last hidden state (1, n, hidden), int8 on the CPU."""

    def __init__(self, model: bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self._session.run(None, {"input_ids": ids.astype(np.int64, copy=False)})[0]

    @classmethod
    def build(cls, model, tag: str, cache_dir: Path | None, threads: int = 1) -> OnnxEncoder:  # noqa: ANN001
        """The int8 ONNX encoder of `model` (an fp32 BertModel), from `cache_dir` when it
        holds one for `tag`, else exported, quantized and cached there (a few seconds)."""
        path = Path(cache_dir) / cache_name(tag) if cache_dir is not None else None
        if path is not None and path.exists():
            try:
                return cls(path.read_bytes(), threads)
            except Exception as exc:  # noqa: BLE001 - a damaged file: build it again
                log.warning("cached ONNX encoder %s unusable (%s); exporting again", path, exc)
        data = export_int8(model)
        encoder = cls(data, threads)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return encoder


def export_int8(model) -> bytes:  # noqa: ANN001
    """`model` (fp32, eager attention) as an int8 ONNX graph, serialized. `model` is left
    as it was: the export runs on a copy (exporting changed the exported model's later
    outputs: cosine 0.89 to the fresh model's on a probe)."""
    import copy

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class HiddenState(torch.nn.Module):
        """A BertModel on one unpadded text, returning its last hidden state."""

        def __init__(self, bert) -> None:  # noqa: ANN001
            super().__init__()
            self.bert = bert

        def forward(self, input_ids):  # noqa: ANN001, ANN202
            mask = torch.ones_like(input_ids)
            return self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state

    probe = torch.tensor([[101, 7592, 2088, 102]])  # [CLS] hello world [SEP]
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), torch.inference_mode(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                HiddenState(copy.deepcopy(model).eval()),
                (probe,),
                str(fp32),
                input_names=["input_ids"],
                output_names=["hidden"],
                dynamic_axes={"input_ids": {1: "tokens"}, "hidden": {1: "tokens"}},
                opset_version=OPSET,
                dynamo=False,
            )
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
        return int8.read_bytes()


@contextmanager
def _quiet_root_logger():  # noqa: ANN202
    """ONNX Runtime's quantizer advises pre-processing through the root logger, every time."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
