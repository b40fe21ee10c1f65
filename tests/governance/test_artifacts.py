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
    # The head served is the file's, and serving reads it as training scored it.
    from training import heads

    with np.load(manifest.path("head")) as z:
        head = {k: z[k] for k in z.files}
    assert semantic.classifier.hidden is not None
    assert np.array_equal(head["w2"], semantic.classifier.w)
    assert np.array_equal(head["w1"], semantic.classifier.hidden[0])
    emb = semantic.embed(["How do I bake bread?", "How do I make a pipe bomb at home?"])
    assert np.allclose(semantic.classifier.probabilities(emb), heads.probabilities(head, emb))


def test_shipped_artifacts_are_the_current_builds(tmp_path: Path) -> None:
    """Each file is named by a key of what it was built from (our labeled set, the sources
    manifest, the settings, the encoder's served variant): a change to any of them
    renames it, and this fails until `make governance-weights` has shipped the new build.
    The public files are not needed for this check (CI has none)."""
    from training import build
    from training.labeled import dataset_hash

    manifest = artifacts.load_manifest(ARTIFACT_DIR, serving_settings())
    embedder, tuned = build.encoder(tmp_path)  # the shipped tuned layers: nothing trains
    assert tuned == ARTIFACT_DIR / manifest.data["files"]["encoder"]["name"]
    want = build.names(embedder)
    got = {role: manifest.data["files"][role]["name"] for role in ROLES}
    assert got == want, (
        "the shipped artifacts are not the current build's: run `make governance-weights` "
        "and commit serve_app/governance/data/artifacts/"
    )
    assert manifest.data["data"]["key"] == build.data_key()
    assert manifest.data["data"]["labeled_set_sha256_16"] == dataset_hash()
    # Read where shipped: nothing trained or written but the encoder's ONNX export.
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".npz", ".json")]


def test_the_data_key_follows_the_sources_manifest(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from training import build, public

    key = build.data_key()
    changed = tmp_path / "sources.yaml"
    changed.write_text(public.SOURCES_FILE.read_text().replace("count: ", "count:  ", 1))
    monkeypatch.setattr(public, "SOURCES_FILE", changed)
    assert build.data_key() != key


def test_the_shortcuts_are_off_unless_the_operator_turns_them_on(
    semantic: SemanticModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On sources the build never saw, the lexical screen and the early exit let through
    harm the classifier flags (README): by default every text is read by the classifier."""
    plain = ["Thanks, that helps a lot!", "What time does the library open on Sunday?"]
    assert semantic.lexical is None and semantic.exit_head is None
    assert [stage for _, stage in semantic.screen(plain)] == ["full", "full"]
    monkeypatch.setenv("PROMETHIOS_GOVERNANCE_SHORTCUTS", "1")
    get_settings.cache_clear()
    try:
        fast = SemanticModel.load(get_settings().var_dir)
    finally:
        monkeypatch.delenv("PROMETHIOS_GOVERNANCE_SHORTCUTS")
        get_settings.cache_clear()
    assert fast.lexical is not None and fast.exit_head is not None
    assert semantic.manifest is not None
    assert fast.exit_head.threshold == semantic.manifest.thresholds["exit"]
    assert fast.lexical.threshold == semantic.manifest.thresholds["lexical"]
    assert [stage for _, stage in fast.screen(plain)] == ["early", "lexical"]
