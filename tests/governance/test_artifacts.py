"""The governance artifacts: serving loads them and checks them against their manifest,
never trains; a missing, altered or mismatched artifact stops start-up with a clear
message; the shipped ones are the current training data's; the served operating point is
the manifest's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve_app.governance import artifacts
from serve_app.governance.artifacts import ARTIFACT_DIR, MANIFEST_NAME, ROLES, ArtifactError
from serve_app.governance.hazards import BENIGN_FPR_BUDGETS
from serve_app.governance.semantic import SemanticModel, serving_settings
from serve_app.settings import REPO_ROOT, get_settings


@pytest.fixture(scope="module")
def semantic() -> SemanticModel:
    return SemanticModel.load(get_settings().var_dir)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """A copy of the shipped artifact directory to break."""
    target = tmp_path / "artifacts"
    shutil.copytree(ARTIFACT_DIR, target)
    return target


def test_the_shipped_manifest_verifies() -> None:
    manifest = artifacts.load_manifest(ARTIFACT_DIR, serving_settings())
    assert sorted(manifest.data["files"]) == sorted(ROLES)
    names = {manifest.data["files"][r]["name"] for r in ROLES}
    assert {p.name for p in ARTIFACT_DIR.iterdir()} == names | {MANIFEST_NAME}  # nothing stale


def test_a_missing_manifest_stops_loading_with_a_clear_message(copy: Path) -> None:
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match="manifest.json is missing.*make governance-weights"):
        SemanticModel.load(get_settings().var_dir, artifact_dir=copy)


def test_an_altered_artifact_is_refused(copy: Path) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    head = copy / manifest["files"]["head"]["name"]
    data = bytearray(head.read_bytes())
    data[-9] ^= 0x01  # one bit of the head's weights: same size, another sha256
    head.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{head.name} \\(head\\) does not match its manifest"):
        artifacts.load_manifest(copy, serving_settings())


def test_a_missing_artifact_is_named(copy: Path) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    (copy / manifest["files"]["lexical"]["name"]).unlink()
    with pytest.raises(ArtifactError, match=r"\(lexical\) is missing"):
        artifacts.load_manifest(copy, serving_settings())


def test_artifacts_built_for_other_serving_code_are_refused(copy: Path) -> None:
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["serving"]["exit_layer"] = 2  # a head fitted after another layer
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="other serving settings \\(exit_layer differ"):
        artifacts.load_manifest(copy, serving_settings())
    manifest["format"] = artifacts.FORMAT + 1
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="of format"):
        artifacts.load_manifest(copy, serving_settings())


def test_the_scorer_process_refuses_to_start_without_artifacts(tmp_path: Path) -> None:
    """Start-up as the Serve deployment does it, in a process of its own, pointed by the
    environment at an empty artifact directory: a clear ArtifactError, no training."""
    env = {
        "PROMETHIOS_GOVERNANCE_ARTIFACTS": str(tmp_path),
        "PROMETHIOS_VAR_DIR": str(tmp_path / "var"),
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
    }
    code = (
        "from serve_app.governance.semantic import default_semantic\n"
        "try:\n    default_semantic()\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
        "import sys\n"
        "print('training imported:', any(m.startswith('training') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert f"ArtifactError no governance artifacts in {tmp_path}" in out.stdout, out.stderr[-2000:]
    assert "training imported: False" in out.stdout


def test_serving_loads_without_importing_training() -> None:
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from serve_app.governance.semantic import SemanticModel\n"
        f"m = SemanticModel.load(Path({str(get_settings().var_dir)!r}))\n"
        "assert m.classify(['hello'])[0].flagged is None\n"
        "print(sorted(k for k in sys.modules if k == 'training' or k.startswith('training.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.stdout.strip().endswith("[]"), out.stdout + out.stderr[-2000:]


def test_the_served_operating_point_is_the_manifests(semantic: SemanticModel) -> None:
    manifest = semantic.manifest
    assert manifest is not None
    chosen = manifest.thresholds
    by_budget = {float(k): v for k, v in chosen["classifier"]["by_budget"].items()}
    assert sorted(by_budget) == sorted(BENIGN_FPR_BUDGETS)
    assert semantic.classifier.by_budget == by_budget
    assert semantic.classifier.threshold == by_budget[chosen["classifier"]["default_budget"]]
    assert semantic.exit_head is not None and semantic.lexical is not None
    assert semantic.exit_head.threshold == chosen["exit"]
    assert semantic.lexical.threshold == chosen["lexical"]
    # The head served is the file's, as the verdict reads it.
    with np.load(manifest.path("head")) as z:
        assert np.array_equal(z["w"], semantic.classifier.w)


def test_shipped_artifacts_are_the_current_training_datas(tmp_path: Path) -> None:
    """Builds into an empty directory: every file is found among the current artifacts by
    its cache key (nothing trains), so the build gives the very same files; a change to
    the data or a setting changes a key, and this fails until `make governance-weights`
    has shipped the new build."""
    from training import build, finetune

    def no_training(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError(
            "the shipped artifacts are not the current training data's: run "
            "`make governance-weights` and commit serve_app/governance/data/artifacts/"
        )

    mp = pytest.MonkeyPatch()
    try:
        from training import exit_fit, lexical_fit

        mp.setattr(finetune, "fine_tune", no_training)
        mp.setattr(finetune, "refit_head", no_training)
        mp.setattr(exit_fit, "fit", no_training)
        mp.setattr(lexical_fit, "fit", no_training)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "harm-v4-0123456789abcdef.pt").write_bytes(b"an earlier build's")
        built = build.build(get_settings().var_dir, tmp_path / "out")
    finally:
        mp.undo()
    shipped = artifacts.load_manifest(ARTIFACT_DIR, serving_settings())
    for role in ROLES:
        assert built.data["files"][role] == shipped.data["files"][role], role
    assert built.build_id == shipped.build_id
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [built.data["files"][r]["name"] for r in ROLES] + [MANIFEST_NAME]
    )  # the earlier build's file is gone
    # Chosen on this machine's int8 embeddings: the same operating points within a step.
    for budget, t in shipped.thresholds["classifier"]["by_budget"].items():
        assert abs(built.thresholds["classifier"]["by_budget"][budget] - t) <= 0.0201, budget
