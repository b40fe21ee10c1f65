"""A byte-level BPE tokenizer trained on the governance corpus, saved in Hugging Face format.

The chat format (the lead's prompt layout, shared with vLLM through ``chat_template``)::

    <s><|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{answer}</s>

``<s>`` is BOS, ``</s>`` is EOS (it ends every assistant turn, so generation stops there),
``<pad>`` pads. The role markers are single special tokens. Encoding adds no special
tokens by itself: the template writes ``<s>``, so prompts rendered with
``apply_chat_template(..., tokenize=False)`` can be passed to vLLM as plain text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)  # ids 0..5, in this order
DEFAULT_VOCAB_SIZE = 3072

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + eos_token }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def corpus_texts(examples: Iterable[dict[str, Any]]) -> Iterable[str]:
    """The message contents of ``examples`` (what the BPE merges are learned from)."""
    for example in examples:
        for message in example["messages"]:
            yield message["content"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE ``tokenizers.Tokenizer`` (deterministic for the same texts)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def save_hf_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int = 512) -> Path:
    """Save ``tok`` as a transformers fast tokenizer with the chat template; returns ``out_dir``.

    Writes tokenizer.json, tokenizer_config.json (with ``chat_template``) and
    special_tokens_map.json, loadable by ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    _normalise_config_files(out_dir, model_max_length)
    return out_dir


def _normalise_config_files(out_dir: Path, model_max_length: int) -> None:
    """Keep the chat template inside tokenizer_config.json and write special_tokens_map.json.

    Newer transformers releases move the template to chat_template.jinja and drop the
    special tokens map; older loaders (and vLLM's) read both from the JSON files.
    """
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "add_bos_token": False,
            "add_eos_token": False,
            "model_max_length": model_max_length,
            "chat_template": CHAT_TEMPLATE,
        }
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    special = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": list(ROLE_TOKENS),
    }
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special, indent=2) + "\n", encoding="utf-8"
    )


def build_tokenizer(
    examples: Iterable[dict[str, Any]],
    out_dir: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    model_max_length: int = 512,
) -> Any:
    """Train on ``examples``, save into ``out_dir`` and return the loaded transformers tokenizer."""
    from transformers import AutoTokenizer

    save_hf_tokenizer(
        train_tokenizer(corpus_texts(examples), vocab_size), out_dir, model_max_length
    )
    return AutoTokenizer.from_pretrained(str(out_dir))
