"""Classes of a trusted module (--trusted-module tests.faults.noisy_artifacts) that print when unpickled.

The allow-list lets a trusted module's code run; what it prints lands in the import probe's stdout,
beside the probe's own answer.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from sklearn.linear_model import Ridge


class RidgePrintingAtExit(Ridge):
    """A working regressor whose loading registers a print that runs after the probe has answered."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        atexit.register(print, "goodbye from the pickle")
        super().__setstate__(state)


class PrintsAndExits:
    """Prints a line that is not an answer, then ends the process with status 0 before any answer."""

    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        os.write(1, b"not an answer\n")
        os._exit(0)
