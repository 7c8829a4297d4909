"""How a client reaches predserve: targets, the channel's options and service config, credentials.

Both clients open their one channel from a ChannelSettings built here, with grpc or grpc.aio: the same
target syntax, keepalive, retry policy, round robin, client-side health checking, TLS and token.

Credentials not passed in come from the environment: PREDSERVE_TOKEN (or a file named by
PREDSERVE_TOKEN_FILE) is sent as `authorization: Bearer <token>`; PREDSERVE_CA, PREDSERVE_CERT and
PREDSERVE_KEY name PEM files for TLS (the CA bundle to trust, and a client certificate and key).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

logger = logging.getLogger(__name__)

# The service whose health decides whether a replica gets calls (client-side health checking, in gRPC core).
HEALTH_SERVICE = "predserve.v1.Predserve"

# Targets that may name several replicas, and get round robin with health checking. One plain HOST:PORT
# keeps gRPC's pick_first: round robin reconnects a lost server on its own backoff schedule, so after a
# restart of the only server calls would fail for seconds longer than with pick_first, which reconnects
# as soon as a call asks.
BALANCED_SCHEMES = ("ipv4:", "ipv6:", "dns:")

# Keepalive: an idle connection must not be dropped silently by what sits between client and server. Load
# balancers and NAT forget a TCP flow that carries nothing for a while: AWS NLB after 350 s, GCP's after 600 s,
# Azure's after 4 min, many L4 proxies (HAProxy, Envoy set-ups) after 60 s. A forgotten flow is not closed,
# so the next call on it waits for its whole deadline. A ping every 20 s keeps every one of those flows alive,
# even one that forgets after a minute, and an unanswered ping closes the connection after 10 s more, so a
# dead path is noticed within 30 s rather than at the next call's deadline; then gRPC reconnects.
# Pings are sent also while no call is in flight (the idle case is the one that matters), and without limit
# on pings between data frames. The server must allow it: gRPC's server default treats a ping without calls,
# or one sooner than 5 minutes after the previous one, as abuse, and at the third such "strike" closes the
# connection with GOAWAY "too_many_pings", failing the calls in flight. So predserve's server (server/app.py)
# sets grpc.keepalive_permit_without_calls=1 and grpc.http2.min_ping_interval_without_data_ms=10000: half
# this interval, room for timer jitter. tests/test_client_keepalive.py checks that the two agree.
KEEPALIVE_SECONDS = 20.0
KEEPALIVE_TIMEOUT_SECONDS = 10.0

# gRPC waits up to 120 s between attempts to reach a server that was down; a restarted replica is back in
# seconds, so try again at least every second instead.
MAX_RECONNECT_BACKOFF_MS = 1000


class TargetPortError(ValueError):
    """A target whose port is not 1..65535 (gRPC would dial the port modulo 65536)."""


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


def service_config(retried_methods: Iterable[tuple[str, str]], max_attempts: int, balanced: bool) -> dict[str, Any]:
    """gRPC's service config: round robin with health checking for balanced targets, and the retry policy.

    gRPC retries the given (service, method) pairs itself on UNAVAILABLE (a restarting server, a dropped
    connection) and on CANCELLED sent by the server: a call that reaches a server just after its shutdown
    began is cancelled by gRPC core before any handler runs (predserve's handlers never answer CANCELLED
    themselves), and with several replicas the retry goes to another one.
    """
    config: dict[str, Any] = {}
    if balanced:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    if max_attempts > 1:  # gRPC accepts a retry policy of two attempts or more only
        config["methodConfig"] = [
            {
                "name": [{"service": service, "method": method} for service, method in retried_methods]
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


def channel_options(
    config: Mapping[str, Any], max_attempts: int, keepalive_seconds: float | None = KEEPALIVE_SECONDS
) -> list[tuple[str, str | int]]:
    """The channel arguments; `keepalive_seconds=None` sends no keepalive pings at all."""
    options: list[tuple[str, str | int]] = [
        ("grpc.enable_retries", 1 if max_attempts > 1 else 0),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if keepalive_seconds is not None:
        options += [
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    if config:
        options.append(("grpc.service_config", json.dumps(config)))
    return options


class ChannelModule(Protocol):
    """What both `grpc` and `grpc.aio` offer to open a channel."""

    def insecure_channel(self, target: str, options: Any = ...) -> Any: ...

    def secure_channel(self, target: str, credentials: grpc.ChannelCredentials, options: Any = ...) -> Any: ...


@dataclass(frozen=True)
class ChannelSettings:
    """Everything a client's one channel is opened with, and the metadata every call carries."""

    target: str
    options: tuple[tuple[str, str | int], ...]
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def build(
        cls,
        target: str | Sequence[str],
        retried_methods: Iterable[tuple[str, str]],
        max_attempts: int,
        keepalive_seconds: float | None,
        token: str | None,
        ca: Path | None,
        cert: Path | None,
        key: Path | None,
        tls: bool,
    ) -> ChannelSettings:
        """TLS is used when `tls` is true or any of `ca`, `cert`, `key` is given (system roots without `ca`);
        what is not given comes from the environment (see the module's docstring)."""
        grpc_target = channel_target(target)
        token = token if token is not None else token_from_env()
        ca = ca or _env_path("PREDSERVE_CA")
        cert = cert or _env_path("PREDSERVE_CERT")
        key = key or _env_path("PREDSERVE_KEY")
        config = service_config(retried_methods, max_attempts, grpc_target.startswith(BALANCED_SCHEMES))
        credentials = None
        if tls or ca or cert or key:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes() if ca else None,
                private_key=key.read_bytes() if key else None,
                certificate_chain=cert.read_bytes() if cert else None,
            )
        elif token and not _is_loopback(grpc_target):
            logger.warning("sending a bearer token to %s without TLS: anyone on the path can read it", grpc_target)
        return cls(
            target=grpc_target,
            options=tuple(channel_options(config, max_attempts, keepalive_seconds)),
            credentials=credentials,
            metadata=(("authorization", f"Bearer {token}"),) if token else (),
        )

    def open(self, module: ChannelModule) -> Any:
        """The channel, from `grpc` (a grpc.Channel) or `grpc.aio` (a grpc.aio.Channel)."""
        if self.credentials is None:
            return module.insecure_channel(self.target, options=list(self.options))
        return module.secure_channel(self.target, self.credentials, options=list(self.options))


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
