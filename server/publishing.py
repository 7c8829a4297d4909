"""What each serving process tells the outside about the models it serves: health and metrics.

Both follow the store: they publish every slot once, then every swap, so neither can drift from what
Predict answers with.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from grpc_health.v1 import health, health_pb2

from predserve.protos import grpc_predict_v2_pb2, predserve_pb2
from predserve.server.model_store import LoadedModel, ModelStore, UnavailableModel
from predserve.server.observability.telemetry import ServedSlot, Telemetry
from predserve.server.storage.artifacts import unwritable_reason

logger = logging.getLogger(__name__)

SERVICE_NAME = predserve_pb2.DESCRIPTOR.services_by_name["Predserve"].full_name
# The Open Inference Protocol (KServe V2) data plane, served on the same port.
V2_SERVICE_NAME = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
MODEL_HEALTH_PREFIX = "predserve.model."
# SERVING while this process can write to its models directory, so can Train and import; NOT_SERVING while
# it cannot (read-only, no permission, gone), checked every TRAIN_HEALTH_SECONDS. Predict is not affected.
TRAIN_HEALTH_SERVICE = "predserve.train"
TRAIN_HEALTH_SECONDS = 1.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def publish_health(health_servicer: health.HealthServicer, store: ModelStore) -> None:
    """Server-wide SERVING while the store agrees with the database, plus one entry per model type that
    follows every swap; all NOT_SERVING while the store is not synced, since Predict refuses then."""

    def publish_model(model_type: str, slot: LoadedModel | UnavailableModel) -> None:
        serves = isinstance(slot, LoadedModel) and store.not_synced_reason is None
        health_servicer.set(MODEL_HEALTH_PREFIX + model_type, SERVING if serves else NOT_SERVING)

    def publish_server(synced: bool) -> None:
        for model_type, slot in store.slots().items():
            publish_model(model_type, slot)
        for service in ("", SERVICE_NAME, V2_SERVICE_NAME):
            health_servicer.set(service, SERVING if synced else NOT_SERVING)

    store.add_listener(publish_model)
    store.add_sync_listener(publish_server)
    publish_server(store.not_synced_reason is None)


def publish_train_health(
    health_servicer: health.HealthServicer, models_dir: Path, stop: threading.Event
) -> threading.Thread:
    """Keeps TRAIN_HEALTH_SERVICE in line with whether the models directory takes files; logs each change."""

    def watch() -> None:
        previous: str | None = ""
        while True:
            reason = unwritable_reason(models_dir)
            if reason != previous:
                health_servicer.set(TRAIN_HEALTH_SERVICE, SERVING if reason is None else NOT_SERVING)
                if reason is not None:
                    logger.warning("this replica cannot train or import: its models directory %s", reason)
                elif previous:
                    logger.info("the models directory %s takes files again: Train and import work", models_dir)
                previous = reason
            if stop.wait(TRAIN_HEALTH_SECONDS):
                return

    thread = threading.Thread(target=watch, name="train-health", daemon=True)
    thread.start()
    return thread


def publish_metrics(telemetry: Telemetry, store: ModelStore) -> None:
    """What this process serves, per model type, now and after every swap. Each serving process publishes
    its own: a forked worker's values start empty, and the parent's start-up values are not the workers'."""

    def publish(model_type: str, slot: LoadedModel | UnavailableModel) -> None:
        if isinstance(slot, LoadedModel):
            telemetry.slot_changed(ServedSlot(model_type, slot.record.id, loaded=True, fallback=slot.is_fallback))
        else:
            telemetry.slot_changed(ServedSlot(model_type, None, loaded=False, fallback=False))

    store.add_listener(publish)
    for model_type, slot in store.slots().items():
        publish(model_type, slot)
