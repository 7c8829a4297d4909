"""The one check of who else may write the files predserve trusts (the database, the models directory)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

logger = logging.getLogger(__name__)


def warn_if_others_can_write(path: Path, what: str, risk: str, fix: str) -> None:
    """Logs a warning when group or others may write `path`: whoever can write it can `risk`."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o022:
        logger.warning("%s %s is writable by group or others (mode %04o): %s; %s", what, path, mode, risk, fix)
