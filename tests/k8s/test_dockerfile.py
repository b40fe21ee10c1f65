"""The cluster image: the Dockerfile is what k8s/rayservice.yaml and the README say it is.

No Docker engine here, so the Dockerfile is checked structurally: a Ray GPU base image
of the Ray we develop with, the project installed with its gpu extra, a non-root user,
no secrets and no model baked in.
"""

from __future__ import annotations

import re
import sys

import pytest
import ray
import yaml

from serve_app.kuberay import IMAGE, RAY_VERSION, RAYSERVICE, REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
README = REPO / "README.md"
SECRET_NAME = re.compile(r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)($|_)|DATABASE_URL")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def env_names(args: str) -> list[str]:
    """Variable names of one ENV instruction (`A=1 B=2` or the legacy `A 1`)."""
    if "=" not in args.split()[0]:
        return [args.split()[0]]
    return [pair.split("=", 1)[0] for pair in re.findall(r"\S+=(?:\"[^\"]*\"|\S*)", args)]


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def base_image(steps: list[tuple[str, str]]) -> str:
    """The FROM image with the ARG defaults declared before it substituted."""
    args: dict[str, str] = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        if word == "FROM":
            image = rest.split()[0]
            return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)
    raise AssertionError("no FROM")


def test_base_is_the_ray_gpu_image_of_our_ray(steps: list[tuple[str, str]]) -> None:
    image = base_image(steps)
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu", image)
    assert m, f"not a rayproject/ray GPU image: {image}"
    assert m.group(1) == ray.__version__ == RAY_VERSION
    assert (int(m.group(2)), int(m.group(3))) == sys.version_info[:2]
    assert [w for w, _ in steps].count("FROM") == 1


def test_installs_the_project_with_the_gpu_extra(steps: list[tuple[str, str]]) -> None:
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert re.search(r"pip install .*['\"]?\.\[gpu\]['\"]?", runs), runs
    assert "ray==${RAY_VERSION}" in runs, "pip must keep the base image's Ray"
    copied = [
        src
        for word, rest in steps
        if word == "COPY"
        for src in [a for a in rest.split() if not a.startswith("--")][:-1]
    ]
    for src in ("pyproject.toml", "serve_app", "deployments", "configs"):
        assert src in copied
        assert (REPO / src).exists()


def test_workdir_and_non_root_user(steps: list[tuple[str, str]]) -> None:
    workdirs = [rest for word, rest in steps if word == "WORKDIR"]
    assert workdirs and workdirs[-1].startswith("/")
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_no_secrets_and_no_model_inside(steps: list[tuple[str, str]]) -> None:
    names = [n for word, rest in steps if word == "ENV" for n in env_names(rest)]
    names += [rest.split("=")[0] for word, rest in steps if word == "ARG"]
    assert not [n for n in names if SECRET_NAME.search(n.upper())], names
    for word, rest in steps:
        if word in ("COPY", "ADD"):
            assert "/models" not in rest and "var" not in rest.split(), rest
        assert not (word == "ADD" and "://" in rest), "no downloads (models) in the image"
    text = DOCKERFILE.read_text()
    assert "huggingface-cli download" not in text and "snapshot_download" not in text


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "var", "bench/results", ".git"} <= ignored


def test_rayservice_and_readme_name_the_image_we_build() -> None:
    doc = yaml.safe_load(RAYSERVICE.read_text())
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == RAY_VERSION
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    images = {c["image"] for p in pods for c in p["template"]["spec"]["containers"]}
    assert images == {IMAGE}
    readme = README.read_text()
    built = re.findall(r"docker build\b[^\n]*?-t\s+(\S+)", readme)
    pushed = re.findall(r"docker push\s+(\S+)", readme)
    assert built and pushed, "README: how to build and push the image"
    assert set(built) == set(pushed) == {IMAGE}


def test_every_way_to_start_the_graph_caps_malloc_arenas(steps: list[tuple[str, str]]) -> None:
    """The soak found replicas' resident size creeping up with glibc's default arenas."""
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert re.search(r"\bMALLOC_ARENA_MAX=2\b", env)
    assert re.search(r"^export MALLOC_ARENA_MAX \?= 2$", (REPO / "Makefile").read_text(), re.M)
    assert (
        'env.setdefault("MALLOC_ARENA_MAX", "2")' in (REPO / "harness" / "launcher.py").read_text()
    )
