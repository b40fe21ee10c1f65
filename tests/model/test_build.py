"""Building the embedded model: a short real build, loading it, caching and locking."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from serve_app.model import build as build_mod  # noqa: E402
from serve_app.model import train as train_mod  # noqa: E402
from serve_app.model.corpus import corpus_sha256, load_corpus  # noqa: E402
from serve_app.settings import Settings  # noqa: E402

BUDGET_S = 18.0


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="module")
def settings(var_dir: Path) -> Settings:
    return Settings(var_dir=var_dir, model_path=None, train_seed=1234)


@pytest.fixture(scope="module")
def built(settings: Settings) -> Path:
    return build_mod.ensure_default_model(settings, budget_s=BUDGET_S, progress=False)


def test_build_writes_a_complete_model_and_build_info(built: Path, settings: Settings) -> None:
    assert built == settings.default_model_dir.resolve()
    for name in build_mod.REQUIRED_FILES + ("special_tokens_map.json", "build_info.json"):
        assert (built / name).is_file(), name
    info = build_mod.read_build_info(built)
    assert info is not None
    assert info["corpus_sha256"] == corpus_sha256()
    assert info["seed"] == 1234 and info["dataset_count"] == 5000
    assert 1e6 <= info["param_count"] <= 4e6
    assert info["steps"] > 0 and math.isfinite(info["final_loss"])
    assert info["budget_s"] == BUDGET_S and info["train_seconds"] <= BUDGET_S + 5
    assert not list(built.parent.glob(".promethios-native-tiny.tmp-*"))
    config = json.loads((built / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["head_dim"] > 0
    assert json.loads((built / "generation_config.json").read_text())["eos_token_id"] == 2


def test_tokenizer_loads_with_chat_template(built: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(built))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "How do I reset my password?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "<s><|user|>\nHow do I reset my password?\n<|assistant|>\n"
    full = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
        tokenize=False,
    )
    assert full.endswith("Hello!</s>")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|user|>")]
    assert (
        tok.decode(tok("Where is my refund?", add_special_tokens=False)["input_ids"])
        == "Where is my refund?"
    )


def test_model_generates_tokens(built: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(str(built))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(built)).eval()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Where is my order?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert len(new) > 0
    assert tok.decode(new, skip_special_tokens=True).strip()


def test_second_call_reuses_the_cache(built: Path, settings: Settings) -> None:
    before = build_mod.read_build_info(built)
    start = time.monotonic()
    again = build_mod.ensure_default_model(settings, budget_s=BUDGET_S, progress=False)
    assert again == built and time.monotonic() - start < 3.0
    assert build_mod.read_build_info(built) == before


def test_staleness_follows_corpus_hash_and_seed(built: Path) -> None:
    expected = build_mod._expected(1234, None)
    assert build_mod.is_fresh(built, expected)
    assert not build_mod.is_fresh(built, {**expected, "seed": 99})
    assert not build_mod.is_fresh(built, {**expected, "corpus_sha256": "0" * 64})


def test_configured_model_path_is_validated(tmp_path: Path) -> None:
    missing = tmp_path / "lambda-7b"
    with pytest.raises(FileNotFoundError, match="Model path not found: .*lambda-7b"):
        build_mod.ensure_default_model(Settings(model_path=str(missing), var_dir=tmp_path))
    missing.mkdir()
    assert (
        build_mod.ensure_default_model(Settings(model_path=str(missing), var_dir=tmp_path))
        == missing
    )


def test_concurrent_callers_train_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_train(out_dir: Path, **kwargs: object) -> train_mod.TrainResult:
        calls.append(Path(out_dir))
        time.sleep(0.5)
        for name in build_mod.REQUIRED_FILES:
            (Path(out_dir) / name).write_text("{}")
        return train_mod.TrainResult(Path(out_dir), 1, 1, 0.5, 1.0, 10, 1234, "cpu")

    monkeypatch.setattr(train_mod, "train", fake_train)
    target = tmp_path / "models" / "concurrent"
    results: list[Path] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(build_mod.build_model(target, progress=False))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [target.resolve()] * 3
    assert build_mod.read_build_info(target)["seed"] == 1234


def test_training_is_reproducible_from_the_seed(tmp_path: Path) -> None:
    cfg = train_mod.TinyModelConfig(
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        vocab_size=400,
        batch_size=4,
        max_seq_len=64,
    )
    examples = load_corpus()[:120]
    runs = [
        train_mod.train(
            tmp_path / str(i),
            budget_s=60,
            seed=7,
            config=cfg,
            max_steps=3,
            examples=examples,
            progress=False,
        )
        for i in range(2)
    ]
    assert runs[0].steps == runs[1].steps == 3
    assert runs[0].final_loss == runs[1].final_loss
    weights = [(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(2)]
    assert weights[0] == weights[1]


def test_fine_tuning_a_local_base_model(built: Path, tmp_path: Path) -> None:
    result = train_mod.train(
        tmp_path / "tuned",
        budget_s=60,
        seed=3,
        base_model_path=built,
        max_steps=2,
        examples=load_corpus()[:32],
        progress=False,
        config=train_mod.FineTuneConfig(batch_size=4, max_seq_len=128),
    )
    assert (
        result.steps == 2 and result.base_model == str(built) and math.isfinite(result.final_loss)
    )
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tuned"))
    assert tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    ).endswith("<|assistant|>\n")
    assert (
        transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "tuned")).num_parameters()
        > 0
    )
    with pytest.raises(FileNotFoundError, match="Model path not found"):
        train_mod.train(tmp_path / "x", base_model_path=tmp_path / "missing", progress=False)


def test_freeze_to_fit_keeps_the_top_layers_trainable(built: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(built))
    total = sum(p.numel() for p in model.parameters())
    assert train_mod.freeze_to_fit(model, total * 16) == 4  # everything fits: nothing frozen
    assert all(p.requires_grad for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    head = model.get_output_embeddings().weight.numel() + model.model.norm.weight.numel()
    kept = train_mod.freeze_to_fit(model, total * 4 + (head + 2 * layer) * 12 + 1)
    assert kept == 2
    assert all(p.requires_grad for p in model.model.layers[3].parameters())
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
