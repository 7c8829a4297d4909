"""The one definition of predserve's calls, which PredserveClient and AsyncPredserveClient share.

Each RPC is declared once in RPCS (path, message types, deadline class, whether gRPC may retry it, its own
error classes). Each client method is declared once, in PredserveCalls, as a function that turns its
arguments into a Prepared call: the request message, how to read the answer, which errors to raise. The two
clients differ only in how they send a Prepared call, with grpc or with grpc.aio (see `_invoke`); the
descriptor `Method` gives the sync client methods that return the answer and the async client methods that
return an awaitable of it, with the same signature, defaults and docstring. The descriptor `Pages` does the
same for walking a paged listing: an iterator on the sync client, an async iterator on the async one.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import enum
import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, cast, overload

import grpc
from grpc_health.v1 import health_pb2

from predserve.client.batches import BATCH_ROWS, BatchSource, Prefetch, RowIterable
from predserve.client.batches import target_message as target_message  # the clients' own since the first release
from predserve.client.connection import KEEPALIVE_SECONDS, ChannelModule, ChannelSettings
from predserve.client.errors import (
    DatasetNotFound,
    ErrorTable,
    ModelNotFound,
    ModelNotReady,
    PredictionSetNotFound,
    PredserveClientError,
    error_for,
)
from predserve.client.named_rows import is_named, table_message
from predserve.client.typed_csv import NamedRows, TypedCsvFile, column_specs, typed_source
from predserve.protos import predserve_pb2 as pb

TargetValue = str | int | float
R = TypeVar("R")
T = TypeVar("T")
P = ParamSpec("P")

SERVICE = "predserve.v1.Predserve"
HEALTH = "grpc.health.v1.Health"

# Default deadlines. A prediction-class call answers in milliseconds; 10 s leaves room for gRPC's retries
# across a replica's restart (5 attempts, backoff up to 2 s) without letting a caller hang on a server that
# stopped answering. Admin calls fit, load or stream whole files: 600 s matches the server's own default
# --train-deadline-seconds, past which a Train records nothing anyway.
PREDICTION_DEADLINE_SECONDS = 10.0
ADMIN_DEADLINE_SECONDS = 600.0


class DeadlineClass(enum.Enum):
    PREDICTION = "prediction"  # Predict, the listings, health
    ADMIN = "admin"  # Train, IngestHistory, ImportModel, Promote, GarbageCollect


@dataclass(frozen=True, eq=False)  # hashed by identity: each Rpc is one constant
class Rpc:
    """One method of the server as the clients call it."""

    service: str
    name: str
    request_type: Any
    response_type: Any
    deadline: DeadlineClass
    # gRPC may send it again on UNAVAILABLE or CANCELLED: it changes nothing on the server. Train and
    # IngestHistory are not: a retry could train or append twice.
    retried: bool = False
    streams_requests: bool = False
    # Error classes of this method by status code, before the general table (client/errors.py).
    errors: ErrorTable = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    def multicallable(self, channel: Any) -> Any:
        """The callable of this method on a grpc or grpc.aio channel (both have the same factory methods)."""
        factory = channel.stream_unary if self.streams_requests else channel.unary_unary
        return factory(
            self.path,
            request_serializer=self.request_type.SerializeToString,
            response_deserializer=self.response_type.FromString,
        )


_NOT_FOUND = grpc.StatusCode.NOT_FOUND
TRAIN = Rpc(
    SERVICE, "Train", pb.TrainRequest, pb.TrainResponse, DeadlineClass.ADMIN, errors={_NOT_FOUND: DatasetNotFound}
)
PREDICT = Rpc(
    SERVICE,
    "Predict",
    pb.PredictRequest,
    pb.PredictResponse,
    DeadlineClass.PREDICTION,
    retried=True,
    errors={_NOT_FOUND: ModelNotFound, grpc.StatusCode.FAILED_PRECONDITION: ModelNotReady},
)
LIST_MODELS = Rpc(
    SERVICE, "ListModels", pb.ListModelsRequest, pb.ListModelsResponse, DeadlineClass.PREDICTION, retried=True
)
LIST_PREDICTION_SETS = Rpc(
    SERVICE,
    "ListPredictionSets",
    pb.ListPredictionSetsRequest,
    pb.ListPredictionSetsResponse,
    DeadlineClass.PREDICTION,
    retried=True,
)
INGEST_HISTORY = Rpc(
    SERVICE,
    "IngestHistory",
    pb.IngestHistoryRequest,
    pb.IngestHistoryResponse,
    DeadlineClass.ADMIN,
    streams_requests=True,
)
PROMOTE = Rpc(
    SERVICE,
    "Promote",
    pb.PromoteRequest,
    pb.PromoteResponse,
    DeadlineClass.ADMIN,
    errors={_NOT_FOUND: PredictionSetNotFound},
)
IMPORT_MODEL = Rpc(
    SERVICE,
    "ImportModel",
    pb.ImportModelRequest,
    pb.TrainResponse,
    DeadlineClass.ADMIN,
    streams_requests=True,
    errors={_NOT_FOUND: DatasetNotFound},
)
GARBAGE_COLLECT = Rpc(
    SERVICE, "GarbageCollect", pb.GarbageCollectRequest, pb.GarbageCollectResponse, DeadlineClass.ADMIN
)
LIST_DATASETS = Rpc(
    SERVICE, "ListDatasets", pb.ListDatasetsRequest, pb.ListDatasetsResponse, DeadlineClass.PREDICTION, retried=True
)
HEALTH_CHECK = Rpc(
    HEALTH, "Check", health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse, DeadlineClass.PREDICTION
)
RPCS = (
    TRAIN,
    PREDICT,
    LIST_MODELS,
    LIST_PREDICTION_SETS,
    INGEST_HISTORY,
    PROMOTE,
    IMPORT_MODEL,
    GARBAGE_COLLECT,
    HEALTH_CHECK,
    LIST_DATASETS,
)
# The health service is retried as a whole by the service config.
RETRIED_METHODS = tuple((rpc.service, rpc.name) for rpc in RPCS if rpc.retried)

# Promotion policies by the names the CLI uses.
PROMOTION_POLICIES = {
    "always": pb.PROMOTE_ALWAYS,
    "register-only": pb.REGISTER_ONLY,
    "if-better": pb.PROMOTE_IF_BETTER,
}


def _unchanged(response: Any) -> Any:
    return response


@dataclass(frozen=True)
class Prepared(Generic[R]):
    """One call ready to send: the method, its request (a message, or an iterator of them for a client
    stream), the deadline asked for this call (None: the client's default for the method's class), how the
    answer becomes the method's return value, and the method's error classes for this request."""

    rpc: Rpc
    request: Any
    timeout: float | None
    convert: Callable[[Any], R] = _unchanged
    errors: ErrorTable | None = None

    def error(self, exc: grpc.RpcError) -> PredserveClientError:
        code = exc.code()  # type: ignore[attr-defined]
        details = exc.details() or ""  # type: ignore[attr-defined]
        return error_for(code, details, self.rpc.errors if self.errors is None else self.errors)


def target_value(target: pb.Target) -> TargetValue | None:
    which = target.WhichOneof("value")
    return None if which is None else getattr(target, which)


@dataclass(frozen=True)
class Conversation(Generic[R]):
    """Several calls in turn, each chosen from the answers before it: a generator that yields Prepared calls,
    is sent each answer, and returns the method's value. Both clients drive it the same way (`advance`);
    the async client runs the steps of a conversation that reads files in a worker thread, off the loop."""

    steps: Generator[Prepared[Any], Any, R]
    reads_files: bool = False

    def advance(self, answer: Any = None, first: bool = False) -> tuple[bool, Any]:
        """(False, the next call) or (True, the method's value)."""
        try:
            return False, next(self.steps) if first else self.steps.send(answer)
        except StopIteration as done:
            return True, done.value


@dataclass(frozen=True)
class IngestProgress:
    """What an ingest's `progress` callback gets after its first call and after every stored batch: the rows
    of this ingest stored so far (by earlier runs too), the source's rows when known beforehand (a CSV file's
    lines), and the server's answer."""

    rows_stored: int
    rows_total: int | None
    answer: pb.IngestHistoryResponse


def ingest(
    dataset: str,
    rows: Iterable[tuple[Sequence[float], TargetValue]] | BatchSource,
    feature_names: Sequence[str] = (),
    batch_size: int = BATCH_ROWS,
    *,
    ingest_id: str | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    timeout: float | None = None,
) -> Conversation[pb.IngestHistoryResponse]:
    """Appends rows (features, target) to a dataset as consecutive batches of `batch_size` rows (at most the
    server's --max-rows-per-request), one call each, each stored all or nothing and acknowledged. An error
    leaves the batches before it stored: call again with the same `ingest_id` and the same rows, and the
    ingest resumes after its last stored batch, storing no row twice (without `ingest_id`, a new one is made
    and nothing can be resumed). Returns the last answer, with `rows_added` summed. Admin deadline per batch."""
    source = rows if isinstance(rows, BatchSource) else RowIterable(rows)
    resume = ingest_id is not None
    ingest_id = ingest_id or f"py-{uuid.uuid4().hex}"
    return Conversation(
        _ingest_steps(dataset, source, feature_names, batch_size, ingest_id, resume, progress, None, timeout)
    )


def ingest_csv(
    dataset: str,
    path: Path | str,
    target_column: str,
    batch_size: int = BATCH_ROWS,
    *,
    ingest_id: str | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    timeout: float | None = None,
    column_types: Mapping[str, str] | None = None,
) -> Conversation[pb.IngestHistoryResponse]:
    """Appends the rows of a CSV file with a header row, as `ingest` does; the other columns are the features,
    by their header names. Cells may be numbers, booleans (read as 1 and 0), text, or empty (a missing value):
    a file of anything but numbers goes as a typed table, and its dataset's first ingest fixes its column types,
    inferred or given in `column_types` ({"zip": "string"}). Without `ingest_id`, the id follows from the
    dataset, the target column and the file's bytes (CsvFile.ingest_id), so that calling again with the same
    file resumes an interrupted ingest and stores nothing twice; pass another id to append the same rows again.
    CsvFormatError for a file that cannot be read as rows. Admin deadline per batch."""

    def steps() -> Generator[Prepared[Any], Any, pb.IngestHistoryResponse]:
        source = typed_source(path, target_column, column_types or {})
        csv_file = source.csv_file if isinstance(source, TypedCsvFile) else source
        own_id = ingest_id or csv_file.ingest_id(dataset)
        total = csv_file.scan().rows
        if isinstance(source, TypedCsvFile):
            typed = _typed_header(target_column, column_types or {})
            return (
                yield from _ingest_steps(dataset, source, (), batch_size, own_id, True, progress, total, timeout, typed)
            )
        names = csv_file.feature_names
        return (yield from _ingest_steps(dataset, source, names, batch_size, own_id, True, progress, total, timeout))

    return Conversation(steps(), reads_files=True)


def ingest_table(
    dataset: str,
    rows: Sequence[Mapping[str, Any]] | Any,
    target_column: str,
    batch_size: int = BATCH_ROWS,
    *,
    column_types: Mapping[str, str] | None = None,
    ingest_id: str | None = None,
    progress: Callable[[IngestProgress], None] | None = None,
    timeout: float | None = None,
) -> Conversation[pb.IngestHistoryResponse]:
    """Appends rows given by column name, the target among them: a list of dicts ({"age": 30, "plan": "pro",
    "income": None, "churned": 1}; None, NaN or an absent key is a missing value) or a pandas DataFrame. The
    dataset's first ingest fixes its column types, inferred or given in `column_types`. Batches and resuming
    as `ingest`. Admin deadline per batch."""
    resume = ingest_id is not None
    own_id = ingest_id or f"py-{uuid.uuid4().hex}"
    typed = _typed_header(target_column, column_types or {})
    steps = _ingest_steps(dataset, NamedRows(rows), (), batch_size, own_id, resume, progress, len(rows), timeout, typed)
    return Conversation(steps)


def _typed_header(target_column: str, column_types: Mapping[str, str]) -> pb.IngestHistoryRequest:
    return pb.IngestHistoryRequest(target_column=target_column, column_types=column_specs(column_types))


def _ingest_steps(
    dataset: str,
    source: BatchSource | TypedCsvFile | NamedRows,
    feature_names: Sequence[str],
    batch_size: int,
    ingest_id: str,
    resume: bool,
    progress: Callable[[IngestProgress], None] | None,
    total: int | None,
    timeout: float | None,
    typed: pb.IngestHistoryRequest | None = None,
) -> Generator[Prepared[Any], Any, pb.IngestHistoryResponse]:
    """The calls of one ingest: where it stands (when it may have begun before), then each batch in turn."""
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}: a batch holds at least one row")

    def header(number: int, first_row: int) -> pb.IngestHistoryRequest:
        message = pb.IngestHistoryRequest(
            dataset=dataset, feature_names=feature_names, ingest_id=ingest_id, batch_number=number, first_row=first_row
        )
        if typed is not None:  # a table's target column and declared types
            message.MergeFrom(typed)
        return message

    answer: pb.IngestHistoryResponse | None = None
    number = first_row = added = 0
    if resume:  # a stream without rows: where the ingest stands
        answer = yield Prepared(INGEST_HISTORY, iter([header(0, 0)]), timeout)
        number, first_row = answer.next_batch, answer.next_row
        if progress is not None:
            progress(IngestProgress(first_row, total, answer))
    batches: Iterator[Any] = source.batches(batch_size, first_row)
    if getattr(source, "prefetch", False):
        batches = Prefetch(batches)
    try:
        for batch in batches:
            answer = yield Prepared(INGEST_HISTORY, iter(batch.messages(header(number, first_row))), timeout)
            added += answer.rows_added
            number, first_row = number + 1, first_row + batch.row_count
            if progress is not None:
                progress(IngestProgress(first_row, total, answer))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if answer is None:  # no rows at all: the server says so, as it always has
        answer = yield Prepared(INGEST_HISTORY, iter([pb.IngestHistoryRequest(dataset=dataset)]), timeout)
    summary = pb.IngestHistoryResponse()
    summary.CopyFrom(answer)
    summary.rows_added = added
    summary.already_stored = added == 0 and first_row > 0
    return summary


def train(
    model_type: str,
    dataset: str = "",
    algorithm: str = "",
    params: Mapping[str, Any] | None = None,
    test_fraction: float = 0.0,
    random_seed: int = 0,
    promotion: str = "always",
    *,
    timeout: float | None = None,
) -> Prepared[pb.TrainResponse]:
    """Fits a recipe on a dataset and records the new set; `promotion` is always, register-only or
    if-better. Admin deadline."""
    request = pb.TrainRequest(
        model_type=model_type,
        algorithm=algorithm,
        dataset=dataset,
        params={k: str(v) for k, v in (params or {}).items()},
        test_fraction=test_fraction,
        random_seed=random_seed,
        promotion=PROMOTION_POLICIES[promotion],
    )
    return Prepared(TRAIN, request, timeout)


# A pinned Predict names a set: NOT_FOUND is about that set, not the model type.
_PINNED_PREDICT_ERRORS = {**PREDICT.errors, _NOT_FOUND: PredictionSetNotFound}


def predict(
    model_type: str,
    rows: Sequence[Sequence[float]] | Sequence[Mapping[str, Any]] | Any,
    prediction_set_id: int = 0,
    include_probabilities: bool = False,
    *,
    timeout: float | None = None,
) -> Prepared[pb.PredictResponse]:
    """Predicts rows with the current set of the model type, or with a pinned set. Rows are lists of numbers in
    the order of a numbers-only model's inputs, or given by column name: dicts ({"age": 30, "plan": "pro",
    "income": None}; None or an absent key is a missing value) or a pandas DataFrame, matched to the model's
    inputs by name. Prediction deadline."""
    request = pb.PredictRequest(
        model_type=model_type,
        prediction_set_id=prediction_set_id,
        include_probabilities=include_probabilities,
    )
    if is_named(rows):
        request.table.CopyFrom(table_message(rows))
    else:
        request.rows.extend(pb.Row(features=row) for row in cast(Sequence[Sequence[float]], rows))
    return Prepared(PREDICT, request, timeout, errors=_PINNED_PREDICT_ERRORS if prediction_set_id else None)


def list_models(*, timeout: float | None = None) -> Prepared[pb.ListModelsResponse]:
    """Every model type: its current set, whether it is loaded, and why not. Prediction deadline."""
    return Prepared(LIST_MODELS, pb.ListModelsRequest(), timeout)


def list_datasets(*, timeout: float | None = None) -> Prepared[pb.ListDatasetsResponse]:
    """Every dataset: its feature columns in order with their types and missing counts, its rows, what its
    targets are. Prediction deadline."""
    return Prepared(LIST_DATASETS, pb.ListDatasetsRequest(), timeout)


def list_prediction_sets(
    model_type: str,
    *,
    page_size: int = 0,
    page_token: str = "",
    current_only: bool = False,
    exclude_archived: bool = False,
    created_after: dt.datetime | None = None,
    timeout: float | None = None,
) -> Prepared[pb.ListPredictionSetsResponse]:
    """One page of the prediction sets (versions) of a model type, newest first: at most `page_size` sets
    (0: the server's default, 50; it sends at most 1000), continuing after the page whose `next_page_token`
    is `page_token` ("" for the first page). The answer's `next_page_token` is empty on the last page; send
    it back with the same model type and filters (page_size may change) for the next one, or walk them all
    with iter_prediction_sets. Filters: `current_only` keeps the current set alone, `exclude_archived`
    leaves out the sets whose artifact retention deleted, `created_after` (a datetime with a time zone)
    keeps the sets created strictly after it. Prediction deadline."""
    request = pb.ListPredictionSetsRequest(
        model_type=model_type,
        page_size=page_size,
        page_token=page_token,
        current_only=current_only,
        exclude_archived=exclude_archived,
    )
    if created_after is not None:
        request.created_after.FromDatetime(_utc("created_after", created_after))
    return Prepared(LIST_PREDICTION_SETS, request, timeout)


def _utc(name: str, moment: dt.datetime) -> dt.datetime:
    # A naive datetime is refused rather than taken as UTC, as protobuf would: datetime.now() is local time,
    # and a filter hours off would quietly list the wrong sets.
    if moment.utcoffset() is None:
        raise ValueError(f"{name} {moment.isoformat()} has no time zone: give one, such as tzinfo=datetime.UTC")
    return moment.astimezone(dt.UTC)


def _prediction_sets(page: pb.ListPredictionSetsResponse) -> Iterable[pb.PredictionSet]:
    return page.prediction_sets


def next_page(prepared: Prepared[R], page: Any) -> Prepared[R] | None:
    """The call of the page after `page` of a paged listing (AIP-158): the same request with its
    next_page_token; None after the last page."""
    if not page.next_page_token:
        return None
    request = type(prepared.request)()
    request.CopyFrom(prepared.request)
    request.page_token = page.next_page_token
    return replace(prepared, request=request)


def promote(prediction_set_id: int, *, timeout: float | None = None) -> Prepared[pb.PromoteResponse]:
    """Makes a verified set current. Admin deadline."""
    return Prepared(PROMOTE, pb.PromoteRequest(prediction_set_id=prediction_set_id), timeout)


_ROLLBACK_ERRORS = {**PROMOTE.errors, _NOT_FOUND: ModelNotFound}


def rollback(model_type: str, *, timeout: float | None = None) -> Prepared[pb.PromoteResponse]:
    """Makes the previously current set of the model type current again. Admin deadline."""
    return Prepared(PROMOTE, pb.PromoteRequest(rollback_model_type=model_type), timeout, errors=_ROLLBACK_ERRORS)


def import_model(
    model_type: str,
    artifact: bytes,
    dataset: str = "",
    promotion: str = "always",
    chunk_size: int = 1 << 20,
    *,
    timeout: float | None = None,
    column_types: Mapping[str, str] | None = None,
) -> Prepared[pb.TrainResponse]:
    """Registers a joblib file trained elsewhere; streamed in chunks, so size is not bound by message limits.
    `column_types` ({"plan": "string", "age": "number"}) states or corrects the input columns the server infers
    from the pipeline. Admin deadline."""
    policy = PROMOTION_POLICIES[promotion]
    stated = column_specs(column_types or {})

    def messages() -> Iterator[pb.ImportModelRequest]:
        yield pb.ImportModelRequest(model_type=model_type, dataset=dataset, promotion=policy, input_schema=stated)
        for offset in range(0, len(artifact), chunk_size):
            yield pb.ImportModelRequest(chunk=artifact[offset : offset + chunk_size])

    return Prepared(IMPORT_MODEL, messages(), timeout)


def garbage_collect(
    keep: int, dry_run: bool = False, model_type: str = "", *, timeout: float | None = None
) -> Prepared[pb.GarbageCollectResponse]:
    """Deletes the artifacts of old non-current sets beyond the newest `keep` per type. Admin deadline."""
    request = pb.GarbageCollectRequest(keep=keep, dry_run=dry_run, model_type=model_type)
    return Prepared(GARBAGE_COLLECT, request, timeout)


def _status_name(response: health_pb2.HealthCheckResponse) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def health(service: str = "", *, timeout: float | None = None) -> Prepared[str]:
    """The server's health status name (SERVING, NOT_SERVING), overall or for one service, such as
    `predserve.model.<type>`. Prediction deadline."""
    return Prepared(HEALTH_CHECK, health_pb2.HealthCheckRequest(service=service), timeout, _status_name)


class Invoker(abc.ABC):
    """What both clients share: the one channel, its settings, the default deadlines."""

    _channel_module: ChannelModule

    def __init__(
        self,
        target: str | Sequence[str],
        deadline_seconds: float = PREDICTION_DEADLINE_SECONDS,
        max_attempts: int = 5,
        admin_deadline_seconds: float = ADMIN_DEADLINE_SECONDS,
        *,
        train_deadline_seconds: float | None = None,
        token: str | None = None,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        tls: bool = False,
        keepalive_seconds: float | None = KEEPALIVE_SECONDS,
    ) -> None:
        """`target`: one HOST:PORT, several IP:PORT (a list or comma-separated), or one `dns:///` name of
        every replica; several are balanced round robin over the replicas whose health is SERVING.

        `deadline_seconds` is the default deadline of prediction-class calls (Predict, the listings, health),
        `admin_deadline_seconds` that of admin calls (Train, IngestHistory, ImportModel, Promote,
        GarbageCollect; `train_deadline_seconds` is its former name); every method also takes `timeout=`.
        `max_attempts` bounds gRPC's own retries of the idempotent calls (1: none). TLS is used when `tls`
        is true or any of `ca`, `cert`, `key` is given; the token and the PEM files default to the
        environment (PREDSERVE_TOKEN, PREDSERVE_TOKEN_FILE, PREDSERVE_CA, PREDSERVE_CERT, PREDSERVE_KEY).
        `keepalive_seconds=None` turns keepalive pings off (see client/connection.py for the default).
        """
        self.settings = ChannelSettings.build(
            target, RETRIED_METHODS, max_attempts, keepalive_seconds, token, ca, cert, key, tls
        )
        self.target = self.settings.target
        self.deadlines = {
            DeadlineClass.PREDICTION: deadline_seconds,
            DeadlineClass.ADMIN: admin_deadline_seconds if train_deadline_seconds is None else train_deadline_seconds,
        }
        self._channel = self.settings.open(self._channel_module)
        self._callables = {rpc: rpc.multicallable(self._channel) for rpc in RPCS}

    @abc.abstractmethod
    def _invoke(self, prepared: Prepared[Any]) -> Any:
        """Sends a prepared call; returns its converted answer (or, async, a coroutine of it)."""

    @abc.abstractmethod
    def _converse(self, conversation: Conversation[Any]) -> Any:
        """Sends a conversation's calls in turn; returns its value (or, async, a coroutine of it)."""

    @abc.abstractmethod
    def _walk(self, first: Prepared[Any], items: Callable[[Any], Iterable[Any]]) -> Any:
        """An iterator (async: an async iterator) of the items of every page from `first` on, each page sent
        when the one before is used up."""

    def _call_arguments(self, prepared: Prepared[Any]) -> tuple[Any, dict[str, Any]]:
        """The multicallable of a prepared call and the keyword arguments it is called with."""
        timeout = prepared.timeout if prepared.timeout is not None else self.deadlines[prepared.rpc.deadline]
        return self._callables[prepared.rpc], {
            "timeout": timeout,
            "metadata": self.settings.metadata or None,
            "wait_for_ready": False,
        }


class SyncInvoker(Invoker):
    @abc.abstractmethod
    def _invoke(self, prepared: Prepared[R]) -> R: ...

    def _converse(self, conversation: Conversation[R]) -> R:
        try:
            done, step = conversation.advance(first=True)
            while not done:
                done, step = conversation.advance(self._invoke(step))
            result: R = step
            return result
        finally:
            conversation.steps.close()

    def _walk(self, first: Prepared[Any], items: Callable[[Any], Iterable[T]]) -> Iterator[T]:
        call: Prepared[Any] | None = first
        while call is not None:
            page = self._invoke(call)
            yield from items(page)
            call = next_page(call, page)


class AsyncInvoker(Invoker):
    @abc.abstractmethod
    async def _invoke(self, prepared: Prepared[R]) -> R: ...

    async def _converse(self, conversation: Conversation[R]) -> R:
        def run(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
            if conversation.reads_files:
                return asyncio.to_thread(step, *args, **kwargs)
            return _ready(step(*args, **kwargs))

        try:
            done, step = await run(conversation.advance, first=True)
            while not done:
                done, step = await run(conversation.advance, await self._invoke(step))
            result: R = step
            return result
        finally:
            await run(conversation.steps.close)

    async def _walk(self, first: Prepared[Any], items: Callable[[Any], Iterable[T]]) -> AsyncIterator[T]:
        call: Prepared[Any] | None = first
        while call is not None:
            page = await self._invoke(call)
            for item in items(page):
                yield item
            call = next_page(call, page)


async def _ready(value: Any) -> Any:
    return value


class Method(Generic[P, R]):
    """A client method defined once by the function that prepares its call; read from a sync client it
    sends the call and returns the answer, from an async client it returns a coroutine of the answer."""

    def __init__(self, prepare: Callable[P, Prepared[R] | Conversation[R]]) -> None:
        self._prepare = prepare
        self.__doc__ = prepare.__doc__
        # What help() and inspect.signature show: the method's arguments; the answer depends on the client.
        self.__signature__ = inspect.signature(prepare).replace(return_annotation=inspect.Signature.empty)

    def __repr__(self) -> str:
        return f"<predserve client method {self._prepare.__name__}{self.__signature__}>"

    @overload
    def __get__(self, client: None, owner: type) -> Method[P, R]: ...

    @overload
    def __get__(self, client: SyncInvoker, owner: type) -> Callable[P, R]: ...

    @overload
    def __get__(self, client: AsyncInvoker, owner: type) -> Callable[P, Awaitable[R]]: ...

    def __get__(self, client: Invoker | None, owner: type) -> Any:
        if client is None:
            return self
        prepare = self._prepare
        invoke, converse = client._invoke, client._converse

        @functools.wraps(prepare)
        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            call = prepare(*args, **kwargs)
            return converse(call) if isinstance(call, Conversation) else invoke(call)

        method.__signature__ = self.__signature__  # type: ignore[attr-defined]
        return method


class Pages(Generic[P, T]):
    """A client method that walks a paged listing: the arguments of the method that prepares one page's
    call (`prepare`), and the items of every page from there on (`items` reads them from a page), a page
    asked for when the one before is used up. Read from a sync client it returns an iterator, from an async
    client an async iterator; an error is raised where the page that failed was due."""

    def __init__(self, prepare: Callable[P, Prepared[Any]], items: Callable[[Any], Iterable[T]], doc: str) -> None:
        self._prepare = prepare
        self._items = items
        self.__doc__ = doc
        self.__signature__ = inspect.signature(prepare).replace(return_annotation=inspect.Signature.empty)
        self._name = prepare.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<predserve client method {self._name}{self.__signature__}>"

    @overload
    def __get__(self, client: None, owner: type) -> Pages[P, T]: ...

    @overload
    def __get__(self, client: SyncInvoker, owner: type) -> Callable[P, Iterator[T]]: ...

    @overload
    def __get__(self, client: AsyncInvoker, owner: type) -> Callable[P, AsyncIterator[T]]: ...

    def __get__(self, client: Invoker | None, owner: type) -> Any:
        if client is None:
            return self
        prepare, items, walk = self._prepare, self._items, client._walk

        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return walk(prepare(*args, **kwargs), items)  # the arguments are checked here, not at the first page

        method.__name__ = method.__qualname__ = self._name
        method.__doc__ = self.__doc__
        method.__signature__ = self.__signature__  # type: ignore[attr-defined]
        return method


iter_prediction_sets = Pages(
    list_prediction_sets,
    _prediction_sets,
    """Every prediction set of a model type that the filters keep, newest first, each exactly once even while
    new ones are recorded: list_prediction_sets' arguments, fetched `page_size` sets a call (0: the server's
    default), from `page_token` on when given. An iterator, on the async client an async iterator
    (`async for`); `timeout` is per page. Prediction deadline per page.""",
)


class PredserveCalls:
    """The methods of both clients. Every one takes `timeout=` (seconds) to override the default deadline."""

    ingest = Method(ingest)
    ingest_csv = Method(ingest_csv)
    ingest_table = Method(ingest_table)
    list_datasets = Method(list_datasets)
    train = Method(train)
    predict = Method(predict)
    list_models = Method(list_models)
    list_prediction_sets = Method(list_prediction_sets)
    iter_prediction_sets = iter_prediction_sets
    promote = Method(promote)
    rollback = Method(rollback)
    import_model = Method(import_model)
    garbage_collect = Method(garbage_collect)
    health = Method(health)
