"""--workers N: one port served by N forked processes that share the models loaded before the fork.

The parent loads every model, reserves the port, then forks; each child builds its own gRPC server
(no gRPC object may exist before a fork) bound with SO_REUSEPORT, and its own live reloader, which
is what keeps the children consistent after a Train or Promote in any one of them. A child, first
or replacement, syncs with the database before it binds (app.serve): its copy of the models is the
parent's start-up copy, which may be many sets old. The parent only supervises: it forwards SIGTERM
and replaces a child that dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection

from predserve.server.settings import ServerConfig

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
Worker = Callable[[int, Callable[[int], None]], int]


def reserve_port(host: str, port: int) -> int:
    """Proves the port is free (no SO_REUSEPORT here, so any listener makes this fail) and returns it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot bind {host}:{port}: {exc.strerror}") from exc
        return int(probe.getsockname()[1])


def serve(
    config: ServerConfig,
    run_worker: Worker,
    write_port_file: Callable[[int], None],
    before_ready: Callable[[Callable[[], Collection[int]]], None] = lambda workers: None,
    after_exit: Callable[[int], None] = lambda pid: None,
) -> int:
    """before_ready gets a function listing the live workers' pids, once every first worker serves (the
    metrics endpoint starts there); after_exit is told of every worker that exited."""
    port = reserve_port(config.host, config.port)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    ready_read, ready_write = os.pipe()
    children = {_spawn(run_worker, port, ready_write): index for index in range(config.workers)}
    try:
        for _ in range(config.workers):
            os.read(ready_read, 1)
        before_ready(lambda: tuple(children))
        write_port_file(port)
        logger.info(
            "predserve ready on %s:%d with %d worker processes",
            config.host,
            port,
            config.workers,
            extra={"event": "ready", "port": port, "workers": config.workers},
        )
        while not stopping.is_set():
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid and pid in children and not stopping.is_set():
                logger.error("worker %d exited (status %d); starting a replacement", pid, status, extra={"worker": pid})
                after_exit(pid)
                children[_spawn(run_worker, port, ready_write)] = children.pop(pid)
            time.sleep(0.2)
    finally:
        logger.info("stopping %d worker processes", len(children), extra={"event": "shutdown"})
        for pid in children:
            _signal(pid, signal.SIGTERM)
        for pid in children:
            _wait(pid)
            after_exit(pid)
    logger.info("stopped", extra={"event": "stopped"})
    return 0


def _spawn(run_worker: Worker, port: int, ready_write: int) -> int:
    pid = os.fork()
    if pid == 0:
        _die_with_parent()

        def report_ready(_port: int) -> None:
            os.write(ready_write, b"r")

        try:
            code = run_worker(port, report_ready)
        except BaseException:
            logger.exception("worker failed")
            code = 1
        os._exit(code)
    return pid


def _die_with_parent() -> None:
    """A worker must not outlive a parent killed with SIGKILL, or it would go on holding the port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        logger.warning("cannot ask the kernel to stop this worker with its parent (not Linux?)")


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
