"""Governance scoring cost: input + output screening of one request, messages < 1,000 chars.

    .venv/bin/python bench/governance_cost.py [--requests 200] [--repeats 3] [--fp32]

In-process `GovernanceScorer.evaluate` with the default policy in `standard` mode, the
way the Serve deployment calls it for one request: the user message (input) and then
the assistant answer (output), each a different text. Pairs come from the shipped chat
corpus (real prompt / answer pairs) and the labeled set's prompts, all under 1,000
characters, none repeated, and the embedding cache is cleared before each round, so
no request is answered from the cache. One torch thread (the deployment's setting).
Reports the median and p95 per request over all rounds, the median of each round (the
machine is shared: rounds show the noise) and the median CPU time per request, as JSON,
also written to bench/results/governance_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_app.governance.dataset import load_items  # noqa: E402
from serve_app.governance.policy import PolicySet  # noqa: E402
from serve_app.governance.scorer import GovernanceScorer  # noqa: E402
from serve_app.governance.semantic import SemanticModel  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "governance_cost.json"
MAX_CHARS = 1000


def request_pairs(n: int) -> list[tuple[str, str]]:
    """n (input, output) pairs of distinct texts under MAX_CHARS characters."""
    from serve_app.model.corpus import CORPUS_PATH

    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in CORPUS_PATH.read_text().splitlines():
        row = json.loads(line)
        user, answer = row["messages"][0]["content"], row["messages"][-1]["content"]
        if user in seen or answer in seen or max(len(user), len(answer)) >= MAX_CHARS:
            continue
        seen |= {user, answer}
        pairs.append((user, answer))
    prompts = [i.text for i in load_items() if i.kind == "prompt" and i.text not in seen]
    answers = [p[1] for p in pairs]
    # Mix in the labeled prompts (harmful, PII, injection, benign) with corpus answers.
    mixed = [(p, a) for p, a in zip(prompts[::7], answers[::-1], strict=False)]
    out = [x for pair in zip(pairs, mixed, strict=False) for x in pair]
    if len(out) < n:
        raise SystemExit(f"only {len(out)} request pairs available, {n} asked")
    return out[:n]


def measure(requests: int = 200, repeats: int = 3, quantize: bool = True) -> dict:
    from serve_app.settings import get_settings

    semantic = SemanticModel.load(get_settings().var_dir, quantize=quantize)
    scorer = GovernanceScorer(PolicySet.load(), semantic)
    pairs = request_pairs(requests + 20)
    warm, pairs = pairs[:20], pairs[20:]
    for user, answer in warm:
        scorer.evaluate(user, "input", "standard")
        scorer.evaluate(answer, "output", "standard")
    times: list[float] = []
    cpu: list[float] = []
    round_medians: list[float] = []
    for _ in range(repeats):
        semantic.embedder.clear_cache()
        this_round = []
        for user, answer in pairs:
            start, cpu_start = time.perf_counter(), time.process_time()
            scorer.evaluate(user, "input", "standard")
            scorer.evaluate(answer, "output", "standard")
            this_round.append((time.perf_counter() - start) * 1000.0)
            cpu.append((time.process_time() - cpu_start) * 1000.0)
        round_medians.append(round(statistics.median(this_round), 2))
        times += this_round
    times.sort()
    chars = sorted(len(u) + len(a) for u, a in pairs)
    return {
        "requests": len(pairs),
        "rounds": repeats,
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[max(0, int(0.95 * len(times)) - 1)], 2),
        "round_median_ms": round_medians,
        # CPU time of this process per request: what the scoring costs when the shared
        # machine is busy (wall time then includes waiting for a core).
        "cpu_median_ms": round(statistics.median(cpu), 2),
        "median_chars_in_plus_out": statistics.median(chars),
        "embedding": semantic.embedder.variant,
        "what": "input + output evaluation of one request, distinct texts, no cache hits, "
        "1 torch thread, in-process",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fp32", action="store_true", help="the unquantized encoder (baseline)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    result = measure(args.requests, args.repeats, quantize=not args.fp32)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
