"""Resolve the model directory the engine serves, building the embedded default when needed.

``ensure_default_model()`` returns ``PROMETHIOS_NATIVE_MODEL_PATH`` when it is set (and
exists), else the embedded model in ``var/models/promethios-native-tiny``, trained on the
shipped corpus the first time and reused while its ``build_info.json`` matches the
corpus hash, seed and config. Builds run under an ``fcntl`` lock (concurrent callers
wait, then reuse the result) into a temporary directory that is renamed into place.

CLI: ``python -m serve_app.model.build [--budget-s N] [--force] [--out DIR] [--base-model PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from serve_app.model.corpus import corpus_sha256, dataset_count

BUILD_INFO = "build_info.json"
BUILD_FORMAT = 2  # bump when training changes in a way the corpus hash and config miss
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
)


class ModelPathNotFound(FileNotFoundError):
    """The configured model directory does not exist."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"Model path not found: {path}")
        self.path = str(path)


def read_build_info(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``build_info.json`` of ``model_dir``, or None when absent or unreadable."""
    try:
        return json.loads((Path(model_dir) / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _expected(seed: int, base_model_path: str | None) -> dict[str, Any]:
    """The fields a cached build must match to be reused."""
    from serve_app.model.train import FineTuneConfig, TinyModelConfig

    config = FineTuneConfig() if base_model_path else TinyModelConfig()
    return {
        "format": BUILD_FORMAT,
        "corpus_sha256": corpus_sha256(),
        "seed": seed,
        "config": asdict(config),
        "base_model": base_model_path,
    }


def is_fresh(model_dir: Path, expected: dict[str, Any]) -> bool:
    """True when ``model_dir`` holds a complete build whose info matches ``expected``."""
    info = read_build_info(model_dir)
    if info is None or any(not (model_dir / name).exists() for name in REQUIRED_FILES):
        return False
    return all(info.get(key) == value for key, value in expected.items())


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Exclusive ``fcntl`` lock on ``.<name>.lock`` beside ``target`` (blocks until free)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, moving any previous build aside first and deleting it after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{int(time.time())}")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_model(
    out_dir: str | Path,
    *,
    budget_s: float | None = None,
    seed: int | None = None,
    force: bool = False,
    base_model_path: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Build (or reuse) a trained model in ``out_dir`` and return its path.

    From scratch by default; with ``base_model_path`` a fine-tune of that local model.
    Reuses a fresh build unless ``force``. Raises ModelPathNotFound for a missing base model.
    """
    from serve_app.model.train import MAX_BUDGET_S, train
    from serve_app.settings import get_settings

    settings = get_settings()
    target = Path(out_dir).resolve()
    seed = settings.train_seed if seed is None else seed
    base = str(Path(base_model_path).resolve()) if base_model_path else None
    if base and not Path(base).exists():
        raise ModelPathNotFound(base)
    expected = _expected(seed, base)
    if not force and is_fresh(target, expected):
        return target
    with _build_lock(target):
        if not force and is_fresh(target, expected):  # another process built it while we waited
            return target
        for orphan in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(orphan, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            started = time.time()
            result = train(
                tmp, budget_s=budget_s, seed=seed, base_model_path=base, progress=progress
            )
            info = {
                **expected,
                "model_name": target.name,
                "dataset_count": dataset_count(),
                "budget_s": min(float(budget_s or settings.train_seconds), MAX_BUDGET_S),
                "train_seconds": result.train_seconds,
                "steps": result.steps,
                "examples_seen": result.examples_seen,
                "final_loss": result.final_loss,
                "param_count": result.param_count,
                "device": result.device,
                "build_seconds": round(time.time() - started, 2),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": _versions(),
            }
            (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
            _swap_into_place(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def ensure_default_model(
    settings: Any = None, budget_s: float | None = None, progress: bool = True
) -> Path:
    """The model directory to serve.

    ``settings.model_path`` when set (raises ModelPathNotFound if it does not exist);
    otherwise ``settings.default_model_dir``, built first if missing or stale.
    """
    if settings is None:
        from serve_app.settings import get_settings

        settings = get_settings()
    if settings.model_path:
        path = Path(settings.model_path).expanduser()
        if not path.exists():
            raise ModelPathNotFound(settings.model_path)
        return path
    return build_model(
        settings.default_model_dir, budget_s=budget_s, seed=settings.train_seed, progress=progress
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the model directory and its build info."""
    from serve_app.settings import get_settings

    parser = argparse.ArgumentParser(
        prog="python -m serve_app.model.build",
        description="Build the embedded governance model (or fine-tune a base model).",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="training wall-clock budget in seconds (default: PROMETHIOS_TRAIN_SECONDS, max 300)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even when a fresh build exists"
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    parser.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="local Hugging Face model directory to fine-tune instead of training from scratch",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.out is None and args.base_model is None and settings.model_path and not args.force:
            path = ensure_default_model(settings)
            print(f"PROMETHIOS_NATIVE_MODEL_PATH is set; serving {path} (nothing to build)")
            return 0
        out = args.out
        if out is None:
            out = (
                settings.var_dir / "models" / f"{args.base_model.name}-governance"
                if args.base_model
                else settings.default_model_dir
            )
        path = build_model(
            out,
            budget_s=args.budget_s,
            force=args.force,
            base_model_path=args.base_model,
            progress=True,
        )
    except ModelPathNotFound as exc:
        print(f"error: {exc}")
        return 2
    print(f"model ready: {path}")
    print(json.dumps(read_build_info(path), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
