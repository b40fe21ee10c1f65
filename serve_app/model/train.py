"""Train the embedded default model, or fine-tune a real base model, on the governance corpus.

``train(out_dir)`` builds a tiny Llama-architecture model from scratch: a byte-level BPE
tokenizer (``tokenizer.py``) and a ``LlamaForCausalLM`` trained on every example rendered
through the chat template (a third of them behind a templated system message), loss on the
assistant turn (answer + EOS), under a wall-clock budget.
``train(out_dir, base_model_path=...)`` loads a local Hugging Face model and its
tokenizer and fine-tunes it on the same corpus (on GPU when CUDA is available): the
seed's "native governance training". Both save a directory vLLM and transformers load.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from serve_app.model.corpus import load_corpus, with_system_prompts
from serve_app.model.tokenizer import build_tokenizer

MAX_BUDGET_S = 300.0
IGNORE = -100


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape and optimisation of the from-scratch model, sized for ~150 s on 2 CPU cores.

    Small and fast beats big here: on 2 cores this shape runs ~5-10 steps/s, so a 75-150 s
    budget gives 700-1500 steps (2-5 epochs) and on-topic, fluent answers; hidden 192 or
    6 layers got fewer steps and answered worse in the same time.
    """

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 352
    # RoPE: positions cost no parameters; 4,096 fits the seed's own `max_tokens: 2048` example.
    max_position_embeddings: int = 4096
    vocab_size: int = 3072
    max_seq_len: int = 160
    batch_size: int = 16
    lr: float = 4e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01


@dataclass(frozen=True)
class FineTuneConfig:
    """Optimisation of a base-model fine-tune."""

    max_seq_len: int = 512
    batch_size: int = 8
    lr: float = 2e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0


@dataclass(frozen=True)
class _Run:
    """Per-run settings shared by both training paths."""

    budget_s: float
    seed: int
    max_steps: int | None
    progress: bool
    device: torch.device


@dataclass
class TrainResult:
    """What a training run did; ``build_info.json`` records it."""

    out_dir: Path
    steps: int
    examples_seen: int
    train_seconds: float
    final_loss: float
    param_count: int
    seed: int
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None


def encode_examples(
    tokenizer: Any, examples: list[dict[str, Any]], max_len: int
) -> list[tuple[list[int], list[int]]]:
    """Render each example with the chat template; labels cover the assistant turn only.

    The prompt (``add_generation_prompt=True`` on the user turns) must tokenize to a prefix
    of the full conversation; its positions get label ``-100``. Sequences are cut at ``max_len``.
    """
    prompts = [
        tokenizer.apply_chat_template(
            e["messages"][:-1], add_generation_prompt=True, tokenize=False
        )
        for e in examples
    ]
    fulls = [tokenizer.apply_chat_template(e["messages"], tokenize=False) for e in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, f in zip(prompt_ids, full_ids, strict=True):
        if f[: len(p)] != p:  # the template split mid-token: train on the whole sequence
            p = []
        if eos is not None and (not f or f[-1] != eos):
            f = [*f, eos]
        ids = f[:max_len]
        labels = [IGNORE] * min(len(p), len(ids)) + ids[len(p) :]
        if any(t != IGNORE for t in labels[1:]):
            out.append((ids, labels))
    return out


def _batches(
    data: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, rng: random.Random
) -> Any:
    """Endless length-bucketed batches: shuffle, sort within windows of 16, shuffle batches."""
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        window = batch_size * 16
        groups: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: len(data[i][0]))
            groups += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
        rng.shuffle(groups)
        for group in groups:
            width = max(len(data[i][0]) for i in group)
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            labels = torch.full((len(group), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                seq, lab = data[i]
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, : len(lab)] = torch.tensor(lab)
                mask[row, : len(seq)] = 1
            yield ids, labels, mask


def _lr_factor(step: int, progress: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay on ``progress`` (0..1)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * (min_ratio + (1.0 - min_ratio) * cosine)


def _progress_bar(enabled: bool, budget_s: float) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.fields[step]}  loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn(f"/ {budget_s:.0f}s budget"),
        disable=not enabled,
        transient=False,
    )


def _new_tiny_model(cfg: TinyModelConfig, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        tie_word_embeddings=True,
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
    )
    config.dtype = "float32"
    return LlamaForCausalLM(config)


def _optimise(
    model: Any,
    data: list[tuple[list[int], list[int]]],
    cfg: TinyModelConfig | FineTuneConfig,
    run: _Run,
    pad_id: int,
    label: str,
) -> tuple[int, int, float, float]:
    """The training loop; returns (steps, examples seen, seconds, final smoothed loss).

    Trains the parameters with ``requires_grad``; bf16 autocast on CUDA, fp32 on CPU.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    batches = _batches(data, cfg.batch_size, pad_id, random.Random(run.seed))
    model.train()
    steps = seen = 0
    ema = float("nan")
    start = time.monotonic()
    with _progress_bar(run.progress, run.budget_s) as bar:
        task = bar.add_task(label, total=run.budget_s, step=0, loss="-")
        while True:
            done = (time.monotonic() - start) / run.budget_s
            if run.max_steps:
                done = max(done, steps / run.max_steps)
            if done >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = cfg.lr * _lr_factor(steps, done, cfg.warmup_steps, cfg.min_lr_ratio)
            ids, labels, mask = (t.to(run.device) for t in next(batches))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.device.type == "cuda"):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            steps += 1
            seen += ids.shape[0]
            ema = float(loss.detach()) if steps == 1 else 0.9 * ema + 0.1 * float(loss.detach())
            elapsed = min(run.budget_s, time.monotonic() - start)
            bar.update(task, completed=elapsed, step=steps, loss=f"{ema:.3f}")
    model.eval()
    return steps, seen, time.monotonic() - start, ema


def _save(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """save_pretrained (safetensors) plus generation_config.json with the EOS id."""
    from transformers import GenerationConfig

    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True
    model.save_pretrained(str(out_dir), **kwargs)
    if not (out_dir / "tokenizer_config.json").exists():
        tokenizer.save_pretrained(str(out_dir))
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=160,
    ).save_pretrained(str(out_dir))
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "torch_dtype" not in config:  # transformers 5 writes "dtype"; older loaders want this
        config["torch_dtype"] = config.get("dtype", "float32")
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def train(
    out_dir: Path | str,
    budget_s: float | None = None,
    seed: int | None = None,
    *,
    base_model_path: str | Path | None = None,
    config: TinyModelConfig | FineTuneConfig | None = None,
    max_steps: int | None = None,
    examples: list[dict[str, Any]] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train into ``out_dir`` (created) for at most ``budget_s`` seconds (capped at 300 s).

    Defaults come from ``get_settings()`` (``train_seconds``, ``train_seed``). The data
    order and initial weights follow ``seed``; with ``max_steps`` the learning-rate
    schedule is step-based too, so the run is reproducible given the same step count.
    Raises FileNotFoundError when ``base_model_path`` does not exist.
    """
    from serve_app.settings import get_settings

    settings = get_settings()
    budget = min(float(budget_s if budget_s is not None else settings.train_seconds), MAX_BUDGET_S)
    seed = settings.train_seed if seed is None else seed
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = examples if examples is not None else load_corpus()
    cuda = base_model_path is not None and torch.cuda.is_available()
    run = _Run(budget, seed, max_steps, progress, torch.device("cuda" if cuda else "cpu"))
    torch.manual_seed(seed)
    random.seed(seed)
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(2)
    try:
        if base_model_path is not None:
            ft = config if isinstance(config, FineTuneConfig) else FineTuneConfig()
            return _fine_tune(Path(base_model_path), out, ft, run, examples)
        cfg = config if isinstance(config, TinyModelConfig) else TinyModelConfig()
        examples = with_system_prompts(examples, seed)
        tokenizer = build_tokenizer(
            examples, out, vocab_size=cfg.vocab_size, model_max_length=cfg.max_position_embeddings
        )
        model = _new_tiny_model(cfg, tokenizer)
        data = encode_examples(tokenizer, examples, cfg.max_seq_len)
        stats = _optimise(model, data, cfg, run, tokenizer.pad_token_id, "Training tiny model")
        _save(model, tokenizer, out)
        return _result(out, stats, model, run, cfg)
    finally:
        torch.set_num_threads(threads)


def _result(
    out: Path, stats: tuple[int, int, float, float], model: Any, run: _Run, cfg: Any, base: str = ""
) -> TrainResult:
    steps, seen, secs, loss = stats
    return TrainResult(
        out, steps, seen, round(secs, 2), round(loss, 4), model.num_parameters(), run.seed,
        str(run.device), asdict(cfg), base or None,
    )  # fmt: skip


def freeze_to_fit(model: Any, memory_bytes: float) -> int:
    """Freeze the lower decoder layers until full-precision AdamW training fits ``memory_bytes``.

    fp32 weights cost 4 bytes a parameter, each trained one 12 more (gradient + two moments).
    Returns how many decoder layers stay trainable (all of them when everything fits); the
    final norm and output head always train.
    """
    total = sum(p.numel() for p in model.parameters())
    layers = getattr(getattr(model, "model", None), "layers", None)
    if total * 16 <= memory_bytes or layers is None:
        return len(layers) if layers is not None else 0
    room = (memory_bytes - total * 4) / 12
    for p in model.parameters():
        p.requires_grad_(False)
    head = [model.get_output_embeddings(), getattr(model.model, "norm", None)]
    for module in head:
        for p in module.parameters() if module is not None else ():
            p.requires_grad_(True)
    room -= sum(p.numel() for p in model.parameters() if p.requires_grad)
    kept = 0
    for layer in reversed(layers):
        size = sum(p.numel() for p in layer.parameters())
        if size > room:
            break
        layer.requires_grad_(True)
        room -= size
        kept += 1
    return kept


def _fine_tune(
    base: Path, out: Path, cfg: FineTuneConfig, run: _Run, examples: list[dict[str, Any]]
) -> TrainResult:
    """Fine-tune a local base model on the corpus and save it with its tokenizer.

    fp32 master weights with bf16 autocast on GPU; when the model is too large for full
    AdamW training in GPU memory, only its top decoder layers train (``freeze_to_fit``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve_app.model.tokenizer import CHAT_TEMPLATE

    if not base.exists():
        raise FileNotFoundError(f"Model path not found: {base}")
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if run.device.type == "cuda":
        free = torch.cuda.get_device_properties(run.device).total_memory * 0.8
        freeze_to_fit(model, free)
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        model.config.use_cache = False
    model.to(run.device)
    data = encode_examples(tokenizer, examples, cfg.max_seq_len)
    stats = _optimise(model, data, cfg, run, tokenizer.pad_token_id, f"Fine-tuning {base.name}")
    model.config.use_cache = True
    tokenizer.save_pretrained(str(out))
    _save(model, tokenizer, out)
    return _result(out, stats, model, run, cfg, str(base))
