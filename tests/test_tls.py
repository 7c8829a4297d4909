"""TLS and mutual TLS: real handshakes with a throw-away CA against a real server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from predserve.client.library import PredserveClientError
from tests.certificates import Pki, make_pki
from tests.support import PROJECT_ROOT, ServerProcess


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    process = ServerProcess(tmp_path_factory.mktemp("tls"), extra_args=args).start()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]
    process = ServerProcess(tmp_path_factory.mktemp("mtls"), extra_args=args).start()
    yield process
    process.kill()


def refused(server: ServerProcess, **credentials: object) -> PredserveClientError:
    with server.client(max_attempts=2, deadline_seconds=10, **credentials) as client:
        with pytest.raises(PredserveClientError) as error:
            client.list_models()
    return error.value


def test_tls_server_answers_a_client_that_trusts_its_ca(tls_server: ServerProcess, pki: Pki) -> None:
    with tls_server.client(ca=pki.ca) as client:
        assert client.health() == "SERVING"
        assert list(client.list_models().models) == []
    assert "TLS on" in tls_server.log()


def test_tls_server_is_refused_by_clients_that_cannot_verify_it(tls_server: ServerProcess, pki: Pki) -> None:
    plain = refused(tls_server)
    assert plain.code is grpc.StatusCode.UNAVAILABLE
    assert "failed to connect" in plain.details or "Socket closed" in plain.details, plain.details

    stranger = refused(tls_server, ca=pki.stranger_ca)
    assert stranger.code is grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in stranger.details, stranger.details


def test_mutual_tls_answers_a_client_with_a_certificate_from_its_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    with mtls_server.client(ca=pki.ca, cert=pki.client_cert, key=pki.client_key) as client:
        assert client.health() == "SERVING"
    assert "TLS mutual" in mtls_server.log()


def test_mutual_tls_refuses_a_client_without_an_accepted_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    anonymous = refused(mtls_server, ca=pki.ca)
    assert anonymous.code is grpc.StatusCode.UNAVAILABLE
    assert "failed to connect" in anonymous.details or "Socket closed" in anonymous.details, anonymous.details

    stranger = refused(mtls_server, ca=pki.ca, cert=pki.stranger_cert, key=pki.stranger_key)
    assert stranger.code is grpc.StatusCode.UNAVAILABLE


def test_cli_speaks_mutual_tls(mtls_server: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "predserve.client", "--target", mtls_server.target, "--ca", str(pki.ca)]
    with_cert = base + ["--cert", str(pki.client_cert), "--key", str(pki.client_key), "health"]
    accepted = subprocess.run(with_cert, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert (accepted.returncode, accepted.stdout.strip()) == (0, "SERVING"), accepted.stderr

    missing = subprocess.run(
        base + ["--cert", str(tmp_path / "absent.pem"), "health"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr and "absent.pem" in missing.stderr
