"""What is trained and what is served: the answers behind ListModels, ListPredictionSets and V2 ModelMetadata."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from dataclasses import dataclass

from predserve.server.domain import PredictionSetRecord
from predserve.server.errors import InvalidArgument
from predserve.server.model_store import LoadedModel, ModelStore
from predserve.server.services.validation import check_name
from predserve.server.storage.repositories import PredictionSetRepository, SetFilter

SKLEARN = "sklearn"  # the pipeline's own predict answers

# ListPredictionSets (AIP-158): page_size 0 gives the default; more than the maximum gives the maximum.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# V2 ModelMetadata lists the newest versions that still have their artifact, at most this many.
MAX_V2_VERSIONS = 100

_TOKEN_VERSION = "1"

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_V2_VERSIONS",
    "SKLEARN",
    "ModelRegistryService",
    "ModelStatusView",
    "SetFilter",  # the storage layer's, re-exported for the transports
    "SetPage",
]


@dataclass(frozen=True)
class ModelStatusView:
    model_type: str
    loaded: bool
    status_message: str
    record: PredictionSetRecord | None
    load_seconds: float
    # The runtime answering this model type's Predicts in this process: a compiled form's name, or "sklearn".
    answering: str = SKLEARN


@dataclass(frozen=True)
class SetPage:
    sets: list[PredictionSetRecord]
    next_page_token: str  # "" on the last page


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

    def list_prediction_sets(
        self, model_type: str, page_size: int = 0, page_token: str = "", only: SetFilter | None = None
    ) -> SetPage:
        """One page of a model type's sets, newest first. A page token holds the last set's id and a digest of
        the model type and filters it was given for, so that it cannot continue another listing."""
        check_name("model_type", model_type)
        only = only or SetFilter()
        size = _page_size(page_size)
        listing = _listing_digest(model_type, only)
        after = _read_token(page_token, listing) if page_token else None
        records = self.sets.page(model_type, size + 1, after, only)
        if records is None:
            raise InvalidArgument("page_token names no prediction set of this registry: list again without it")
        if len(records) <= size:
            return SetPage(records, "")
        return SetPage(records[:size], _token(records[size - 1].id, listing))

    def recent_versions(self, model_type: str) -> list[int]:
        """The ids of the newest MAX_V2_VERSIONS sets of a model type that can still be served, newest first."""
        return self.sets.recent_versions(check_name("model_type", model_type), MAX_V2_VERSIONS)


def _page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            f"page_size {requested} is negative: send 0 for the default of {DEFAULT_PAGE_SIZE}, "
            f"or up to {MAX_PAGE_SIZE}"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _listing_digest(model_type: str, only: SetFilter) -> str:
    after = "" if only.created_after is None else only.created_after.astimezone(dt.UTC).isoformat()
    text = f"{model_type}\n{only.current_only}\n{only.exclude_archived}\n{after}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _token(last_id: int, listing: str) -> str:
    text = f"{_TOKEN_VERSION}:{last_id}:{listing}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _read_token(token: str, listing: str) -> int:
    """The id a page token continues after; INVALID_ARGUMENT for a token of another listing, or none at all."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, last_id, digest = text.split(":")
        after = int(last_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument(
            "page_token is not one this server gave: send the next_page_token of the previous page as it came, "
            "or none for the first page"
        ) from None
    if version != _TOKEN_VERSION or after <= 0:
        raise InvalidArgument("page_token is not one this server gave: list again without it")
    if digest != listing:
        raise InvalidArgument(
            "page_token continues a listing of another model_type or other filters: send the same model_type, "
            "current_only, exclude_archived and created_after as for its first page (page_size may change)"
        )
    return after
