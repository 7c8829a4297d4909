"""The Containerfile builds the image deploy/kubernetes runs, and the two agree: the user, the ports, the state
directory, the entrypoint and every PREDSERVE_ variable. Base images cannot be pulled here, so the image is
not built; its file is read as the builder would read it."""

from __future__ import annotations

import fnmatch
import json
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pytest

from predserve.server.config import parse_config
from predserve.server.options import OPTIONS
from tests.support import PROJECT_ROOT
from tests.test_deploy import by_kind

CONTAINERFILE = PROJECT_ROOT / "Containerfile"
IGNORE_FILE = PROJECT_ROOT / ".dockerignore"  # podman reads it too, when there is no .containerignore
GRPC_PORT, METRICS_PORT = 50051, 9464


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [argument for word, argument in self.instructions if word == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for argument in self.all("ENV"):
            for pair in shlex.split(argument):
                name, _, value = pair.partition("=")
                values[name] = value
        return values


def stages(text: str) -> list[Stage]:
    """The build stages of a Containerfile: continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    found: list[Stage] = []
    for line in logical:
        keyword, _, argument = line.strip().partition(" ")
        keyword, argument = keyword.upper(), argument.strip()
        if keyword == "FROM":
            words = argument.split()
            found.append(Stage(words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None))
        elif found:
            found[-1].instructions.append((keyword, argument))
    return found


@pytest.fixture(scope="module")
def image() -> list[Stage]:
    return stages(CONTAINERFILE.read_text())


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    (deployment,) = by_kind("Deployment")
    return deployment["spec"]["template"]


def container_of(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["spec"]["containers"]
    return container


def test_it_is_multi_stage_with_the_server_extra(image: list[Stage]) -> None:
    build, runtime = image
    assert build.name and runtime.base == build.base  # the venv's interpreter is the same in both
    assert any("[server]" in run for run in build.all("RUN"))
    assert any("scripts/generate_protos.py" in run for run in build.all("RUN"))  # bindings are not committed
    assert all(copy.startswith(f"--from={build.name} ") for copy in runtime.all("COPY"))


def test_user_ports_and_entrypoint_match_the_deployment(image: list[Stage], pod: dict[str, Any]) -> None:
    runtime = image[-1]
    (user,) = runtime.all("USER")
    uid, _, gid = user.partition(":")
    security = pod["spec"]["securityContext"]
    assert uid == str(security["runAsUser"]) == "10001" and gid == str(security["runAsGroup"])
    assert security["runAsNonRoot"] is True

    assert json.loads(runtime.all("ENTRYPOINT")[0]) == ["predserve-server"]
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["predserve-server"] == "predserve.server.__main__:main"

    exposed = {int(port) for argument in runtime.all("EXPOSE") for port in argument.split()}
    container = container_of(pod)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert exposed == set(ports.values()) == {GRPC_PORT, METRICS_PORT}
    assert ports["grpc"] == GRPC_PORT == int(runtime.env()["PREDSERVE_PORT"])
    assert ports["metrics"] == METRICS_PORT == int(runtime.env()["PREDSERVE_METRICS_PORT"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREDSERVE_METRICS_PORT"] == str(METRICS_PORT)
    assert pod["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    assert runtime.env()["PREDSERVE_HOST"] == "0.0.0.0" and "--host=0.0.0.0" in container["args"]


def test_state_lives_under_the_volume_and_the_root_is_read_only(image: list[Stage], pod: dict[str, Any]) -> None:
    runtime = image[-1]
    (volume,) = [PurePosixPath(v) for argument in runtime.all("VOLUME") for v in json.loads(argument)]
    env = runtime.env()
    models, database = PurePosixPath(env["PREDSERVE_MODELS_DIR"]), PurePosixPath(env["PREDSERVE_DB"])
    assert volume in models.parents and volume in database.parents
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # a read-only root: no .pyc written at import
    assert any(f"-o 10001 -g 10001 -m 0700 {volume} {models}" in run for run in runtime.all("RUN"))

    container = container_of(pod)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(models) in mounts and "/tmp" in mounts  # the only places the server and Python write
    assert f"--models-dir={models}" in container["args"]


def test_every_variable_and_flag_is_one_the_server_reads(image: list[Stage], pod: dict[str, Any]) -> None:
    container = container_of(pod)
    names = {name for name in image[-1].env() if name.startswith("PREDSERVE_")}
    names |= {e["name"] for e in container["env"]}
    option_names = {option.env for option in OPTIONS}
    for name in sorted(names - option_names):  # the secrets, read from the environment only
        sentinel = "s" * 32
        assert parse_config([], env={name: sentinel}) != parse_config([], env={}), f"{name} is read by nothing"
    flags = {argument.partition("=")[0] for argument in container["args"]}
    assert flags <= {option.flag for option in OPTIONS}


def test_the_image_name_is_the_one_the_readme_builds(pod: dict[str, Any]) -> None:
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    image = container_of(pod)["image"]
    assert image == f"registry.example.com/predserve:{version}"
    readme = (PROJECT_ROOT / "docs" / "deployment.md").read_text()
    assert f"podman build -f Containerfile -t {image} ." in readme
    assert f"-t {image}" in CONTAINERFILE.read_text()


def test_what_the_build_copies_is_in_the_context(image: list[Stage]) -> None:
    ignored = [line.strip() for line in IGNORE_FILE.read_text().splitlines() if line.strip() and line[0] != "#"]
    sources = [
        source
        for stage in image
        for copy in stage.all("COPY")
        if not copy.startswith("--from=")
        for source in copy.split()[:-1]
    ]
    assert "db/migrations/" in sources and "protos/" in sources
    for source in sources:
        path = source.rstrip("/")
        assert (PROJECT_ROOT / path).exists(), source
        assert not any(fnmatch.fnmatch(path, pattern) for pattern in ignored), f"{source} is in {IGNORE_FILE.name}"
    assert "protos/*_pb2*.py" in ignored  # the build stage generates them from the .proto files


def test_the_parser_reads_a_containerfile_as_written() -> None:
    text = "# c\nARG X=1\nFROM a AS b\nENV A=1 \\\n    B='two words'\nFROM c\nUSER 1:2\n"
    first, second = stages(text)
    assert (first.base, first.name, first.env()) == ("a", "b", {"A": "1", "B": "two words"})
    assert (second.base, second.name, second.all("USER")) == ("c", None, ["1:2"])


def test_the_ignore_file_keeps_local_state_out() -> None:
    ignored = IGNORE_FILE.read_text().split()
    for local in (".venv", "models", "db/*.db", ".git"):
        assert local in ignored
    assert not (PROJECT_ROOT / ".containerignore").exists()  # it would shadow .dockerignore for podman
