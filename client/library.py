"""PredserveClient: typed calls to a predserve server, with deadlines and retries on UNAVAILABLE.

One client can spread its calls over several replicas: give it several targets, or one DNS name that
resolves to all of them. gRPC then balances round robin over the replicas whose health service says
SERVING, so a replica that is stopping (NOT_SERVING) stops receiving calls before it goes away.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import predserve_pb2 as pb
from protos import predserve_pb2_grpc as pb_grpc

TargetValue = str | int | float

# gRPC retries these calls itself on UNAVAILABLE (a restarting server, a dropped connection).
# Train and IngestHistory are left out: they are not idempotent, and a retry could train twice.
_RETRIED_METHODS = ("Predict", "ListModels", "ListPredictionSets")


# The service whose health decides whether a replica gets calls (client-side health checking, in gRPC core).
HEALTH_SERVICE = "predserve.v1.Predserve"


def _service_config(max_attempts: int) -> str:
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
    }
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
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


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


_ERROR_BY_CODE: dict[grpc.StatusCode, type[PredserveClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def _error(exc: grpc.RpcError) -> PredserveClientError:
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details() or ""  # type: ignore[attr-defined]
    return _ERROR_BY_CODE.get(code, PredserveClientError)(code, details)


def channel_target(targets: str | Sequence[str]) -> str:
    """One gRPC target for one server, a DNS name, or several servers (comma-separated or a list).

    Several servers must be IP addresses, gRPC's `ipv4:`/`ipv6:` list syntax; for host names, give one
    DNS name that resolves to every replica (e.g. `dns:///predserve-headless:50051`).
    """
    parts = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else [t.strip() for t in targets]
    parts = [t for t in parts if t]
    if not parts:
        raise ValueError("no target given")
    if len(parts) == 1 or (isinstance(targets, str) and targets.startswith(("ipv4:", "ipv6:"))):
        return targets if isinstance(targets, str) else parts[0]
    addresses = [_split_address(part) for part in parts]
    families = {type(ip) for ip, _ in addresses}
    if len(families) != 1:
        raise ValueError(f"several targets must all be IPv4 or all IPv6 addresses: {', '.join(parts)}")
    if families == {ipaddress.IPv6Address}:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in addresses)
    return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in addresses)


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


class PredserveClient:
    """One channel to one server or to several replicas (see channel_target). Use as a context manager,
    or call close()."""

    def __init__(
        self,
        target: str | Sequence[str],
        deadline_seconds: float = 30.0,
        max_attempts: int = 5,
        train_deadline_seconds: float = 600.0,
    ) -> None:
        self.target = channel_target(target)
        self.deadline = deadline_seconds
        self.train_deadline = train_deadline_seconds
        options: list[tuple[str, str | int]] = [
            ("grpc.service_config", _service_config(max_attempts)),
            ("grpc.enable_retries", 1 if max_attempts > 1 else 0),
        ]
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
            return method(request, timeout=deadline or self.deadline, wait_for_ready=False)
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
