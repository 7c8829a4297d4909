"""predserve: the command line over PredserveClient.

Every command prints a human-readable table, or with --json one JSON document whose keys are the
proto's field names. Errors print one line and exit with status 1 (2 for usage errors).
It needs only the client's dependencies: `--csv` shows a progress bar when tqdm is installed
(`pip install 'predserve[cli]'`), and `--builtin` reads the datasets scikit-learn ships.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from predserve.client.batches import BATCH_ROWS
from predserve.client.calls import ADMIN_DEADLINE_SECONDS, PREDICTION_DEADLINE_SECONDS, IngestProgress
from predserve.client.csvfile import CsvFormatError, sample_column_types
from predserve.client.library import (
    PredserveClient,
    PredserveClientError,
    TargetPortError,
    TargetValue,
    channel_target,
    read_token,
    target_value,
)
from predserve.client.scoring import SCORING_ROWS, ScoringCsv, schema_types, score
from predserve.protos import predserve_pb2 as pb

BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes", "digits")
# Sets asked for per ListPredictionSets call by `sets --limit` and `--all`: a set with many features or
# parameters is kilobytes, so a page stays a small message, while ten thousand sets take a hundred calls.
SETS_PER_CALL = 100
Row = tuple[list[float], TargetValue]


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        channel_target(args.target)
    except TargetPortError as exc:  # a usage error, like argparse's own: status 2
        print(f"predserve: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"predserve: {exc}", file=sys.stderr)
        return 1
    try:
        token = read_token(args.token_file) if args.token_file else None
        with PredserveClient(
            args.target,
            deadline_seconds=args.deadline,
            token=token,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            tls=args.tls,
        ) as client:
            document, table = args.handler(client, args)
    except PredserveClientError as exc:
        print(f"predserve: {exc.code.name}: {exc.details}", file=sys.stderr)
        return 1
    except (UsageError, OSError, CsvFormatError) as exc:
        print(f"predserve: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(document, indent=2) if args.json else table)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="predserve", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("PREDSERVE_TARGET", "127.0.0.1:50051"),
        help="server address HOST:PORT, several replicas as IP:PORT,IP:PORT, or one DNS name of them all "
        "(env PREDSERVE_TARGET; default 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=PREDICTION_DEADLINE_SECONDS,
        help=f"seconds per predict, models, sets or health call (default {PREDICTION_DEADLINE_SECONDS:g}; "
        f"ingest, train, import, promote and gc get {ADMIN_DEADLINE_SECONDS:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the bearer token to send (default: env PREDSERVE_TOKEN or PREDSERVE_TOKEN_FILE)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs unless --ca is given")
    parser.add_argument("--ca", type=Path, help="PEM CA bundle that signed the server's certificate (env PREDSERVE_CA)")
    parser.add_argument("--cert", type=Path, help="PEM client certificate, for mutual TLS (env PREDSERVE_CERT)")
    parser.add_argument("--key", type=Path, help="PEM private key of --cert (env PREDSERVE_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="append rows to a dataset in the server's history")
    ingest.add_argument("--dataset", required=True)
    source = ingest.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="CSV file with a header row")
    source.add_argument("--builtin", choices=BUILTIN_DATASETS, help="a dataset shipped with scikit-learn")
    ingest.add_argument("--target-column", help="the CSV column holding the target")
    ingest.add_argument(
        "--ingest-id",
        help="the ingest's id, under which the server records each stored batch; running the command again "
        "with the same id resumes after the last stored batch (default, --csv: derived from the dataset, the "
        "target column and the file's SHA-256, so re-running the same command resumes; --builtin: a new one)",
    )
    ingest.add_argument(
        "--batch-rows",
        type=int,
        default=BATCH_ROWS,
        help=f"rows per batch, one call each, at most the server's --max-rows-per-request (default {BATCH_ROWS})",
    )
    ingest.add_argument(
        "--column-type",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="with --csv: a feature column's type, number or string, where the first ingest of the dataset should "
        "not infer it (repeatable; later ingests must fit the types the first one fixed)",
    )
    ingest.set_defaults(handler=_ingest)

    train = commands.add_parser("train", help="train a model type and make it current")
    train.add_argument("--model-type", required=True)
    train.add_argument("--algorithm", default="", help="catalog recipe (default: the model type)")
    train.add_argument("--dataset", required=True)
    train.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="hyper-parameter")
    train.add_argument("--test-fraction", type=float, default=0.0)
    train.add_argument("--seed", type=int, default=0)
    _add_promotion_options(train)
    train.set_defaults(handler=_train)

    promote = commands.add_parser("promote", help="make a verified prediction set current")
    promote.add_argument("--set", type=int, required=True, help="prediction set id")
    promote.set_defaults(handler=_promote)
    rollback = commands.add_parser("rollback", help="make the previously current set current again")
    rollback.add_argument("--model-type", required=True)
    rollback.set_defaults(handler=_rollback)

    importer = commands.add_parser(
        "import", help="register a joblib pipeline trained elsewhere (an administrator's action: it runs code)"
    )
    importer.add_argument("--model-type", required=True)
    importer.add_argument("--artifact", type=Path, required=True, help="the .joblib file")
    importer.add_argument("--dataset", default="", help="score it on this dataset and self-check with its rows")
    importer.add_argument(
        "--sample-csv",
        type=Path,
        help="a CSV of the pipeline's inputs (header and a few rows): states each column's type, over what is "
        "inferred from the pipeline",
    )
    importer.add_argument(
        "--target-column", default="", help="with --sample-csv: a column of the file that is not an input"
    )
    importer.add_argument(
        "--column-type",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="state one input column's type, number or string (repeatable; wins over --sample-csv)",
    )
    _add_promotion_options(importer)
    importer.set_defaults(handler=_import)

    gc = commands.add_parser("gc", help="delete artifacts of old non-current sets (rows are kept, archived)")
    gc.add_argument("--keep", type=int, required=True, help="newest non-current sets to keep per model type")
    gc.add_argument("--model-type", default="", help="only this model type")
    gc.add_argument("--dry-run", action="store_true", help="show what would go, delete nothing")
    gc.set_defaults(handler=_gc)

    predict = commands.add_parser("predict", help="predict rows with the current (or a pinned) set")
    predict.add_argument("--model-type", required=True)
    predict.add_argument("--set", type=int, default=0, help="pin a prediction set id")
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--row", action="append", help="comma-separated features, for a model of numbers only")
    given.add_argument(
        "--json",
        dest="json_row",
        metavar="OBJECT",
        help='one row by column name, as a JSON object: \'{"age": 30, "plan": "pro", "income": null}\' '
        "(a list of objects for several rows)",
    )
    given.add_argument(
        "--csv",
        type=Path,
        help="score a CSV file with a header row: its columns are matched to the model's inputs by name, an empty "
        "cell is a missing value, columns the model does not take are kept but not sent",
    )
    predict.add_argument(
        "--out",
        type=Path,
        help="with --csv: write the input's columns, the prediction and (--proba) a probability per class to this "
        "CSV file (default: print them)",
    )
    predict.add_argument(
        "--batch-rows",
        type=int,
        default=SCORING_ROWS,
        help=f"with --csv: rows per Predict call (default {SCORING_ROWS}; fewer when the server's "
        "--max-rows-per-request is lower)",
    )
    predict.add_argument("--proba", action="store_true", help="include class probabilities")
    predict.set_defaults(handler=_predict)

    commands.add_parser("models", help="the served model types").set_defaults(handler=_models)
    commands.add_parser("datasets", help="the datasets: rows, and each column's type and missing values").set_defaults(
        handler=_datasets
    )
    sets = commands.add_parser(
        "sets", help="prediction sets of a model type, newest first: one page of the server's default size (50)"
    )
    sets.add_argument("--model-type", required=True)
    amount = sets.add_mutually_exclusive_group()
    amount.add_argument("--limit", type=int, metavar="N", help="the newest N sets (at least 1)")
    amount.add_argument("--all", action="store_true", help=f"every set, asked for {SETS_PER_CALL} a call")
    sets.add_argument("--current-only", action="store_true", help="only the current set")
    sets.add_argument("--exclude-archived", action="store_true", help="leave out the sets whose artifact gc deleted")
    sets.add_argument(
        "--created-after",
        metavar="TIME",
        help="only the sets created strictly after this ISO-8601 time, such as 2026-01-05T12:00:00Z (UTC if "
        "it has no offset)",
    )
    sets.add_argument(
        "--page-token",
        default="",
        metavar="TOKEN",
        help="continue after the last set of an earlier listing: its --json next_page_token, with the same filters",
    )
    sets.set_defaults(handler=_sets)
    commands.add_parser("health", help="the server's health status").set_defaults(handler=_health)
    return parser


def _ingest(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.batch_rows < 1:
        raise UsageError(f"--batch-rows {args.batch_rows}: a batch holds at least one row")
    if args.builtin:
        names, rows = _builtin_rows(args.builtin)
        response = client.ingest(args.dataset, rows, names, args.batch_rows, ingest_id=args.ingest_id)
    else:
        if not args.target_column:
            raise UsageError("--target-column is required with --csv")
        with _ProgressBar(f"ingest {args.csv.name}", sys.stderr) as bar:
            response = client.ingest_csv(
                args.dataset,
                args.csv,
                args.target_column,
                args.batch_rows,
                ingest_id=args.ingest_id,
                progress=bar.show,
                column_types=_stated_types(args.column_type),
            )
    earlier = response.next_row - response.rows_added
    document = {
        "dataset": response.dataset,
        "rows_added": response.rows_added,
        "total_rows": response.total_rows,
        "ingest_id": response.ingest_id,
        "next_batch": response.next_batch,
        "next_row": response.next_row,
        "already_stored": response.already_stored,
    }
    text = f"ingested {response.rows_added} rows into {response.dataset} ({response.total_rows} in all)"
    if earlier:
        text += f"; {earlier} rows of ingest {response.ingest_id} were stored before, by an earlier run"
    return document, text


class _ProgressBar:
    """tqdm's bar of the rows stored and their rate, when tqdm is installed; else the ingest runs silently."""

    def __init__(self, description: str, stream: IO[str]) -> None:
        self.description = description
        self.stream = stream
        self.bar: Any = None

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, progress: IngestProgress) -> None:
        self.advance(progress.rows_stored, progress.rows_total)

    def advance(self, done: int, total: int | None) -> None:
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            # Rows stored by an earlier run count as done from the start; the rate counts this run's only.
            self.bar = tqdm(
                total=total, initial=done, unit=" rows", unit_scale=True, desc=self.description, file=self.stream
            )
        self.bar.update(done - self.bar.n)


def _train(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    response = client.train(
        args.model_type,
        dataset=args.dataset,
        algorithm=args.algorithm,
        params=_key_values(args.param),
        test_fraction=args.test_fraction,
        random_seed=args.seed,
        promotion=args.promotion,
    )
    return _registered(response)


def _add_promotion_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--register-only",
        dest="promotion",
        action="store_const",
        const="register-only",
        help="record the new set but leave the current one current",
    )
    group.add_argument(
        "--promote-if-better",
        dest="promotion",
        action="store_const",
        const="if-better",
        help="make it current only if its held-out metric is at least the current set's",
    )
    parser.set_defaults(promotion="always")


def _registered(response: pb.TrainResponse) -> tuple[dict[str, Any], str]:
    """Train and import answer alike: the new set, and whether it became current."""
    document = {
        "prediction_set_id": response.prediction_set_id,
        "model_type": response.model_type,
        "algorithm": response.algorithm,
        "model_artifact_path": response.model_artifact_path,
        "artifact_sha256": response.artifact_sha256,
        "metrics": dict(response.metrics),
        "training_rows": response.training_rows,
        "fit_seconds": response.fit_seconds,
        "persist_seconds": response.persist_seconds,
        "promoted": response.promoted,
        "promotion_reason": response.promotion_reason,
    }
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(response.metrics.items()))
    table = format_table(
        ["prediction_set_id", "model_type", "algorithm", "model_artifact_path", "metrics"],
        [[response.prediction_set_id, response.model_type, response.algorithm, response.model_artifact_path, metrics]],
    )
    return document, f"{table}\n{response.promotion_reason}"


def _promote(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    return _promotion(client.promote(args.set))


def _rollback(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    return _promotion(client.rollback(args.model_type))


def _promotion(response: pb.PromoteResponse) -> tuple[dict[str, Any], str]:
    document = {
        "model_type": response.model_type,
        "prediction_set_id": response.prediction_set_id,
        "previous_set_id": response.previous_set_id,
    }
    text = f"{response.model_type}: set {response.prediction_set_id} is current (was {response.previous_set_id})"
    return document, text


def _import(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    artifact = args.artifact.read_bytes()
    column_types = sample_column_types(args.sample_csv, args.target_column) if args.sample_csv else {}
    column_types.update(_stated_types(args.column_type))
    return _registered(
        client.import_model(args.model_type, artifact, args.dataset, args.promotion, column_types=column_types)
    )


def _stated_types(statements: Sequence[str]) -> dict[str, str]:
    """--column-type plan=string, repeated."""
    types = {}
    for statement in statements:
        name, _, kind = statement.partition("=")
        if not name or kind.strip().lower() not in ("number", "string"):
            raise UsageError(f"--column-type {statement!r}: give NAME=number or NAME=string")
        types[name.strip()] = kind.strip().lower()
    return types


def _schema_document(columns: Sequence[pb.ColumnSpec]) -> list[dict[str, str]]:
    """An input schema as JSON: its columns in order, each a name and "number" or "string"."""
    return [{"name": c.name, "type": _type_name(c.type)} for c in columns]


def _type_name(column_type: int) -> str:
    """A ColumnType as the CLI shows it: "number" or "string"."""
    return pb.ColumnType.Name(column_type).lower()


def _gc(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    response = client.garbage_collect(args.keep, args.dry_run, args.model_type)
    document = {
        "collected": [_set_document(s) for s in response.collected],
        "bytes_freed": response.bytes_freed,
        "dry_run": response.dry_run,
    }
    verb = "would free" if response.dry_run else "freed"
    table = format_table(
        ["id", "model_type", "created_at", "bytes", "model_artifact_path"],
        [[s.id, s.model_type, s.created_at, s.artifact_size_bytes, s.model_artifact_path] for s in response.collected],
    )
    return document, f"{table}\n{len(response.collected)} set(s), {verb} {response.bytes_freed} bytes"


def _predict(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.csv is not None:
        return _score_csv(client, args)
    if args.out is not None:
        raise UsageError("--out goes with --csv")
    rows: Any = [_parse_row(text) for text in args.row] if args.row else _json_rows(args.json_row)
    response = client.predict(args.model_type, rows, args.set, args.proba)
    values = [target_value(p.value) for p in response.predictions]
    document: dict[str, Any] = {
        "prediction_set_id": response.prediction_set_id,
        "model_type": response.model_type,
        "predictions": values,
        "artifact_sha256_prefix": response.artifact_sha256_prefix,
    }
    headers = ["row", "prediction"]
    table_rows: list[list[Any]] = [[i, v] for i, v in enumerate(values)]
    if args.proba:
        classes = [target_value(c) for c in response.classes]
        document["classes"] = classes
        document["probabilities"] = [list(p.probabilities) for p in response.predictions]
        headers += [f"p({c})" for c in classes]
        for table_row, p in zip(table_rows, response.predictions, strict=True):
            table_row.extend(f"{x:.4f}" for x in p.probabilities)
    title = f"model type {response.model_type}, prediction set {response.prediction_set_id}"
    return document, title + "\n" + format_table(headers, table_rows)


def _json_rows(text: str) -> list[dict[str, Any]]:
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--json {text!r} is not JSON: {exc}") from None
    rows = given if isinstance(given, list) else [given]
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise UsageError(
            '--json takes an object of column values, such as \'{"age": 30, "plan": "pro"}\', or a list of them'
        )
    return rows


def _score_csv(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Scores a file in chunks, with a progress bar on stderr; the answers go to --out, or are printed."""
    if args.batch_rows < 1:
        raise UsageError(f"--batch-rows {args.batch_rows}: a call holds at least one row")
    source = ScoringCsv(args.csv, schema_types(_input_schema(client, args.model_type, args.set)))

    def predict(table: pb.Table) -> pb.PredictResponse:
        return client.predict(args.model_type, table, args.set, args.proba)

    output = open(args.out, "w", newline="") if args.out is not None else io.StringIO()
    with output, _ProgressBar(f"score {args.csv.name}", sys.stderr) as bar:
        total = source.count_rows()
        result = score(source, predict, output, args.proba, args.batch_rows, lambda done: bar.advance(done, total))
        printed = output.getvalue() if isinstance(output, io.StringIO) else ""
    document = {
        "model_type": result.model_type or args.model_type,
        "prediction_set_id": result.prediction_set_id,
        "rows": result.rows,
        "out": str(args.out) if args.out is not None else "",
    }
    if args.out is None:
        return document, printed.rstrip("\n")
    text = f"scored {result.rows} rows of {args.csv} with {args.model_type}, set {result.prediction_set_id}: {args.out}"
    return document, text


def _input_schema(client: PredserveClient, model_type: str, set_id: int) -> list[pb.ColumnSpec]:
    """The inputs of the set that answers: the current one as ListModels shows it, or the pinned one."""
    if set_id:
        for prediction_set in client.iter_prediction_sets(model_type, page_size=SETS_PER_CALL):
            if prediction_set.id == set_id:
                return list(prediction_set.input_schema)
        return []
    for model in client.list_models().models:
        if model.model_type == model_type:
            return list(model.input_schema)
    return []


def _models(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    models = client.list_models().models
    document = {
        "models": [
            {
                "model_type": m.model_type,
                "prediction_set_id": m.prediction_set_id,
                "model_artifact_path": m.model_artifact_path,
                "loaded": m.loaded,
                "status_message": m.status_message,
                "algorithm": m.algorithm,
                "task": m.task,
                "metrics": dict(m.metrics),
                "feature_names": list(m.feature_names),
                "input_schema": _schema_document(m.input_schema),
                "trained_at": m.trained_at,
                "runtime": _runtime_document(m.runtime),
            }
            for m in models
        ]
    }
    table = format_table(
        ["model_type", "set", "loaded", "algorithm", "runtime", "trained_at", "model_artifact_path", "status"],
        [
            [
                m.model_type,
                m.prediction_set_id,
                m.loaded,
                m.algorithm,
                m.runtime.answering,
                m.trained_at,
                m.model_artifact_path,
                m.status_message,
            ]
            for m in models
        ],
    )
    return document, table


def _sets(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    sets, next_page_token = _listed_sets(client, args)
    document = {"prediction_sets": [_set_document(s) for s in sets], "next_page_token": next_page_token}
    table = format_table(
        ["id", "current", "created_at", "algorithm", "runtime", "dataset", "rows", "metrics", "model_artifact_path"],
        [
            [
                s.id,
                "*" if s.is_current else ("archived" if s.archived_at else ""),
                s.created_at,
                s.algorithm,
                s.runtime.answering,
                s.dataset,
                s.training_rows,
                ", ".join(f"{k}={v:.4f}" for k, v in sorted(s.metrics.items())),
                s.model_artifact_path,
            ]
            for s in sets
        ],
    )
    if next_page_token:  # in the table, after it: on stderr it would print before the table on a terminal
        table += f"\n{len(sets)} set(s) shown, newest first; more exist: --limit N for the first N, --all for every one"
    return document, table


def _listed_sets(client: PredserveClient, args: argparse.Namespace) -> tuple[list[pb.PredictionSet], str]:
    """The sets the flags ask for, newest first, and the next_page_token after the last of them ("" when
    none is left). Not client.iter_prediction_sets: each page asks for no more than --limit still lacks, so
    that the listing ends on a page boundary and its token continues right after the last set shown."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: list at least 1 set, or every one with --all")
    created_after = _parse_time("--created-after", args.created_after) if args.created_after else None
    sets: list[pb.PredictionSet] = []
    token = args.page_token
    while True:
        page = client.list_prediction_sets(
            args.model_type,
            page_size=_sets_page_size(args, len(sets)),
            page_token=token,
            current_only=args.current_only,
            exclude_archived=args.exclude_archived,
            created_after=created_after,
        )
        sets += page.prediction_sets
        token = page.next_page_token
        wants_more = args.all or (args.limit is not None and len(sets) < args.limit)
        if not token or not wants_more:
            return sets, token


def _sets_page_size(args: argparse.Namespace, listed: int) -> int:
    """0, the server's default, for the one page shown without --limit or --all."""
    if args.all:
        return SETS_PER_CALL
    if args.limit is not None:
        return min(SETS_PER_CALL, args.limit - listed)
    return 0


def _parse_time(flag: str, text: str) -> dt.datetime:
    # Without an offset a time is UTC, as the created_at times that `sets` shows are.
    try:
        moment = dt.datetime.fromisoformat(text)
        return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        raise UsageError(f"{flag} {text!r} is not an ISO-8601 time, such as 2026-01-05T12:00:00Z") from None


def _runtime_document(runtime: pb.RuntimeInfo) -> dict[str, Any]:
    return {
        "answering": runtime.answering,
        "library_version": runtime.library_version,
        "rows_checked": runtime.rows_checked,
        "max_deviation": runtime.max_deviation,
        "note": runtime.note,
    }


def _set_document(s: pb.PredictionSet) -> dict[str, Any]:
    return {
        "id": s.id,
        "model_type": s.model_type,
        "dataset": s.dataset,
        "created_at": s.created_at,
        "is_current": s.is_current,
        "metrics": dict(s.metrics),
        "algorithm": s.algorithm,
        "params": dict(s.params),
        "model_artifact_path": s.model_artifact_path,
        "artifact_sha256": s.artifact_sha256,
        "artifact_size_bytes": s.artifact_size_bytes,
        "sklearn_version": s.sklearn_version,
        "joblib_version": s.joblib_version,
        "training_rows": s.training_rows,
        "fit_seconds": s.fit_seconds,
        "origin": s.origin,
        "archived_at": s.archived_at,
        "runtime": _runtime_document(s.runtime),
        "input_schema": _schema_document(s.input_schema),
    }


def _datasets(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    datasets = client.list_datasets().datasets
    document = {
        "datasets": [
            {
                "name": d.name,
                "rows": d.rows,
                "target_type": d.target_type,
                "columns": [{"name": c.name, "type": _type_name(c.type), "missing": c.missing} for c in d.columns],
            }
            for d in datasets
        ]
    }
    table = format_table(
        ["dataset", "rows", "target", "columns (type, missing values)"],
        [
            [
                d.name,
                d.rows,
                d.target_type,
                ", ".join(
                    f"{c.name}: {_type_name(c.type)}" + (f" ({c.missing} missing)" if c.missing else "")
                    for c in d.columns
                ),
            ]
            for d in datasets
        ],
    )
    return document, table


def _health(client: PredserveClient, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    status = client.health()
    return {"status": status}, status


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _parse_row(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--row {text!r} is not a comma-separated list of numbers") from None


def _key_values(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {pair!r} is not KEY=VALUE")
        params[key] = value
    return params


def _builtin_rows(name: str) -> tuple[list[str], list[Row]]:
    try:
        from sklearn import datasets
    except ImportError:
        raise UsageError(
            "--builtin reads the datasets scikit-learn ships, and scikit-learn is not installed: "
            "pip install scikit-learn (the server extra, predserve[server], has it)"
        ) from None

    bunch = getattr(datasets, f"load_{name}")()
    rows = [(list(map(float, x)), _native(y)) for x, y in zip(bunch.data, bunch.target, strict=True)]
    return [str(n).replace(" ", "_") for n in bunch.feature_names], rows


def _native(value: Any) -> TargetValue:
    number = float(value)
    return int(number) if number.is_integer() else number


if __name__ == "__main__":
    sys.exit(main())
