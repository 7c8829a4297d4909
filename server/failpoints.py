"""Named crash points for fault-injection tests.

When the environment variable PREDSERVE_FAILPOINT names a point, reaching that point kills the
process with SIGKILL, exactly like a power cut or an OOM kill would, so tests can prove that no
such moment loses a model or leaves a row pointing at a missing file.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "PREDSERVE_FAILPOINT"

AFTER_TEMP_WRITE = "after_temp_write"
AFTER_RENAME = "after_rename"
AFTER_UPLOAD = "after_upload"  # an object store holds the artifact; its compiled form and row are still to come
AFTER_COMMIT = "after_commit"
DURING_FIT = "during_fit"
MID_MIGRATION = "mid_migration"


def reach(point: str) -> None:
    if os.environ.get(ENV_VAR) == point:
        os.kill(os.getpid(), signal.SIGKILL)
