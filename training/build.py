"""Builds the governance artifacts: `python -m training.build` (`make governance-weights`).

1. The encoder: all-MiniLM-L6-v2 fine-tuned on our labeled set (training/classifier.py;
   reused from var/governance/ or the current artifacts by its cache key).
2. The pooled data (training/pool.py: our labeled set and the public sources of
   training/sources.yaml, fetched under data/public/) embedded by the served int8 encoder,
   window by window (training/features.py).
3. The classifier head (one GELU layer) on the pooled train split (training/heads.py);
   its threshold for each benign false-positive budget chosen on the pooled dev split,
   within budget for real traffic and for look-alikes alike (training/evaluate.py).
4. The early exit's head on the same windows at the split, and the lexical screen on
   their words; each one's threshold the highest that lets none (the exit: at most
   EXIT_MAX_LOST) of the dev harmful examples the classifier flags at its lowest
   threshold through.
5. The four files and `manifest.json` into the artifact directory; earlier builds' files
   there are removed. Commit them: a fresh checkout serves exactly these.

Every file is named by a key of what it was built from (data, sources manifest, settings),
so an unchanged build reuses them; `tests/governance/test_artifacts.py` fails while the
shipped files are not the current keys'. The public files are needed to build (not to
serve or test): a missing one stops the build with what to fetch.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from serve_app.governance import artifacts, early_exit
from serve_app.governance.artifacts import ARTIFACT_DIR, MANIFEST_NAME, ROLES, Manifest
from serve_app.governance.embedding import Embedder
from serve_app.governance.harm import MAX_DEV_BENIGN_FPR
from serve_app.governance.hazards import BENIGN_FPR_BUDGETS
from serve_app.governance.lexical_screen import LexicalScreen
from serve_app.governance.semantic import serving_settings
from training import classifier, evaluate, features, finetune, heads, lexical_fit, pool, public
from training.labeled import dataset_hash

log = logging.getLogger("promethios.training.build")
FORMAT = 6  # 6: heads on the pooled public + own data
# The classifier head: one GELU layer of 512. On the pooled dev (2026-12-04), over the
# frozen tuned encoder: harmful recall 87.3 % at 0.7 % / 2.0 % real / look-alike benign
# flagged, against 77.0 % for a linear head and 82.8 % for 256 units (300 steps).
HEAD = heads.HeadParams(steps=400, hidden=512)
EXIT_HEAD = heads.HeadParams(steps=300, hidden=256)
EXIT_MAX_LOST = 2  # dev harmful examples the classifier flags that may exit (of ~2,700)
LEXICAL_MAX_LOST = 0


def data_key() -> str:
    """What the heads are trained on, without reading the public files: the encoder's key
    (our labeled set, the corpus, the fine-tuning settings), the sources manifest (pinned
    commits, counts, label maps) and the pooling settings."""
    h = hashlib.sha256()
    h.update(classifier.cache_key().encode())
    h.update(public.SOURCES_FILE.read_bytes())
    h.update(repr((FORMAT, pool.BENIGN_CAP, public.MAX_CHARS)).encode())
    return h.hexdigest()[:12]


def names(embedder: Embedder) -> dict[str, str]:
    """Each role's file name for the current data and settings (the encoder's variant
    included: the heads read what it serves)."""
    base = f"harm-v{FORMAT}-{classifier.cache_key()}"
    key = data_key()

    def k(*parts: object) -> str:
        return hashlib.sha256(repr((key, embedder.variant, *parts)).encode()).hexdigest()[:12]

    return {
        "encoder": classifier._tuned_name(classifier.cache_key()),
        "head": f"{base}-head-{k(asdict(HEAD))}.npz",
        "exit_head": f"{base}-exit-{k(asdict(EXIT_HEAD), early_exit.EXIT_LAYER)}.npz",
        "lexical": f"{base}-lexical-{k(lexical_fit.PARAMS)}.npz",
    }


def encoder(cache: Path) -> tuple[Embedder, Path]:
    """The served embedder pointed at the tuned encoder, and the tuned layers' file."""
    embedder = Embedder(cache_dir=cache, split=early_exit.EXIT_LAYER)
    weights, tuned = classifier._load_or_tune(
        cache / classifier._tuned_name(classifier.cache_key())
    )
    embedder.use_weights(weights.encoder, classifier.cache_key(), weights.layers)
    return embedder, tuned


@dataclass
class Trained:
    """The heads of one build (the screen as its arrays) and their dev operating points."""

    head: dict
    exit_head: dict
    screen: dict  # the lexical screen's weights, bias and idf
    per_budget: dict  # benign false-positive budget -> threshold and dev figures
    exit_dev: dict
    lexical_dev: dict


def train_heads(
    ex: list, feats: features.Features, texts: list[str], owner: np.ndarray,
    train: np.ndarray, dev: np.ndarray, cached=None,  # noqa: ANN001
) -> Trained:  # fmt: skip
    """The classifier head, the exit head and the lexical screen trained on the examples
    `train`, and every threshold chosen on the examples `dev`. `cached(role, make)` gives
    a stored role's arrays or makes (and stores) them; None: every one is fitted here."""
    cached = cached or (lambda _role, make: make())
    labels = np.array([heads.label_index(e.label) for e in ex])
    head = cached("head", lambda: _fit(feats.full, feats, train, labels, HEAD))
    exit_head = cached("exit_head", lambda: _fit(feats.early, feats, train, labels, EXIT_HEAD))
    screen = cached("lexical", lambda: _fit_screen(ex, feats, texts, owner, train, head))
    dev_ex = [ex[i] for i in dev]
    full_dev = evaluate.score(head, feats, dev)
    per_budget = {}
    for b in BENIGN_FPR_BUDGETS:
        t = evaluate.choose_threshold(full_dev.mass, dev_ex, b)
        per_budget[b] = {"threshold": t, **evaluate.figures(full_dev.mass, full_dev.top, dev_ex, t)}
    lowest = min(v["threshold"] for v in per_budget.values())
    win, pos = feats.of(dev)
    full_win = 1 - heads.probabilities(head, feats.full[win])[:, heads.BENIGN_INDEX]
    exit_win = 1 - heads.probabilities(exit_head, feats.early[win])[:, heads.BENIGN_INDEX]
    exit_dev = stage_threshold(exit_win, full_win, pos, dev_ex, lowest, EXIT_MAX_LOST, "exit")
    lex = as_screen(screen)
    lex_win = np.array([lex.harmful_probability(texts[w]) for w in win])
    lexical_dev = stage_threshold(lex_win, full_win, pos, dev_ex, lowest, LEXICAL_MAX_LOST, "pass")
    return Trained(head, exit_head, screen, per_budget, exit_dev, lexical_dev)


def as_screen(arrays: dict) -> LexicalScreen:
    w, idf = arrays["weights"].astype(np.float32), arrays["idf"].astype(np.float32)
    return LexicalScreen(w, float(arrays["bias"]), idf)


def build_files(var_dir: Path) -> tuple[dict[str, Path], dict]:
    """Each role's built (or reused) file and the manifest's other fields."""
    cache = Path(var_dir) / "governance"
    embedder, tuned = encoder(cache)
    want = names(embedder)
    ex = list(pool.examples())
    feats = features.embed(ex, embedder, cache / "features")
    texts, owner = features.window_texts(ex)
    idx = np.arange(len(ex))
    split = np.array([e.split for e in ex])
    files: dict[str, Path] = {"encoder": tuned}

    def cached(role: str, make) -> dict:  # noqa: ANN001
        files[role] = classifier.cached_or_shipped(cache / want[role])
        if files[role].exists():
            with np.load(files[role]) as z:
                return {k: z[k] for k in z.files}
        arrays = make()
        buf = io.BytesIO()
        (np.savez_compressed if role == "lexical" else np.savez)(buf, **arrays)
        classifier.write_atomic(cache / want[role], buf.getvalue())
        files[role] = cache / want[role]
        return arrays

    t = train_heads(ex, feats, texts, owner, idx[split == "train"], idx[split == "dev"], cached)
    per_budget, exit_dev, lexical_dev = t.per_budget, t.exit_dev, t.lexical_dev
    fields = {
        "encoder": {"base": "all-MiniLM-L6-v2", "layers": finetune.ENCODER_LAYERS},
        "thresholds": {
            "classifier": {
                "default_budget": MAX_DEV_BENIGN_FPR,
                "by_budget": {str(b): v["threshold"] for b, v in per_budget.items()},
            },
            "exit": exit_dev["threshold"],
            "lexical": lexical_dev["threshold"],
        },
        "data": {
            "key": data_key(),
            "labeled_set_sha256_16": dataset_hash(),
            "sources_yaml_sha256": hashlib.sha256(public.SOURCES_FILE.read_bytes()).hexdigest(),
            "counts": _counts(ex),
        },
        "training": {
            "encoder_finetune": dict(zip(_FINETUNE_NAMES, finetune.PARAMS, strict=True)),
            "head": asdict(HEAD),
            "exit_head": asdict(EXIT_HEAD),
            "exit_max_lost": EXIT_MAX_LOST,
            "lexical": {"c": lexical_fit.C, "max_iter": lexical_fit.MAX_ITER},
            "lexical_max_lost": LEXICAL_MAX_LOST,
            "benign_cap_per_source": pool.BENIGN_CAP,
        },
        "dev": {"classifier_by_budget": {str(b): v for b, v in per_budget.items()},
                "exit": exit_dev, "lexical": lexical_dev, "embedder_variant": embedder.variant},
    }  # fmt: skip
    return files, fields


def stage_threshold(
    stage_mass: np.ndarray, full_mass: np.ndarray, pos: np.ndarray, examples: list,
    lowest: float, max_lost: int, verb: str,
) -> dict:  # fmt: skip
    """The threshold of a stage in front of the classifier (a window whose stage mass is
    under it is decided benign there): the highest under which at most `max_lost` of the
    harmful `examples` the classifier flags at `lowest` lose every window it flags.
    Arrays are per window; `pos` maps a window to its example."""
    n = len(examples)
    flags = full_mass >= lowest
    # An example is lost when every window the classifier flags passes the stage: its
    # value is the highest stage mass among those windows (lost if under the threshold).
    value = np.full(n, -1.0)
    np.maximum.at(value, pos[flags], stage_mass[flags])
    harmful = np.array([e.harmful for e in examples])
    flagged = harmful & (value >= 0)
    masses = np.sort(value[flagged])
    threshold = float(masses[max_lost]) - 1e-6 if max_lost < len(masses) else 0.0
    benign_windows = ~harmful[pos]
    rate = float((stage_mass[benign_windows] < threshold).mean()) if benign_windows.any() else 0.0
    out = {"threshold": threshold, "dev_flagged_harmful": int(flagged.sum()),
           f"dev_benign_windows_{verb}_rate": round(rate, 4)}  # fmt: skip
    log.info("%s stage: %s", verb, out)
    return out


_FINETUNE_NAMES = ("encoder_layers", "tuned_layers", "epochs", "batch", "lr", "head_lr",
                   "weight_decay", "benign_weight", "scale", "train_max_tokens", "seed",
                   "threads", "label_smoothing")  # fmt: skip


def _fit(x: np.ndarray, feats: features.Features, rows: np.ndarray, labels: np.ndarray,
         params: heads.HeadParams) -> dict:  # fmt: skip
    win, pos = feats.of(rows)
    return heads.fit(x[win], pos, labels[rows], params)


def _top_windows(head: dict, x: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    """Whether each window is its example's most harmful one (by `head`)."""
    _, where = heads.example_mass(heads.probabilities(head, x), pos, n)
    top = np.zeros(len(pos), bool)
    top[where] = True
    return top


def _fit_screen(ex: list, feats: features.Features, texts: list[str], owner: np.ndarray,
                train: np.ndarray, head: dict) -> dict:  # fmt: skip
    """The lexical screen on the train examples' benign windows and the harmful examples'
    most harmful windows (by `head`), as arrays."""
    win, pos = feats.of(train)
    top = _top_windows(head, feats.full[win], pos, len(train))
    keep = [w for k, w in enumerate(win) if not ex[train[pos[k]]].harmful or top[k]]
    screen = lexical_fit.fit([texts[w] for w in keep], [ex[owner[w]].harmful for w in keep])
    return {"weights": screen.weights, "bias": np.array(screen.bias), "idf": screen.idf}


def _counts(ex: list) -> dict:
    out: dict = {}
    for e in ex:
        s = out.setdefault(e.source, {})
        key = f"{e.split}:{e.label}"
        s[key] = s.get(key, 0) + 1
    return out


def build(var_dir: Path, out_dir: Path = ARTIFACT_DIR) -> Manifest:
    """Build (or reuse) every artifact and write them and their manifest into `out_dir`;
    files of earlier builds there are removed. Returns the verified manifest."""
    files, fields = build_files(var_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for source in files.values():
        target = out_dir / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    manifest = {
        "format": artifacts.FORMAT,
        "serving": serving_settings(),
        "files": {role: artifacts.file_entry(out_dir / files[role].name) for role in ROLES},
        "sources": [
            {k: e.get(k) for k in ("name", "origin", "commit", "licence", "role", "kind")}
            for e in public.manifest()
        ],
        **fields,
    }
    keep = {files[r].name for r in ROLES} | {MANIFEST_NAME}
    classifier.write_atomic(
        out_dir / MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode()
    )
    for stale in out_dir.iterdir():
        if stale.name not in keep:
            stale.unlink()
    return artifacts.load_manifest(out_dir, serving_settings())


def main(argv: list[str] | None = None) -> None:
    from serve_app.settings import get_settings

    parser = argparse.ArgumentParser(
        prog="python -m training.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=ARTIFACT_DIR, help="artifact directory")
    parser.add_argument(
        "--var-dir", type=Path, default=None, help="cache (default: the configured var/)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifest = build(args.var_dir or get_settings().var_dir, args.out)
    for role in ROLES:
        entry = manifest.data["files"][role]
        print(f"{role:9s} {manifest.directory / entry['name']} ({entry['bytes'] / 1e6:.1f} MB)")
    print(f"manifest  {manifest.directory / MANIFEST_NAME} (build {manifest.build_id})")


if __name__ == "__main__":
    main()
