"""Classes of a trusted module that misbehave when unpickled: only the import probe's process stops them."""

from __future__ import annotations

import os
import time
from typing import Any


class ExitsWhenLoaded:
    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        os._exit(3)


class HangsWhenLoaded:
    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(60)
