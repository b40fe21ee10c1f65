"""The governance corpus: 5,000 chat examples the embedded default model is trained on.

The shipped file ``data/governance_corpus.jsonl`` is produced by a deterministic generator
(a seeded ``random.Random``) from the curated templates in ``data/corpus_templates.yaml``
and committed. ``python -m serve_app.model.corpus --regenerate`` rewrites it and
``--check`` verifies it is current. In the templates ``[a|b|c]`` picks one alternative
and ``{slot}`` is filled from the example's entities (product, plan, order number, ...),
and every answer gets an opening and closing drawn by tone, so answers are composed
rather than one template per question.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS_PATH = DATA_DIR / "governance_corpus.jsonl"
TEMPLATES_PATH = DATA_DIR / "corpus_templates.yaml"
CORPUS_SEED = 5000

_ALT = re.compile(r"\[([^\[\]]*)\]")


def load_templates(path: Path = TEMPLATES_PATH) -> dict[str, Any]:
    """The curated templates: slots, openings/closings by tone, categories with topics."""
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def categories(templates: dict[str, Any] | None = None) -> tuple[str, ...]:
    """Category names in template order (billing, refunds, ..., governance)."""
    return tuple((templates or load_templates())["categories"])


def _fill(rng: random.Random, text: str, slots: dict[str, str]) -> str:
    """Pick one alternative for every ``[a|b]`` and substitute the ``{slot}`` values."""
    return _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), text).format(**slots)


def _example(rng: random.Random, tpl: dict[str, Any], category: str) -> tuple[str, str]:
    """One (user, assistant) pair of ``category``."""
    slots = {name: rng.choice(values) for name, values in tpl["slots"].items()}
    slots["order"] = f"#{rng.randint(10000, 99999)}"
    slots["amount"] = f"${rng.randint(5, 199)}.{rng.choice(['00', '49', '99'])}"
    spec = tpl["categories"][category]
    topic = rng.choice(spec["topics"])
    question = _fill(rng, rng.choice(topic["q"]), slots)
    style = spec.get("user", "support")
    if style == "support":
        user = rng.choice(tpl["user_open"]) + question + rng.choice(tpl["user_close"])
    elif style == "short":
        user = rng.choice(tpl["user_open"][:8]) + question
    else:
        user = question
    tone = topic.get("tone", "help")
    parts = (
        rng.choice(tpl["openings"][tone]),
        _fill(rng, rng.choice(topic["a"]), slots),
        rng.choice(tpl["closings"][topic.get("close", "help")]),
    )
    return user, " ".join(p for p in parts if p)


def generate_corpus(
    seed: int = CORPUS_SEED, templates: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Build the corpus deterministically: each category's ``weight`` examples, shuffled."""
    tpl = templates or load_templates()
    rng = random.Random(seed)
    plan = [name for name, spec in tpl["categories"].items() for _ in range(int(spec["weight"]))]
    rng.shuffle(plan)
    out: list[dict[str, Any]] = []
    for i, category in enumerate(plan):
        user, assistant = _example(rng, tpl, category)
        out.append(
            {
                "id": f"gov-{i:05d}",
                "category": category,
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": assistant},
                ],
            }
        )
    return out


def with_system_prompts(
    examples: list[dict[str, Any]], seed: int, rate: float = 0.35
) -> list[dict[str, Any]]:
    """Copies of ``examples`` where a ``rate`` share start with a templated system message.

    Training-time augmentation: agents send a system prompt, and a model that never saw
    one answers worse under it.
    """
    pool = load_templates()["system_prompts"]
    rng = random.Random(seed)
    out = []
    for example in examples:
        if rng.random() < rate:
            text = rng.choice(pool["templates"])
            text = text.format(**{k: rng.choice(v) for k, v in pool.items() if k != "templates"})
            text = text[0].upper() + text[1:]
            system = {"role": "system", "content": text}
            example = {**example, "messages": [system, *example["messages"]]}
        out.append(example)
    return out


def serialise(examples: list[dict[str, Any]]) -> str:
    """JSON Lines text, one example per line, exactly as shipped."""
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)


def write_corpus(path: Path = CORPUS_PATH, seed: int = CORPUS_SEED) -> int:
    """Regenerate the shipped file; returns the number of examples written."""
    examples = generate_corpus(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(serialise(examples), encoding="utf-8")
    _read.cache_clear()
    return len(examples)


def chat_turns(path: Path = CORPUS_PATH) -> list[tuple[str, str, str]]:
    """(category, user message, final answer) of each conversation in the shipped file."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out.append((row["category"], row["messages"][0]["content"], row["messages"][-1]["content"]))
    return out


@lru_cache(maxsize=4)
def _read(path: str) -> tuple[str, str]:
    raw = Path(path).read_bytes()
    return raw.decode("utf-8"), hashlib.sha256(raw).hexdigest()


def load_corpus(path: Path = CORPUS_PATH) -> list[dict[str, Any]]:
    """The shipped examples (fresh dicts). Raises FileNotFoundError if the data file is missing."""
    return [json.loads(line) for line in _read(str(path))[0].splitlines() if line.strip()]


def dataset_count(path: Path = CORPUS_PATH) -> int:
    """How many examples the shipped corpus holds: the API's ``dataset_count``."""
    return sum(1 for line in _read(str(path))[0].splitlines() if line.strip())


def corpus_sha256(path: Path = CORPUS_PATH) -> str:
    """SHA-256 of the shipped file's bytes; the cached model is rebuilt when it changes."""
    return _read(str(path))[1]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--regenerate`` rewrites the shipped file, ``--check`` exits 1 if it is stale."""
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.model.corpus", description="The governance training corpus."
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="rewrite data/governance_corpus.jsonl"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the shipped file is out of date"
    )
    args = parser.parse_args(argv)
    if args.regenerate:
        print(f"wrote {write_corpus()} examples to {CORPUS_PATH}")
        return 0
    if args.check:
        same = CORPUS_PATH.exists() and CORPUS_PATH.read_text(encoding="utf-8") == serialise(
            generate_corpus()
        )
        print(
            "corpus up to date" if same else "corpus differs from its generator; run --regenerate"
        )
        return 0 if same else 1
    print(f"{dataset_count()} examples, sha256 {corpus_sha256()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
