"""What is trained and what is served: the answers behind ListModels and ListPredictionSets."""

from __future__ import annotations

from dataclasses import dataclass

from server.domain import PredictionSetRecord
from server.model_store import LoadedModel, ModelStore
from server.services.validation import check_name
from server.storage.repositories import PredictionSetRepository

SKLEARN = "sklearn"  # the pipeline's own predict answers


@dataclass(frozen=True)
class ModelStatusView:
    model_type: str
    loaded: bool
    status_message: str
    record: PredictionSetRecord | None
    load_seconds: float
    # The runtime answering this model type's Predicts in this process: a compiled form's name, or "sklearn".
    answering: str = SKLEARN


class ModelRegistryService:
    def __init__(self, store: ModelStore, sets: PredictionSetRepository) -> None:
        self.store = store
        self.sets = sets

    def list_models(self) -> list[ModelStatusView]:
        views = []
        for model_type, slot in sorted(self.store.slots().items()):
            if isinstance(slot, LoadedModel):
                answering = slot.runtime.name if slot.runtime is not None else SKLEARN
                views.append(ModelStatusView(model_type, True, slot.note, slot.record, slot.load_seconds, answering))
            else:
                views.append(ModelStatusView(model_type, False, slot.reason, slot.record, 0.0))
        return views

    def list_prediction_sets(self, model_type: str) -> list[PredictionSetRecord]:
        return self.sets.for_model_type(check_name("model_type", model_type))
