"""Governance scoring cost: input + output screening of one request, messages < 1,000 chars.

    .venv/bin/python bench/governance_cost.py [--requests 200] [--repeats 3] [--fp32]
        [--runtime onnx|torch] [--compare torch|onnx|no-exit|shortcuts]

In-process `GovernanceScorer.evaluate` with the default policy in `standard` mode, the way
the Serve deployment calls it for one request: the user message (input) and then the
assistant answer (output), each a different text, with the configured cascade
(`PROMETHIOS_GOVERNANCE_SHORTCUTS`, off by default: the classifier reads every text).
Pairs come from the shipped chat corpus (real prompt / answer pairs) and the labeled set's
prompts, all under 1,000 characters, none repeated, and the embedding cache is cleared
before each round, so no request is answered from the cache. One thread (the deployment's
setting). The encoder runs under ONNX Runtime (the default) or torch; `--compare` measures
the other one too, request by request in turn, and reports the ratio per round (this
machine's speed drifts by up to 2x within minutes: only interleaved figures compare).
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

from serve_app.governance.embedding import RUNTIMES  # noqa: E402
from serve_app.governance.policy import PolicySet  # noqa: E402
from serve_app.governance.scorer import GovernanceScorer  # noqa: E402
from serve_app.governance.semantic import SemanticModel  # noqa: E402
from training.labeled import load_items  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "governance_cost.json"
NO_EXIT = "no-exit"  # --compare: the same runtime without the lexical screen and early exit
SHORTCUTS = "shortcuts"  # --compare: the same runtime with them
MAX_CHARS = 1000


def request_pairs(n: int) -> list[tuple[str, str]]:
    """n (input, output) pairs of distinct texts under MAX_CHARS characters."""
    from serve_app.model.corpus import chat_turns

    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _, user, answer in chat_turns():
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


def _cpu_description() -> str:
    """The CPU's model name and its int8-relevant vector extensions (Linux; else platform)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                  if ln.startswith("model name")), platform.machine())  # fmt: skip
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))  # fmt: skip
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return f"{model} ({' '.join(f for f in wanted if f in flags) or 'no AVX2'})"


def _request_ms(
    scorer: GovernanceScorer, user: str, answer: str
) -> tuple[float, float, tuple[int, int]]:
    """Wall and CPU ms of one request's input + output evaluation, and how many of its two
    texts the lexical screen and the early exit decided."""
    start, cpu_start = time.perf_counter(), time.process_time()
    verdicts = (scorer.evaluate(user, "input", "standard"),
                scorer.evaluate(answer, "output", "standard"))  # fmt: skip
    wall = (time.perf_counter() - start) * 1000.0
    cpu = (time.process_time() - cpu_start) * 1000.0
    stages = [(v.classifier or {}).get("stage") for v in verdicts]
    return wall, cpu, (stages.count("lexical"), stages.count("early"))


def _summary(
    wall: list[float], cpu: list[float], round_medians: list[float], decided: list[int]
) -> dict:
    n = len(wall)
    wall = sorted(wall)
    return {
        "median_ms": round(statistics.median(wall), 2),
        "p95_ms": round(wall[max(0, int(0.95 * len(wall)) - 1)], 2),
        "round_median_ms": round_medians,
        # CPU time of this process per request: what the scoring costs when the shared
        # machine is busy (wall time then includes waiting for a core).
        "cpu_median_ms": round(statistics.median(cpu), 2),
        # Texts (two per request) the lexical screen decided (the encoder did not run) and
        # the early exit decided after the encoder's bottom layers.
        "texts_passed_lexical": round(decided[0] / (2 * n), 4) if n else None,
        "texts_exited_early": round(decided[1] / (2 * n), 4) if n else None,
    }


def measure(
    requests: int = 200,
    repeats: int = 3,
    quantize: bool = True,
    runtime: str = "onnx",
    compare: str | None = None,
) -> dict:
    """The cost with `runtime`'s encoder; with `compare`, also with that runtime's (or,
    `no-exit` / `shortcuts`, with `runtime`'s without / with the lexical screen and the
    early exit), the two taking turns request by request (this machine's speed drifts:
    only interleaved figures compare)."""
    from serve_app.settings import get_settings

    runtimes = [runtime] + ([compare] if compare else [])
    scorers = {}
    for name in runtimes:
        same = name in (NO_EXIT, SHORTCUTS)
        semantic = SemanticModel.load(
            get_settings().var_dir, quantize=quantize, runtime=runtime if same else name,
            shortcuts={NO_EXIT: False, SHORTCUTS: True}.get(name),
        )  # fmt: skip
        scorers[name] = GovernanceScorer(PolicySet.load(), semantic)
    pairs = request_pairs(requests + 20)
    warm, pairs = pairs[:20], pairs[20:]
    for scorer in scorers.values():
        for user, answer in warm:
            _request_ms(scorer, user, answer)
    wall: dict[str, list[float]] = {name: [] for name in runtimes}
    cpu: dict[str, list[float]] = {name: [] for name in runtimes}
    medians: dict[str, list[float]] = {name: [] for name in runtimes}
    decided = {name: [0, 0] for name in runtimes}  # texts: lexical screen, early exit
    for _ in range(repeats):
        for scorer in scorers.values():
            scorer.semantic.embedder.clear_cache()
        this_round: dict[str, list[float]] = {name: [] for name in runtimes}
        for n, (user, answer) in enumerate(pairs):
            # Request by request, the runtimes in turn (first one, then the other): the
            # machine's drift within a round falls on both alike.
            for name in runtimes[n % len(runtimes) :] + runtimes[: n % len(runtimes)]:
                w, c, e = _request_ms(scorers[name], user, answer)
                this_round[name].append(w)
                cpu[name].append(c)
                decided[name][0] += e[0]
                decided[name][1] += e[1]
        for name in runtimes:
            wall[name] += this_round[name]
            medians[name].append(round(statistics.median(this_round[name]), 2))
    chars = sorted(len(u) + len(a) for u, a in pairs)
    result = {
        "requests": len(pairs),
        "rounds": repeats,
        **_summary(wall[runtime], cpu[runtime], medians[runtime], decided[runtime]),
        "median_chars_in_plus_out": statistics.median(chars),
        "embedding": scorers[runtime].semantic.embedder.variant,
        "shortcuts": scorers[runtime].semantic.lexical is not None,
        "what": "input + output evaluation of one request, distinct texts, no cache hits, "
        "1 thread, in-process",
    }
    if compare:
        other = _summary(wall[compare], cpu[compare], medians[compare], decided[compare])
        result["compared_with"] = {
            "embedding": scorers[compare].semantic.embedder.variant,
            "shortcuts": scorers[compare].semantic.lexical is not None,
            **other,
            # Per round, this runtime's median over the other's (requests alternate).
            "round_ratios": [
                round(a / b, 3) for a, b in zip(medians[runtime], medians[compare], strict=True)
            ],
            "median_ratio": round(result["median_ms"] / other["median_ms"], 3),
        }
    return {
        **result,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        # int8 matrix products run ~3x faster where the CPU has VNNI/AMX than on plain AVX2
        # (~10 vs 23-33 ms on two 2-core machines of this project): the figure needs the CPU.
        "cpu": _cpu_description(),
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fp32", action="store_true", help="the unquantized encoder (baseline)")
    ap.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="the encoder's runtime")
    ap.add_argument(
        "--compare",
        choices=[*RUNTIMES, NO_EXIT, SHORTCUTS],
        help="also measure this runtime (no-exit / shortcuts: the same one without / with "
        "the lexical screen and the early exit), taking turns with it",
    )
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    result = measure(
        args.requests, args.repeats, quantize=not args.fp32, runtime=args.runtime,
        compare=args.compare,
    )  # fmt: skip
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
