"""The client's keepalive pings keep an idle connection open, and the server accepts them.

A connection whose pings the server finds too frequent is closed with GOAWAY "too_many_pings" after the
server's third strike; the channel then leaves READY. The channel here carries the client's own options
and idles for more than three ping intervals.
"""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from predserve.client.connection import KEEPALIVE_SECONDS, channel_options
from tests.support import ServerProcess

pytestmark = pytest.mark.slow


def test_an_idle_connection_keeps_pinging_without_being_sent_away(server: ServerProcess) -> None:
    states: list[tuple[float, grpc.ChannelConnectivity]] = []
    start = time.monotonic()

    def note(state: grpc.ChannelConnectivity) -> None:
        states.append((time.monotonic() - start, state))

    with grpc.insecure_channel(server.target, options=channel_options({}, max_attempts=1)) as channel:
        channel.subscribe(note, try_to_connect=True)
        # A call first, as a service's client makes before it idles (a connection that never carried a call
        # is not pinged by gRPC core at all).
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        time.sleep(KEEPALIVE_SECONDS * 3.5)  # pings at 1, 2 and 3 intervals: the third strike would end it
        channel.unsubscribe(note)
    after_ready = [state for _, state in states[[s for _, s in states].index(grpc.ChannelConnectivity.READY) :]]
    assert after_ready == [grpc.ChannelConnectivity.READY], states
