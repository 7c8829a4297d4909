"""Bootstrap: the one place that wires concrete adapters together and tells the start-up story: migrate the
database -> load every type's current pipeline -> (in each serving process) sync with it -> bind -> SERVING."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from predserve.protos import grpc_predict_v2_pb2_grpc, predserve_pb2_grpc
from predserve.server import workers
from predserve.server.api.admitting import AdmissionInterceptor, CallSlots
from predserve.server.api.auth import AuthInterceptor, AuthPolicy
from predserve.server.api.decoding import DecodingInterceptor
from predserve.server.api.observing import CallObserver
from predserve.server.api.servicer import PredserveServicer
from predserve.server.api.streams import IdleStreamReaper
from predserve.server.api.tls import server_credentials
from predserve.server.api.v2_servicer import InferenceServicer
from predserve.server.config import parse_config
from predserve.server.domain import RuntimeChoice, VersionPolicy
from predserve.server.model_store import ModelStore
from predserve.server.observability.logs import configure_logging
from predserve.server.observability.metrics import MetricsEndpoint
from predserve.server.observability.telemetry import Telemetry
from predserve.server.options import flag_of
from predserve.server.preflight import StartupCheckFailed, check_startup
from predserve.server.publishing import (
    SERVICE_NAME,
    V2_SERVICE_NAME,
    publish_health,
    publish_metrics,
    publish_train_health,
)
from predserve.server.retrying import until_the_registry_answers
from predserve.server.security import security_summary, security_warnings
from predserve.server.services.admission import FitCores, WorkSlots
from predserve.server.services.batching import MicroBatcher
from predserve.server.services.compilation import RuntimeBuilder
from predserve.server.services.history import HistoryService
from predserve.server.services.importing import ModelImportService
from predserve.server.services.lifecycle import ModelLifecycleService
from predserve.server.services.loading import ModelLoader
from predserve.server.services.prediction import PredictionService
from predserve.server.services.recovery import ArtifactRecoveryService
from predserve.server.services.registration import SetRegistrar
from predserve.server.services.registry import ModelRegistryService
from predserve.server.services.reload import LiveReloader
from predserve.server.services.training import ModelTrainingService
from predserve.server.settings import ServerConfig
from predserve.server.startup_checks import refuse_a_lost_registry, refuse_unservable, report_orphans
from predserve.server.storage.artifacts import ArtifactStore
from predserve.server.storage.cached_artifacts import open_artifact_store
from predserve.server.storage.databases import RegistryDatabase, open_database
from predserve.server.storage.history import HistoryRepository
from predserve.server.storage.migrations import MigrationRunner, migrations_for
from predserve.server.storage.repositories import PredictionSetRepository

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a transport needs; also what in-process callers use."""

    database: RegistryDatabase
    sets: PredictionSetRepository
    artifacts: ArtifactStore
    loader: ModelLoader
    store: ModelStore
    training: ModelTrainingService
    prediction: PredictionService
    registry: ModelRegistryService
    history: HistoryService
    lifecycle: ModelLifecycleService
    importer: ModelImportService
    recovery: ArtifactRecoveryService
    reloader: LiveReloader
    telemetry: Telemetry


def build_services(
    config: ServerConfig,
    *,
    artifacts: ArtifactStore | None = None,
    store: ModelStore | None = None,
    telemetry: Telemetry | None = None,
) -> Services:
    """Migrates the database and loads every current model; no port is bound here.

    Tests pass their own artifact store (to inject a fault) or model store (a smaller pin budget);
    everything else is wired exactly as the server runs. Without telemetry nothing is measured.
    """
    telemetry = telemetry or Telemetry()
    # The one place that picks the backend: a postgresql:// URL, or the SQLite file.
    database = open_database(
        config.database_url or config.db_path,
        config.busy_timeout_seconds,
        config.db_pool_size,
        config.registry_timeout_seconds,
    )
    try:
        return _services_on(database, config, artifacts, store, telemetry)
    except BaseException:
        database.close()  # a start-up that failed (and may be tried again) leaves no pool behind
        raise


def _services_on(
    database: RegistryDatabase,
    config: ServerConfig,
    artifacts: ArtifactStore | None,
    store: ModelStore | None,
    telemetry: Telemetry,
) -> Services:
    artifacts = artifacts or open_artifact_store(
        config.models_dir,
        config.artifact_store,
        config.artifact_hmac_key,
        cache_max_bytes=config.cache_max_bytes,
        timeout_seconds=config.store_timeout_seconds,
        retries=config.store_retries,
        fetch_concurrency=config.fetch_concurrency,
        telemetry=telemetry,
    )
    database.prepare(check_integrity=config.integrity_check)
    applied = MigrationRunner(database).apply(migrations_for(database, config.migrations_dir))
    logger.info(
        "database %s ready (%d migration(s) applied now)",
        database.name,
        len(applied),
        extra={"event": "database_ready", "migrations_applied": len(applied)},
    )
    artifacts.prepare()
    sets = PredictionSetRepository(database)
    if not config.allow_empty_registry:
        refuse_a_lost_registry(database, sets, artifacts)
    history_repository = HistoryRepository(database)
    runtimes = RuntimeBuilder(artifacts, RuntimeChoice(config.runtime), config.runtime_tolerance)
    loader = ModelLoader(
        artifacts,
        sets,
        VersionPolicy(config.version_policy),
        config.trusted_modules,
        runtimes=runtimes,
        telemetry=telemetry,
    )
    store = store or ModelStore()
    artifacts.protect(store.served_files)
    store.add_listener(lambda _model_type, _slot: artifacts.trim())  # a swap may leave files nobody serves
    loader.load_current_models(store)
    artifacts.check_access()  # bad credentials stop the start; a store that does not answer does not
    store.mark_startup_loaded()
    report_orphans(artifacts, sets)
    if config.strict:
        refuse_unservable(store)

    registrar = SetRegistrar(sets, artifacts, loader, store, runtimes)
    heavy_work = WorkSlots(config.max_concurrent_trains, "Trains and imports", flag_of("max_concurrent_trains"))
    importer = ModelImportService(
        history_repository,
        registrar,
        config.import_timeout_seconds,
        trusted_modules=config.trusted_modules,
        slots=heavy_work,
    )
    return Services(
        database=database,
        sets=sets,
        artifacts=artifacts,
        loader=loader,
        store=store,
        training=ModelTrainingService(
            history_repository,
            registrar,
            max_rows=config.max_rows_per_request,
            time_limit_seconds=config.train_deadline_seconds,
            slots=heavy_work,
            cores=FitCores(config.fit_jobs),
            telemetry=telemetry,
        ),
        prediction=PredictionService(
            store,
            sets,
            loader,
            max_rows=config.max_rows_per_request,
            batcher=MicroBatcher(config.batch_max_rows, config.batch_max_wait_ms / 1000, telemetry),
            telemetry=telemetry,
        ),
        registry=ModelRegistryService(store, sets),
        history=HistoryService(history_repository, max_rows=config.max_rows_per_request),
        lifecycle=ModelLifecycleService(sets, artifacts, registrar),
        importer=importer,
        recovery=ArtifactRecoveryService(sets, artifacts, importer),
        # Not started here: threads do not survive a fork, so each serving process starts its own.
        reloader=LiveReloader(sets, registrar, store, config.reload_interval_seconds, telemetry),
        telemetry=telemetry,
    )


def build_server(
    config: ServerConfig, services: Services, share_port: bool = False
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Creates the gRPC server, binds its port and starts it; raises if the port is taken.

    share_port is for --workers only: sibling processes bind one port with SO_REUSEPORT.
    """
    auth = AuthPolicy(config.admin_token, config.predict_token, open_admin_without_token=config.binds_loopback)
    slots = CallSlots(config.max_concurrent_rpcs, config.max_concurrent_streams, config.max_concurrent_trains)
    server = grpc.server(
        # A thread for every slot of every class of work (health has its own): an admitted call never waits
        # in the pool's queue, and a call past its class's slots is refused at once.
        futures.ThreadPoolExecutor(max_workers=slots.threads, thread_name_prefix="rpc"),
        # The observer outermost, so it counts every call whatever answers it; then auth, so that a caller
        # without the token is refused before it takes a slot or its bytes are even decoded.
        interceptors=[
            *_observer(config, services),
            AuthInterceptor(auth),
            AdmissionInterceptor(slots),
            DecodingInterceptor((SERVICE_NAME, V2_SERVICE_NAME)),
        ],
        # Off: counting every call alike, it refused health and Predict once idle streams had filled it.
        maximum_concurrent_rpcs=None,
        options=[
            # grpcio enables SO_REUSEPORT by default: a leftover server would silently share the port.
            ("grpc.so_reuseport", 1 if share_port else 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Clients ping idle connections every 20 s (client/connection.py) so that load balancers keep
            # them; gRPC's defaults (no pings without calls, at least 5 min apart) would answer the third
            # ping with GOAWAY "too_many_pings" and drop the connection.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    servicer = PredserveServicer(
        services.training,
        services.prediction,
        services.registry,
        services.history,
        services.lifecycle,
        services.importer,
        IdleStreamReaper(config.stream_idle_seconds),
    )
    predserve_pb2_grpc.add_PredserveServicer_to_server(servicer, server)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(services.prediction, services.registry), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            V2_SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = server_credentials(config)
    if credentials is None:
        port = server.add_insecure_port(config.address)
    else:
        port = server.add_secure_port(config.address, credentials)
    publish_health(health_servicer, services.store)  # before start: grpc's servicer says SERVING until told
    server.start()
    return server, port, health_servicer


def _observer(config: ServerConfig, services: Services) -> list[grpc.ServerInterceptor]:
    """The call observer, where anything is recorded: without metrics or an access log it would only cost."""
    if not (services.telemetry.records or config.access_log):
        return []
    return [CallObserver(services.telemetry, (SERVICE_NAME, V2_SERVICE_NAME), config.access_log)]


def main(argv: Sequence[str] | None = None) -> int:
    """Flags and environment to a running server; returns the exit status. A bad value exits 2 in parse_config."""
    return run(parse_config(argv))


def run(config: ServerConfig) -> int:
    if not _startup_checks_pass(config):
        return 2
    # A file-size limit must fail the write (EFBIG), not kill the whole server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for warning in security_warnings(config):
        logger.warning("SECURITY: %s", warning)
    logger.info("security: %s", security_summary(config))
    started = time.perf_counter()
    metrics = MetricsEndpoint.prepare(config.metrics_dir) if config.metrics_port else None
    store = ModelStore()
    telemetry = metrics.telemetry(store.knows) if metrics is not None else Telemetry()
    try:
        services = _services_once_the_database_answers(config, store, telemetry)
        if services is None:  # stopped while waiting
            return 0
        if config.workers > 1:
            # Pooled connections must not cross a fork; each worker opens its own on first use.
            services.database.close()
            return workers.serve(
                config,
                lambda port, on_ready: serve(config, services, port, on_ready, share_port=True),
                lambda port: _write_port_file(config, port),
                before_ready=lambda pids: _start_metrics(config, metrics, pids),
                after_exit=metrics.worker_exited if metrics is not None else lambda pid: None,
            )
        _start_metrics(config, metrics)
        return serve(config, services, config.port, lambda port: _write_port_file(config, port), started=started)
    except Exception as exc:  # a storage or bind error at start-up is fatal, with one clear line
        logger.error("predserve cannot start: %s", exc)
        return 1
    finally:
        if metrics is not None:
            metrics.close()


def _services_once_the_database_answers(
    config: ServerConfig, store: ModelStore, telemetry: Telemetry
) -> Services | None:
    """build_services, tried again while the registry database cannot be reached (server/retrying.py): a replica
    started during an outage waits before it binds, never exits; None if SIGTERM or SIGINT came first. Any
    other failure (a bad migration, a lost registry) still stops start-up with one line."""
    return until_the_registry_answers(lambda: build_services(config, store=store, telemetry=telemetry))


def _start_metrics(
    config: ServerConfig, metrics: MetricsEndpoint | None, worker_pids: Callable[[], Collection[int]] = tuple
) -> None:
    if metrics is not None:
        metrics.start(config.metrics_address, config.metrics_port, worker_pids)


def recover(config: ServerConfig) -> int:
    """`predserve-server recover`: records every orphan artifact that verifies as a set that is not current.

    Returns 1 when some orphan could not be recovered (it stays where it is), else 0.
    """
    # It serves no metrics: a running server's files in the metrics directory are no concern of it.
    if not _startup_checks_pass(dataclasses.replace(config, metrics_port=0)):
        return 2
    try:
        # The registry may well be the lost one this is run for: an empty one is expected here.
        services = build_services(dataclasses.replace(config, allow_empty_registry=True))
        recoveries = services.recovery.recover()
    except Exception as exc:
        logger.error("predserve cannot recover: %s", exc)
        return 1
    for recovery in recoveries:
        if recovery.set_id is not None:
            print(f"recovered {recovery.stored_name}: prediction set {recovery.set_id} of {recovery.model_type}")
        else:
            print(f"left {recovery.stored_name}: {recovery.problem}")
    print(f"{sum(r.set_id is not None for r in recoveries)} of {len(recoveries)} orphan artifact(s) recovered")
    return 0 if all(r.set_id is not None for r in recoveries) else 1


def _startup_checks_pass(config: ServerConfig) -> bool:
    try:
        check_startup(config)  # before anything is created or migrated
    except StartupCheckFailed as exc:
        print(f"predserve-server: error: {exc}", file=sys.stderr)
        return False
    configure_logging(config.log_format, config.log_level)
    return True


def serve(
    config: ServerConfig,
    services: Services,
    port: int,
    on_ready: Callable[[int], None],
    share_port: bool = False,
    started: float | None = None,
) -> int:
    """Syncs with the database, binds, serves until SIGTERM or SIGINT, then stops gracefully. Runs in each
    worker process too, and a worker may have been forked long after its parent loaded the models."""
    stop_requested = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop_requested.set())
    # Before the port is bound, so no call meets the models as they were at the fork, and no connection meets a
    # process that cannot answer: with --workers the port is shared, and the kernel would hand a share of new
    # connections to a worker that is NOT_SERVING. So a process that cannot sync waits, unbound, until it has.
    synced = services.reloader.sync_until(stop_requested)
    if not synced:
        logger.info("stopped before it could sync with the database", extra={"event": "stopped"})
        return 0
    publish_metrics(services.telemetry, services.store)
    server, bound_port, health_servicer = build_server(dataclasses.replace(config, port=port), services, share_port)
    services.reloader.start()
    publish_train_health(health_servicer, config.models_dir, stop_requested)
    on_ready(bound_port)
    elapsed = "" if started is None else f", start-up {time.perf_counter() - started:.2f}s"
    logger.info(
        "predserve ready on %s:%d (%d model type(s)%s, pid %d)",
        config.host,
        bound_port,
        len(services.store.slots()),
        elapsed,
        os.getpid(),
        extra={
            "event": "ready",
            "port": bound_port,
            "model_types": len(services.store.slots()),
            "duration_ms": None if started is None else round((time.perf_counter() - started) * 1000, 1),
        },
    )

    # Python runs signal handlers in the main thread only, and a SIGTERM that the kernel hands to one of
    # grpc's threads does not interrupt a blocking wait here: without a timeout it could be lost for good.
    while not stop_requested.wait(timeout=0.5):
        pass
    logger.info(
        "stopping: refusing new calls, letting in-flight calls finish (grace %.0fs)",
        config.grace_seconds,
        extra={"event": "shutdown"},
    )
    health_servicer.enter_graceful_shutdown()
    services.reloader.stop()
    server.stop(config.grace_seconds).wait()
    logger.info("stopped", extra={"event": "stopped"})
    return 0


def _write_port_file(config: ServerConfig, port: int) -> None:
    if config.port_file is None:
        return
    # A new name of its own (O_EXCL): with_suffix(".tmp") would replace a file beside it (run.tmp of run.port).
    temp = config.port_file.with_name(f".{config.port_file.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(str(port))
        os.replace(temp, config.port_file)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
