"""The governance encoder served by ONNX Runtime, int8.

Why: on this 2-core machine the encoder is ~85 % of a request's scoring time, and torch
spends a quarter of the encoder's time outside the int8 matmuls (its fused CPU attention
alone ~0.2 ms a call for a few dozen tokens). Under ONNX Runtime the same int8 encoder
scores a request in ~0.8x torch's time (bench/governance_cost.py --compare torch,
request by request in turn), so it is the default runtime; torch stays the fallback
(`serve_app/governance/embedding.py`).

How: the graph is written op by op from the fp32 encoder's weights (the fine-tuned layers
already loaded, cut to its depth): the embeddings, then per layer one MatMul for query, key
and value together, the attention, the output and feed-forward MatMuls, GELU and
LayerNorms, in the order transformers' eager BertLayer computes them, for one unpadded
text (no attention mask, no shape arithmetic). Its MatMuls are quantized by ONNX Runtime
(dynamic int8, per-channel weights: what torch's dynamic quantization does), and the
result is cached, keyed by everything it is made from. The graph takes token ids of one
text and returns the last hidden state. It computes, bit for bit, what torch's
TorchScript exporter's graph of the same encoder computes after the same quantization
(tests/governance/test_onnx_encoder.py), in ~0.93x its time here: that exporter's graph
carried an all-ones attention mask and per-call shape arithmetic (154 nodes after ONNX
Runtime's own optimizations for three layers and the embeddings), and the exporter is
deprecated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

log = logging.getLogger("promethios.governance.onnx")
FORMAT = 2  # bump when the exported graph changes shape or meaning (2: built op by op)
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
    """`model` (an fp32 BertModel) as int8 ONNX graphs, serialized: one (split None) or
    two, split after `split` layers (see OnnxEncoder). `model` is only read."""
    config = model.config
    written_for = {"hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in written_for.items():  # what _Graph writes; anything else: torch serves
        if getattr(config, key, value) != value:
            raise ValueError(f"the ONNX graph is written for {key}={value!r}")
    depth = len(model.encoder.layer)
    if split is not None and not 1 <= split < depth:
        raise ValueError(f"cannot split a {depth}-layer encoder after layer {split}")
    layers = list(model.encoder.layer)
    graphs = [_lower_graph(model, layers[: split or depth])]
    if split is not None:
        graphs.append(_upper_graph(model, layers[split:]))
    return [_quantize(graph) for graph in graphs]


class _Graph:
    """An ONNX graph written op by op: fp32 weights taken from the torch modules."""

    def __init__(self, config) -> None:  # noqa: ANN001 - a BertConfig
        heads, hidden = config.num_attention_heads, config.hidden_size
        self.nodes: list = []
        self.weights: list = []
        self.const("heads_shape", np.array([-1, 3, heads, hidden // heads], dtype=np.int64))
        self.const("merged_shape", np.array([1, -1, hidden], dtype=np.int64))
        self.const("three_ones", np.ones(3, dtype=np.int64))  # q, k, v: one each along axis 0
        self.const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
        self.const("one", np.array(1.0, dtype=np.float32))
        self.const("half", np.array(0.5, dtype=np.float32))

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def param(self, name: str, tensor) -> str:  # noqa: ANN001 - a torch tensor
        return self.const(name, tensor.detach().float().numpy())

    def op(self, op_type: str, inputs: list[str], name: str, outputs: int = 1, **attrs) -> str:  # noqa: ANN003
        """Add a node named `name`; its output is `name` (or name:0, name:1, ...)."""
        from onnx import helper

        outs = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return name

    def linear(self, x: str, weight, bias, name: str) -> str:  # noqa: ANN001
        """x @ weight.T + bias (torch's nn.Linear), as MatMul then Add: the quantizer makes
        the MatMul int8 and ONNX Runtime folds the bias into it."""
        w = self.param(f"{name}.weight", weight.T)
        mm = self.op("MatMul", [x, w], f"{name}/MatMul")
        return self.op("Add", [mm, self.param(f"{name}.bias", bias)], f"{name}/Add")

    def layer_norm(self, x: str, norm, name: str) -> str:  # noqa: ANN001 - an nn.LayerNorm
        scale = self.param(f"{name}.weight", norm.weight)
        bias = self.param(f"{name}.bias", norm.bias)
        return self.op("LayerNormalization", [x, scale, bias], name, axis=-1, epsilon=norm.eps)

    def bert_layer(self, x: str, layer, p: str) -> str:  # noqa: ANN001 - a BertLayer
        """One encoder layer on one unpadded text (no attention mask), in the order
        transformers' eager BertLayer computes it (so the numbers are the same)."""
        import torch

        attn = layer.attention.self
        weight = torch.cat([attn.query.weight, attn.key.weight, attn.value.weight])
        bias = torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])
        qkv = self.linear(x, weight, bias, f"{p}/attention/qkv")  # one int8 MatMul, not three
        heads = self.op("Reshape", [qkv, "heads_shape"], f"{p}/attention/split_heads")
        heads = self.op("Transpose", [heads], f"{p}/attention/heads_first", perm=[1, 2, 0, 3])
        q_k_v = self.op("Split", [heads, "three_ones"], f"{p}/attention/qkv", outputs=3, axis=0)
        q, k, v = (f"{q_k_v}:{i}" for i in range(3))
        k_t = self.op("Transpose", [k], f"{p}/attention/key_t", perm=[0, 1, 3, 2])
        scores = self.op("MatMul", [q, k_t], f"{p}/attention/scores")
        scaling = self.const(f"{p}/attention/scaling", np.array(attn.scaling, dtype=np.float32))
        scores = self.op("Mul", [scores, scaling], f"{p}/attention/scaled")
        probs = self.op("Softmax", [scores], f"{p}/attention/softmax", axis=-1)
        ctx = self.op("MatMul", [probs, v], f"{p}/attention/context")
        ctx = self.op("Transpose", [ctx], f"{p}/attention/tokens_first", perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, "merged_shape"], f"{p}/attention/merge_heads")
        out = layer.attention.output
        attended = self.linear(ctx, out.dense.weight, out.dense.bias, f"{p}/attention/out")
        x = self.op("Add", [attended, x], f"{p}/attention/residual")
        x = self.layer_norm(x, out.LayerNorm, f"{p}/attention/LayerNorm")
        inter = layer.intermediate.dense
        h = self.linear(x, inter.weight, inter.bias, f"{p}/intermediate")
        # GELU, erf form, as torch exports it: x * (1 + erf(x / sqrt 2)) * 0.5
        erf = self.op("Erf", [self.op("Div", [h, "sqrt2"], f"{p}/gelu/div")], f"{p}/gelu/erf")
        h = self.op("Mul", [h, self.op("Add", [erf, "one"], f"{p}/gelu/add")], f"{p}/gelu/mul")
        h = self.op("Mul", [h, "half"], f"{p}/gelu/half")
        out = layer.output
        h = self.linear(h, out.dense.weight, out.dense.bias, f"{p}/output")
        x = self.op("Add", [h, x], f"{p}/output/residual")
        return self.layer_norm(x, out.LayerNorm, f"{p}/output/LayerNorm")

    def bert_layers(self, x: str, layers: list) -> str:
        """`layers` in turn, numbered from 0 in this graph."""
        for i, layer in enumerate(layers):
            x = self.bert_layer(x, layer, f"layer.{i}")
        return x

    def model(self, input_name: str, input_type: int, output: str) -> bytes:
        """The graph: input `input_name` (1, tokens[, hidden]) -> `hidden` (1, tokens, hidden)."""
        import onnx
        from onnx import TensorProto, helper

        self.op("Identity", [output], "hidden")
        shape = [1, "tokens"] if input_type == TensorProto.INT64 else [1, "tokens", None]
        graph = helper.make_graph(
            self.nodes, "encoder",
            [helper.make_tensor_value_info(input_name, input_type, shape)],
            [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "tokens", None])],
            self.weights,
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8  # what ONNX Runtime's quantizer and older runtimes read
        onnx.checker.check_model(model)
        return model.SerializeToString()


def _lower_graph(bert, layers: list) -> bytes:  # noqa: ANN001
    """Token ids (1, n) of one text -> the hidden state after `layers`: the embeddings
    (word + token type 0 + position, as transformers adds them, then LayerNorm) and the
    layers."""
    from onnx import TensorProto

    g = _Graph(bert.config)
    emb = bert.embeddings
    table = g.param("embeddings.word", emb.word_embeddings.weight)
    words = g.op("Gather", [table, "input_ids"], "embeddings/word")
    table = g.param("embeddings.token_type", emb.token_type_embeddings.weight)
    type_0 = g.const("token_type_ids", np.zeros((1, 1), dtype=np.int64))  # broadcast
    x = g.op("Add", [words, g.op("Gather", [table, type_0], "embeddings/token_type")],
             "embeddings/add_token_type")  # fmt: skip
    # Positions 0..n-1: the first n of a constant row (one Shape, one Slice).
    n = g.op("Shape", ["input_ids"], "embeddings/tokens", start=1, end=2)
    row = g.const(
        "position_ids", np.arange(emb.position_embeddings.weight.shape[0], dtype=np.int64)[None]
    )
    start, axis = g.const("zero", np.zeros(1, np.int64)), g.const("axis_1", np.ones(1, np.int64))
    ids = g.op("Slice", [row, start, n, axis], "embeddings/position_ids")
    table = g.param("embeddings.position", emb.position_embeddings.weight)
    x = g.op("Add", [x, g.op("Gather", [table, ids], "embeddings/position")],
             "embeddings/add_position")  # fmt: skip
    x = g.layer_norm(x, emb.LayerNorm, "embeddings/LayerNorm")
    return g.model("input_ids", TensorProto.INT64, g.bert_layers(x, layers))


def _upper_graph(bert, layers: list) -> bytes:  # noqa: ANN001
    """The hidden state at the split (1, n, hidden) -> the last one, through `layers`
    (numbered from 0 in this graph)."""
    from onnx import TensorProto

    g = _Graph(bert.config)
    return g.model("hidden_in", TensorProto.FLOAT, g.bert_layers("hidden_in", layers))


def _quantize(fp32_model: bytes) -> bytes:
    """Dynamic int8 quantization of the graph's MatMuls (and embedding tables), per-channel
    weights: what torch's dynamic quantization does."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(fp32_model)
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
