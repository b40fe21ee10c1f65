"""Ship the hazard classifier's tuned weights with the code: `python -m
serve_app.governance.ship_weights` (after changing the dataset or a fine-tuning setting).

Builds the classifier over the configured var/ directory (fine-tuning if its cache lacks
this data's weights), then copies the tuned layers, the served variant's refitted head and
the early exit's head into `harm.SHIPPED_DIR` and removes the files of earlier data from
it. Commit the result: `tests/governance/test_harm_classifier.py` fails while the shipped
weights are not the current data's, and a fresh checkout would otherwise fine-tune at its
first start.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from serve_app.governance import harm
from serve_app.governance.semantic import SemanticModel


def ship(var_dir: Path, shipped_dir: Path = harm.SHIPPED_DIR) -> list[Path]:
    """Build (or reuse) the classifier under `var_dir` and ship its weights; returns the
    shipped files."""
    model = SemanticModel.load(var_dir)
    names = model.weight_files()
    cache = Path(var_dir) / "governance"
    shipped_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, target = harm.cached_or_shipped(cache / name), shipped_dir / name
        if not source.exists():  # only if the cache was cleared while this ran
            raise FileNotFoundError(f"{name}: neither built under {cache} nor shipped")
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    for stale in shipped_dir.iterdir():
        if stale.name not in names:
            stale.unlink()
    return [shipped_dir / n for n in names]


if __name__ == "__main__":
    from serve_app.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for path in ship(get_settings().var_dir):
        print(f"shipped {path} ({path.stat().st_size / 1e6:.1f} MB)")
