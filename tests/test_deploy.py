"""deploy/kubernetes/: every manifest is valid for Kubernetes (kubernetes-validate ships the schemas, so this
runs offline), and the manifests fit together: probes on the gRPC port, the object store and its Secret, and
the older shared-directory alternative with its ReadWriteMany claim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from predserve.client.library import HEALTH_SERVICE
from predserve.server.options import MIN_HMAC_KEY_BYTES
from tests.support import PROJECT_ROOT

KUBERNETES = PROJECT_ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(KUBERNETES.rglob("*.yaml"))
# The oldest release with gRPC probes on by default (1.27, where they went GA), and the newest the validator knows.
VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]


def documents(folder: Path = KUBERNETES) -> list[dict[str, Any]]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str, folder: Path = KUBERNETES) -> list[dict[str, Any]]:
    return [doc for doc in documents(folder) if doc["kind"] == kind]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    (deployment,) = by_kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def _secret_values(container: dict[str, Any]) -> dict[str, str]:
    """Every variable the container takes from a Secret, resolved: one that names no Secret fails here."""
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind("Secret")}
    references = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    values = {name: secrets[ref["name"]][ref["key"]] for name, ref in references.items()}
    for source in container.get("envFrom", []):
        values.update(secrets[source["secretRef"]["name"]])
    return values


def test_the_manifests_fit_together() -> None:
    """The default layout: replicas that share nothing but PostgreSQL and a bucket, each with an emptyDir cache."""
    assert not by_kind("PersistentVolumeClaim")  # no ReadWriteMany claim
    (deployment,) = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]["containerPort"]

    assert f"--port={port}" in container["args"]
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": HEALTH_SERVICE}
    assert container["livenessProbe"]["grpc"] == {"port": port}
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than --grace-seconds

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    cache = volumes[mounts["/var/lib/predserve/models"]]
    assert "emptyDir" in cache and "persistentVolumeClaim" not in cache
    assert "--models-dir=/var/lib/predserve/models" in container["args"]
    assert any(arg.startswith("--artifact-store=s3://") for arg in container["args"])
    (bound,) = [int(arg.split("=")[1]) for arg in container["args"] if arg.startswith("--cache-max-bytes=")]
    assert bound < 10 * 2**30  # below the emptyDir's sizeLimit (10Gi), past which the kubelet evicts the pod
    assert cache["emptyDir"]["sizeLimit"] == "10Gi"

    values = _secret_values(container)
    assert {"PREDSERVE_DB", "PREDSERVE_ADMIN_TOKEN", "PREDSERVE_ARTIFACT_HMAC_KEY"} <= set(values)
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(values)  # the object store's, from a Secret
    assert values["PREDSERVE_DB"].startswith("postgresql://")
    assert len(values["PREDSERVE_ARTIFACT_HMAC_KEY"].encode()) >= MIN_HMAC_KEY_BYTES

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in by_kind("Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["port"] == port
    assert any(s["spec"].get("clusterIP") == "None" for s in by_kind("Service"))  # for DNS round robin


def test_the_shared_directory_alternative_mounts_one_read_write_many_claim() -> None:
    folder = KUBERNETES / "shared-directory"
    (deployment,) = by_kind("Deployment", folder)
    (claim,) = by_kind("PersistentVolumeClaim", folder)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    artifacts = volumes[mounts["/var/lib/predserve/models"]]
    assert artifacts["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert not any(arg.startswith("--artifact-store") for arg in container["args"])
    assert {"PREDSERVE_DB", "PREDSERVE_ARTIFACT_HMAC_KEY"} <= set(_secret_values(container))
