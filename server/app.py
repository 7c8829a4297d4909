"""Bootstrap: the one place that wires concrete adapters together and tells the start-up story.

migrate the database -> load the current pipeline of every model type -> bind the port -> SERVING.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos import predserve_pb2, predserve_pb2_grpc
from server.api.auth import AuthInterceptor, AuthPolicy
from server.api.servicer import PredserveServicer
from server.api.tls import server_credentials
from server.config import ServerConfig, parse_config, security_summary, security_warnings
from server.model_store import LoadedModel, ModelStore, UnavailableModel
from server.services.history import HistoryService
from server.services.loading import LoadPolicy, ModelLoader
from server.services.prediction import PredictionService
from server.services.registry import ModelRegistryService
from server.services.training import ModelTrainingService
from server.storage.artifacts import ArtifactStore
from server.storage.database import (
    Database,
    HistoryRepository,
    MigrationRunner,
    PredictionSetRepository,
    discover_migrations,
)

logger = logging.getLogger(__name__)

SERVICE_NAME = predserve_pb2.DESCRIPTOR.services_by_name["Predserve"].full_name
MODEL_HEALTH_PREFIX = "predserve.model."
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartupError(Exception):
    """The server must not start (for instance --strict with a model that cannot be served)."""


@dataclass
class Services:
    """Everything a transport needs; also what in-process callers use."""

    store: ModelStore
    training: ModelTrainingService
    prediction: PredictionService
    registry: ModelRegistryService
    history: HistoryService


def build_services(config: ServerConfig) -> Services:
    """Migrates the database and loads every current model; no port is bound here."""
    database = Database(config.db_path, config.busy_timeout_seconds)
    database.prepare()
    database.enable_wal()
    applied = MigrationRunner(database).apply(discover_migrations(config.migrations_dir))
    logger.info("database %s ready (%d migration(s) applied now)", config.db_path, len(applied))

    artifacts = ArtifactStore(config.models_dir, config.artifact_hmac_key)
    artifacts.prepare()
    sets = PredictionSetRepository(database)
    history_repository = HistoryRepository(database)
    loader = ModelLoader(artifacts, sets, LoadPolicy(config.version_policy))
    store = ModelStore()
    loader.load_current_models(store)
    _report_orphans(artifacts, sets)
    if config.strict:
        _refuse_unservable(store)

    return Services(
        store=store,
        training=ModelTrainingService(
            history_repository,
            sets,
            artifacts,
            loader,
            store,
            max_rows=config.max_rows_per_request,
            time_limit_seconds=config.train_deadline_seconds,
        ),
        prediction=PredictionService(store, sets, loader, max_rows=config.max_rows_per_request),
        registry=ModelRegistryService(store, sets),
        history=HistoryService(history_repository, max_rows=config.max_rows_per_request),
    )


def build_server(config: ServerConfig, services: Services) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Creates the gRPC server, binds its port and starts it; raises if the port is taken."""
    auth = AuthPolicy(config.admin_token, config.predict_token, open_admin_without_token=config.binds_loopback)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[AuthInterceptor(auth)],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        options=[
            # grpcio enables SO_REUSEPORT by default: a leftover server would silently share the port.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
        ],
    )
    predserve_pb2_grpc.add_PredserveServicer_to_server(
        PredserveServicer(services.training, services.prediction, services.registry, services.history), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    credentials = server_credentials(config)
    if credentials is None:
        port = server.add_insecure_port(config.address)
    else:
        port = server.add_secure_port(config.address, credentials)
    server.start()
    publish_health(health_servicer, services.store)
    return server, port, health_servicer


def publish_health(health_servicer: health.HealthServicer, store: ModelStore) -> None:
    """Server-wide SERVING, plus one entry per model type that follows every swap."""

    def publish_model(model_type: str, slot: LoadedModel | UnavailableModel) -> None:
        status = SERVING if isinstance(slot, LoadedModel) else NOT_SERVING
        health_servicer.set(MODEL_HEALTH_PREFIX + model_type, status)

    for model_type, slot in store.slots().items():
        publish_model(model_type, slot)
    store.add_listener(publish_model)
    health_servicer.set("", SERVING)
    health_servicer.set(SERVICE_NAME, SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = parse_config(argv)
    # A file-size limit must fail the write (EFBIG), not kill the whole server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())

    for warning in security_warnings(config):
        logger.warning("SECURITY: %s", warning)
    logger.info("security: %s", security_summary(config))
    started = time.perf_counter()
    try:
        services = build_services(config)
        server, port, health_servicer = build_server(config, services)
    except (StartupError, RuntimeError, OSError) as exc:
        logger.error("predserve cannot start: %s", exc)
        return 1
    except Exception as exc:  # a storage error at start-up is fatal, but gets one clear line
        logger.error("predserve cannot start: %s", exc)
        return 1
    _write_port_file(config, port)
    logger.info(
        "predserve ready on %s:%d (%d model type(s), start-up %.2fs)",
        config.host,
        port,
        len(services.store.slots()),
        time.perf_counter() - started,
    )

    # A bounded wait: Python runs signal handlers only in the main thread, and a SIGTERM that the kernel
    # hands to one of gRPC's threads would otherwise never wake an unbounded wait.
    while not stop_requested.wait(timeout=0.5):
        pass
    logger.info("stopping: refusing new calls, letting in-flight calls finish (grace %.0fs)", config.grace_seconds)
    health_servicer.enter_graceful_shutdown()
    server.stop(config.grace_seconds).wait()
    logger.info("stopped")
    return 0


def _report_orphans(artifacts: ArtifactStore, sets: PredictionSetRepository) -> None:
    """Files no row points at come from a Train that died before its commit; they are never loaded."""
    orphans = artifacts.stored_names() - sets.artifact_paths()
    if orphans:
        logger.warning("ignoring %d artifact(s) that no prediction set records: %s", len(orphans), sorted(orphans))


def _refuse_unservable(store: ModelStore) -> None:
    broken = [model_type for model_type, slot in store.slots().items() if _refused(slot)]
    if broken:
        raise StartupError(f"--strict: model type(s) not served from their current set: {', '.join(sorted(broken))}")


def _refused(slot: LoadedModel | UnavailableModel) -> bool:
    """A current artifact that exists in the database but could not be served (not merely untrained)."""
    if isinstance(slot, LoadedModel):
        return slot.note.startswith("FALLBACK")
    return slot.record is not None and slot.record.artifact is not None


def _write_port_file(config: ServerConfig, port: int) -> None:
    if config.port_file is None:
        return
    temp = config.port_file.with_suffix(".tmp")
    temp.write_text(str(port))
    os.replace(temp, config.port_file)
