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


def cache_name(tag: str, split: int | None = None, stage: int = 0, stages: int = 1) -> str:
    """The cached graph's file name for encoder weights named `tag` (the fine-tuned weights'
    key and the depth), split after `split` layers (None: one graph), stage `stage` of
    `stages`: it also changes with the torch, ONNX and ONNX Runtime versions."""
    import onnx
    import onnxruntime
    import torch

    h = hashlib.sha256(
        f"{FORMAT}|{OPSET}|{tag}|{torch.__version__}|{onnx.__version__}|"
        f"{onnxruntime.__version__}".encode()
    )
    if split is None:
        return f"encoder-int8-{h.hexdigest()[:16]}.onnx"
    return f"encoder-int8-{h.hexdigest()[:16]}-split{split}-{stage + 1}of{stages}.onnx"


class OnnxEncoder:
    """One text's token ids (1, n) -> its last hidden state (1, n, hidden), int8 on the CPU.

    Split (`split` layers): two graphs, the embeddings and the bottom `split` layers
    (`lower`: ids -> that layer's hidden state) and the layers above (`upper`: that hidden
    state -> the last one), so a caller can stop half-way (the early exit, serve_app/
    governance/early_exit.py). Each MatMul quantizes its own input either way, so the two
    graphs chained compute what the one graph does."""

    def __init__(self, stages: list[bytes], threads: int = 1, split: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.split = split
        self._sessions = [
            ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in stages
        ]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        hidden = self.lower(ids)
        return self.upper(hidden) if len(self._sessions) > 1 else hidden

    def lower(self, ids: np.ndarray) -> np.ndarray:
        """The first graph's output: the hidden state after `split` layers (all if unsplit)."""
        return self._sessions[0].run(None, {"input_ids": ids.astype(np.int64, copy=False)})[0]

    def upper(self, hidden: np.ndarray) -> np.ndarray:
        """The layers above the split, from the hidden state `lower` returned."""
        return self._sessions[1].run(None, {"hidden_in": hidden})[0]

    @classmethod
    def build(
        cls, model, tag: str, cache_dir: Path | None, threads: int = 1,  # noqa: ANN001
        split: int | None = None,
    ) -> OnnxEncoder:  # fmt: skip
        """The int8 ONNX encoder of `model` (an fp32 BertModel), split after `split` layers
        (None: one graph), from `cache_dir` when it holds one for `tag`, else exported,
        quantized and cached there (a few seconds)."""
        n = 1 if split is None else 2
        paths = (
            [Path(cache_dir) / cache_name(tag, split, i, n) for i in range(n)]
            if cache_dir is not None
            else None
        )
        if paths is not None and all(p.exists() for p in paths):
            try:
                return cls([p.read_bytes() for p in paths], threads, split)
            except Exception as exc:  # noqa: BLE001 - a damaged file: build it again
                log.warning("cached ONNX encoder %s unusable (%s); exporting again", paths[0], exc)
        stages = export_int8(model, split)
        encoder = cls(stages, threads, split)
        for path, data in zip(paths or [], stages, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return encoder


def export_int8(model, split: int | None = None) -> list[bytes]:  # noqa: ANN001
    """`model` (fp32, eager attention) as int8 ONNX graphs, serialized: one (split None)
    or two, split after `split` layers (see OnnxEncoder). `model` is left as it was: the
    export runs on a copy (exporting changed the exported model's later outputs: cosine
    0.89 to the fresh model's on a probe)."""
    import copy

    import torch

    class HiddenState(torch.nn.Module):
        """A BertModel's bottom layers on one unpadded text, returning their hidden state."""

        def __init__(self, bert, layers: int) -> None:  # noqa: ANN001
            super().__init__()
            self.bert = bert
            self.bert.encoder.layer = bert.encoder.layer[:layers]
            self.bert.config.num_hidden_layers = layers

        def forward(self, input_ids):  # noqa: ANN001, ANN202
            mask = torch.ones_like(input_ids)
            return self.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state

    class Upper(torch.nn.Module):
        """A BertModel's layers above the split, from the hidden state at the split."""

        def __init__(self, layers) -> None:  # noqa: ANN001
            super().__init__()
            self.layers = layers

        def forward(self, hidden):  # noqa: ANN001, ANN202
            for layer in self.layers:  # one unpadded text: no attention mask
                out = layer(hidden)
                hidden = out[0] if isinstance(out, tuple) else out
            return hidden

    bert = copy.deepcopy(model).eval()
    depth = len(bert.encoder.layer)
    if split is not None and not 1 <= split < depth:
        raise ValueError(f"cannot split a {depth}-layer encoder after layer {split}")
    probe = torch.tensor([[101, 7592, 2088, 102]])  # [CLS] hello world [SEP]
    upper_layers = bert.encoder.layer[split:] if split is not None else None
    graphs = [(HiddenState(bert, split or depth), probe, "input_ids")]
    if upper_layers is not None:
        graphs.append(
            (Upper(upper_layers), torch.zeros(1, 4, bert.config.hidden_size), "hidden_in")
        )
    return [_export_one(module, example, name) for module, example, name in graphs]


def _export_one(module, example, input_name: str) -> bytes:  # noqa: ANN001
    """One graph (input `input_name`, output `hidden`, tokens dynamic), int8, serialized."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with warnings.catch_warnings(), torch.inference_mode(), _quiet_root_logger():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(fp32),
                input_names=[input_name],
                output_names=["hidden"],
                dynamic_axes={input_name: {1: "tokens"}, "hidden": {1: "tokens"}},
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
