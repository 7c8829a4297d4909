"""Secrets from the environment, the start-up warnings, and the token rules for a non-loopback address.

A server is never bound to anything but 127.0.0.1 in these tests, so what differs on an exposed
address is checked on the configuration and the policy themselves.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from predserve.server.api.auth import AuthPolicy, Role, required_role
from predserve.server.config import parse_config
from predserve.server.security import security_warnings


def test_tokens_and_key_come_from_the_environment_or_files_and_stay_out_of_repr(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef0123\n")
    config = parse_config(
        [],
        env={
            "PREDSERVE_ADMIN_TOKEN": "admin-secret-1",
            "PREDSERVE_PREDICT_TOKEN": "predict-secret-2",
            "PREDSERVE_ARTIFACT_HMAC_KEY_FILE": str(key_file),
        },
    )
    assert (config.admin_token, config.predict_token) == ("admin-secret-1", "predict-secret-2")
    assert config.artifact_hmac_key == b"0123456789abcdef0123"
    assert "secret" not in repr(config) and "0123456789" not in repr(config)


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"PREDSERVE_ADMIN_TOKEN": "a", "PREDSERVE_ADMIN_TOKEN_FILE": "/x"}, [], "not both"),
        ({"PREDSERVE_ADMIN_TOKEN": "  "}, [], "PREDSERVE_ADMIN_TOKEN is set but empty"),
        ({"PREDSERVE_PREDICT_TOKEN": "has space"}, [], "printable ASCII without spaces"),
        ({"PREDSERVE_ADMIN_TOKEN": "same", "PREDSERVE_PREDICT_TOKEN": "same"}, [], "must differ"),
        ({"PREDSERVE_ARTIFACT_HMAC_KEY": "short"}, [], "at least 16 bytes"),
        ({"PREDSERVE_ADMIN_TOKEN_FILE": "/nonexistent/token"}, [], "cannot read PREDSERVE_ADMIN_TOKEN_FILE"),
        ({}, ["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        ({}, ["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
        ({}, ["--max-rows-per-request", "0"], "--max-rows-per-request must be positive"),
    ],
)
def test_bad_security_settings_stop_the_server(
    env: dict[str, str], argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_config(argv, env=env)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_an_exposed_address_without_protection_gets_a_warning_per_risk() -> None:
    assert security_warnings(parse_config([], env={})) == []
    assert security_warnings(parse_config(["--host", "::1"], env={})) == []

    warnings = security_warnings(parse_config(["--host", "0.0.0.0"], env={}))
    assert len(warnings) == 3
    assert warnings[0].startswith("serving on 0.0.0.0 without TLS: requests, predictions and bearer tokens")
    assert "are allowed without a token only on a loopback address" in warnings[1]
    assert "Train, IngestHistory, Promote, ImportModel, GarbageCollect" in warnings[1]
    assert "Predict and the model listings answer anyone who can reach the port" in warnings[2]

    protected = parse_config(
        ["--host", "0.0.0.0", "--tls-cert", "c.pem", "--tls-key", "k.pem"],
        env={"PREDSERVE_ADMIN_TOKEN": "admin-token", "PREDSERVE_PREDICT_TOKEN": "predict-token"},
    )
    assert security_warnings(protected) == []


def test_without_an_admin_token_admin_methods_are_refused_off_loopback() -> None:
    exposed = AuthPolicy(admin_token=None, predict_token="p", open_admin_without_token=False)
    denial = exposed.check("/predserve.v1.Predserve/Train", "Bearer p")
    assert denial is not None and denial.code is grpc.StatusCode.PERMISSION_DENIED
    assert denial.details == (
        "/predserve.v1.Predserve/Train is refused: no admin token is configured (PREDSERVE_ADMIN_TOKEN) "
        "and the server is not bound to a loopback address"
    )
    assert exposed.check("/predserve.v1.Predserve/Predict", "Bearer p") is None
    assert AuthPolicy(open_admin_without_token=True).check("/predserve.v1.Predserve/Train", None) is None


def test_the_role_table_matches_methods_then_services_and_fails_closed() -> None:
    assert required_role("/inference.GRPCInferenceService/ModelInfer") is Role.PREDICT
    assert required_role("/inference.GRPCInferenceService/ServerLive") is Role.OPEN
    assert required_role("/inference.GRPCInferenceService/RepositoryModelLoad") is Role.ADMIN
    assert required_role("/grpc.health.v1.Health/Watch") is Role.OPEN
    assert required_role("/predserve.v1.Predserve/ImportModel") is Role.ADMIN
    assert required_role("/predserve.v1.Predserve/Rollback") is Role.ADMIN  # not listed: admin only
    assert required_role("/predserve.v1.Predserve/PredictAndPromote") is Role.ADMIN
