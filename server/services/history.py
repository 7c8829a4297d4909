"""HistoryService: appends observations to a dataset in data_history, all or nothing."""

from __future__ import annotations

from collections.abc import Sequence

from server.domain import HistoryRow
from server.errors import InvalidArgument
from server.services.validation import check_feature_names, check_name, check_row_limit, check_targets, feature_matrix
from server.storage.repositories import HistoryRepository


class HistoryService:
    def __init__(self, history: HistoryRepository, max_rows: int | None = None) -> None:
        self.history = history
        self.max_rows = max_rows

    def ingest(self, dataset: str, feature_names: Sequence[str], rows: Sequence[HistoryRow]) -> int:
        """Validates every row first, then stores them in one transaction; returns the dataset's size."""
        check_name("dataset", dataset)
        if not rows:
            raise InvalidArgument("no rows given")
        check_row_limit("the request", len(rows), self.max_rows)
        existing_width = self.history.feature_count(dataset)
        feature_matrix([row.features for row in rows], existing_width)
        width = existing_width or len(rows[0].features)
        if feature_names and len(feature_names) != width:
            raise InvalidArgument(f"{len(feature_names)} feature names given for {width} features")
        check_feature_names(feature_names)
        check_targets([row.target for row in rows])
        return self.history.append(dataset, feature_names, rows)
