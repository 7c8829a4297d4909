"""PredserveClient: typed calls to a predserve server, with deadlines and retries on UNAVAILABLE.

One client can spread its calls over several replicas: give it several targets, or one `dns:///` name
that resolves to all of them. gRPC then balances round robin over the replicas whose health service
says SERVING, so a replica that is stopping (NOT_SERVING) stops receiving calls before it goes away.

Credentials not passed in come from the environment: PREDSERVE_TOKEN (or a file named by
PREDSERVE_TOKEN_FILE) is sent as `authorization: Bearer <token>`; PREDSERVE_CA, PREDSERVE_CERT and
PREDSERVE_KEY name PEM files for TLS (the CA bundle to trust, and a client certificate and key).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import predserve_pb2 as pb
from protos import predserve_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

TargetValue = str | int | float

# gRPC retries these calls itself on UNAVAILABLE (a restarting server, a dropped connection) and on
# CANCELLED sent by the server: a call that reaches a server just after its shutdown began is cancelled
# by gRPC core before any handler runs (these handlers never answer CANCELLED themselves), and with
# several replicas the retry goes to another one. Train and IngestHistory are left out: they are not
# idempotent, and a retry could train twice.
_RETRIED_METHODS = ("Predict", "ListModels", "ListPredictionSets")


# The service whose health decides whether a replica gets calls (client-side health checking, in gRPC core).
HEALTH_SERVICE = "predserve.v1.Predserve"


# Targets that may name several replicas, and get round robin with health checking. One plain HOST:PORT
# keeps gRPC's pick_first: round robin reconnects a lost server on its own backoff schedule, so after a
# restart of the only server calls would fail for seconds longer than with pick_first, which reconnects
# as soon as a call asks.
BALANCED_SCHEMES = ("ipv4:", "ipv6:", "dns:")


def _service_config(max_attempts: int, balanced: bool) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    if max_attempts > 1:  # gRPC accepts a retry policy of two attempts or more only
        config["methodConfig"] = [
            {
                "name": [{"service": "predserve.v1.Predserve", "method": m} for m in _RETRIED_METHODS]
                + [{"service": "grpc.health.v1.Health"}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
                },
            }
        ]
    return config


# Promotion policies by the names the CLI uses.
PROMOTION_POLICIES = {
    "always": pb.PROMOTE_ALWAYS,
    "register-only": pb.REGISTER_ONLY,
    "if-better": pb.PROMOTE_IF_BETTER,
}


class PredserveClientError(Exception):
    """A call failed; `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class NotFoundError(PredserveClientError):
    pass


class InvalidArgumentError(PredserveClientError):
    pass


class FailedPreconditionError(PredserveClientError):
    pass


class UnavailableError(PredserveClientError):
    pass


class UnauthenticatedError(PredserveClientError):
    """No token, or not one the server knows."""


class PermissionDeniedError(PredserveClientError):
    """A known token that may not call this method (the predict token calling Train)."""


class ResourceExhaustedError(PredserveClientError):
    """A server limit was exceeded; the details name it."""


class DataLossError(PredserveClientError):
    """The server's stored data is damaged (a corrupted database page); the details name the file."""


_ERROR_BY_CODE: dict[grpc.StatusCode, type[PredserveClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
}


def _error(exc: grpc.RpcError) -> PredserveClientError:
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details() or ""  # type: ignore[attr-defined]
    return _ERROR_BY_CODE.get(code, PredserveClientError)(code, details)


def channel_target(targets: str | Sequence[str]) -> str:
    """One gRPC target for one server, a DNS name, or several servers (comma-separated or a list).

    Several servers must be IP addresses, gRPC's `ipv4:`/`ipv6:` list syntax; for host names, give one
    DNS name that resolves to every replica, with the scheme (`dns:///predserve-headless:50051`): those
    targets are balanced round robin over the healthy replicas, a plain HOST:PORT is one server.
    """
    parts = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [t.strip() for t in targets]
    parts = [t for t in parts if t]
    if not parts:
        raise ValueError("no target given")
    for part in parts:
        _check_port(part)
    if len(parts) == 1 or (isinstance(targets, str) and targets.startswith(("ipv4:", "ipv6:"))):
        return targets if isinstance(targets, str) else parts[0]
    addresses = [_split_address(part) for part in parts]
    families = {type(ip) for ip, _ in addresses}
    if len(families) != 1:
        raise ValueError(f"several targets must all be IPv4 or all IPv6 addresses: {', '.join(parts)}")
    if families == {ipaddress.IPv6Address}:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in addresses)
    return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in addresses)


class TargetPortError(ValueError):
    """A target whose port is not 1..65535 (gRPC would dial the port modulo 65536)."""


def _check_port(target: str) -> None:
    """Refuses a port outside 1..65535 in HOST:PORT, [IPv6]:PORT, dns:///HOST:PORT or ipv4:A:P,B:P.

    A target without a port (gRPC's default is 443), a bare IPv6 address or a unix: socket passes.
    """
    scheme, _, rest = target.partition(":")
    if scheme in ("unix", "unix-abstract", "vsock"):
        return
    if scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    elif rest.startswith("//"):  # scheme://authority/endpoint
        addresses = [rest[2:].partition("/")[2]]
    else:
        addresses = [rest if scheme == "dns" else target]
    for address in addresses:
        port = _port_text(address)
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise TargetPortError(f"target {target!r}: port {port} is not in 1..65535")


def _port_text(address: str) -> str:
    if address.startswith("["):
        return address.partition("]")[2].removeprefix(":")
    return address.rpartition(":")[2] if address.count(":") == 1 else ""


def _split_address(target: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, _, port = target.rpartition(":")
    try:
        return ipaddress.ip_address(host.strip("[]")), int(port)
    except ValueError:
        raise ValueError(
            f"target {target!r}: several targets must be IP:PORT; for host names give one DNS name "
            "that resolves to every replica"
        ) from None


def target_value(target: pb.Target) -> TargetValue | None:
    which = target.WhichOneof("value")
    return None if which is None else getattr(target, which)


def target_message(value: TargetValue) -> pb.Target:
    if isinstance(value, str):
        return pb.Target(label=value)
    if isinstance(value, int) and not isinstance(value, bool):
        return pb.Target(integer=value)
    return pb.Target(number=float(value))


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """PREDSERVE_TOKEN, or the contents of the file PREDSERVE_TOKEN_FILE names."""
    env = os.environ if env is None else env
    if env.get("PREDSERVE_TOKEN"):
        return env["PREDSERVE_TOKEN"].strip()
    if env.get("PREDSERVE_TOKEN_FILE"):
        return read_token(Path(env["PREDSERVE_TOKEN_FILE"]))
    return None


def read_token(path: Path) -> str:
    return path.read_text().strip()


class PredserveClient:
    """One channel to one server or to several replicas (see channel_target). Use as a context manager,
    or call close().

    TLS is used when `tls` is true or any of `ca`, `cert`, `key` is given (system roots without `ca`).
    """

    def __init__(
        self,
        target: str | Sequence[str],
        deadline_seconds: float = 30.0,
        max_attempts: int = 5,
        train_deadline_seconds: float = 600.0,
        *,
        token: str | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        tls: bool = False,
    ) -> None:
        self.target = channel_target(target)
        self.deadline = deadline_seconds
        self.train_deadline = train_deadline_seconds
        token = token if token is not None else token_from_env()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        ca = ca or _env_path("PREDSERVE_CA")
        cert = cert or _env_path("PREDSERVE_CERT")
        key = key or _env_path("PREDSERVE_KEY")
        service_config = _service_config(max_attempts, self.target.startswith(BALANCED_SCHEMES))
        options: list[tuple[str, str | int]] = [
            ("grpc.enable_retries", 1 if max_attempts > 1 else 0),
            # gRPC waits up to 120 s between attempts to reach a server that was down; a restarted replica
            # is back in seconds, so try again at least every second instead.
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if service_config:
            options.append(("grpc.service_config", json.dumps(service_config)))
        if tls or ca or cert or key:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes() if ca else None,
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None,
            )
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        else:
            if token and not _is_loopback(self.target):
                logger.warning("sending a bearer token to %s without TLS: anyone on the path can read it", self.target)
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._stub = pb_grpc.PredserveStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> PredserveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, deadline: float | None = None) -> Any:
        try:
            return method(request, timeout=deadline or self.deadline, wait_for_ready=False, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"no server at {self.target}") from None

    def ingest(
        self,
        dataset: str,
        rows: Iterable[tuple[Sequence[float], TargetValue]],
        feature_names: Sequence[str] = (),
        batch_size: int = 500,
    ) -> pb.IngestHistoryResponse:
        def messages() -> Iterator[pb.IngestHistoryRequest]:
            batch: list[pb.Row] = []
            first = True
            for features, target in rows:
                batch.append(pb.Row(features=features, target=target_message(target)))
                if len(batch) >= batch_size:
                    yield pb.IngestHistoryRequest(
                        dataset=dataset, feature_names=feature_names if first else (), rows=batch
                    )
                    batch, first = [], False
            if batch or first:
                yield pb.IngestHistoryRequest(dataset=dataset, feature_names=feature_names if first else (), rows=batch)

        return self._call(self._stub.IngestHistory, messages(), self.train_deadline)

    def promote(self, prediction_set_id: int) -> pb.PromoteResponse:
        return self._call(self._stub.Promote, pb.PromoteRequest(prediction_set_id=prediction_set_id))

    def rollback(self, model_type: str) -> pb.PromoteResponse:
        return self._call(self._stub.Promote, pb.PromoteRequest(rollback_model_type=model_type))

    def import_model(
        self, model_type: str, artifact: bytes, dataset: str = "", promotion: str = "always", chunk_size: int = 1 << 20
    ) -> pb.TrainResponse:
        """Registers a joblib file trained elsewhere; streamed in chunks, so size is not bound by message limits."""
        policy = PROMOTION_POLICIES[promotion]

        def messages() -> Iterator[pb.ImportModelRequest]:
            yield pb.ImportModelRequest(model_type=model_type, dataset=dataset, promotion=policy)
            for offset in range(0, len(artifact), chunk_size):
                yield pb.ImportModelRequest(chunk=artifact[offset : offset + chunk_size])

        return self._call(self._stub.ImportModel, messages(), self.train_deadline)

    def garbage_collect(self, keep: int, dry_run: bool = False, model_type: str = "") -> pb.GarbageCollectResponse:
        request = pb.GarbageCollectRequest(keep=keep, dry_run=dry_run, model_type=model_type)
        return self._call(self._stub.GarbageCollect, request)

    def train(
        self,
        model_type: str,
        dataset: str = "",
        algorithm: str = "",
        params: Mapping[str, Any] | None = None,
        test_fraction: float = 0.0,
        random_seed: int = 0,
        promotion: str = "always",
    ) -> pb.TrainResponse:
        request = pb.TrainRequest(
            model_type=model_type,
            algorithm=algorithm,
            dataset=dataset,
            params={k: str(v) for k, v in (params or {}).items()},
            test_fraction=test_fraction,
            random_seed=random_seed,
            promotion=PROMOTION_POLICIES[promotion],
        )
        return self._call(self._stub.Train, request, self.train_deadline)

    def predict(
        self,
        model_type: str,
        rows: Sequence[Sequence[float]],
        prediction_set_id: int = 0,
        include_probabilities: bool = False,
    ) -> pb.PredictResponse:
        request = pb.PredictRequest(
            model_type=model_type,
            rows=[pb.Row(features=row) for row in rows],
            prediction_set_id=prediction_set_id,
            include_probabilities=include_probabilities,
        )
        return self._call(self._stub.Predict, request)

    def list_models(self) -> pb.ListModelsResponse:
        return self._call(self._stub.ListModels, pb.ListModelsRequest())

    def list_prediction_sets(self, model_type: str) -> pb.ListPredictionSetsResponse:
        return self._call(self._stub.ListPredictionSets, pb.ListPredictionSetsRequest(model_type=model_type))

    def health(self, service: str = "") -> str:
        response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _is_loopback(target: str) -> bool:
    """Whether every address of a target (one, or gRPC's ipv4:/ipv6: list) is a loopback one."""
    addresses = target.split(":", 1)[1] if target.startswith(("ipv4:", "ipv6:")) else target
    return all(_is_loopback_address(address) for address in addresses.split(","))


def _is_loopback_address(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
