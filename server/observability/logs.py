"""--log-format text|json and --log-level: how the server's log lines look, and which are written.

In JSON each line is one object: time (ISO 8601, UTC), level, logger, message, pid, and the fields the
event was logged with (`extra=`), such as model_type, prediction_set_id, path, duration_ms, method, code.
The text format keeps the message alone: it already names the same values, for a person to read.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import sys
from typing import Any

# What every LogRecord has; anything else on a record came from the event's `extra=` and is its own field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure_logging(log_format: LogFormat, level: LogLevel) -> None:
    """Replaces whatever handlers the root logger had: one stream to stderr, in the format asked for."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.name)
    # A library's warning (numpy's overflow on a caller's extreme row, a deprecation) is a log line in the
    # chosen format, not a bare line on stderr that breaks a JSON log's one-document-per-line contract.
    logging.captureWarnings(True)
    # boto3 logs where it found each setting at INFO; the artifact store logs what an operator needs itself.
    for chatty in ("botocore", "boto3", "urllib3"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
