"""A fitted StandardScaler as two arrays, applied as scikit-learn applies it so results stay bit-identical."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.preprocessing import StandardScaler

from predserve.server.runtimes.stored import require

MEAN_KEY = "scaler_mean"
SCALE_KEY = "scaler_scale"


@dataclass(frozen=True)
class Standardization:
    # None when the scaler was fitted with with_mean / with_std False: the step is skipped, as sklearn skips it.
    mean: np.ndarray | None
    scale: np.ndarray | None

    @classmethod
    def of(cls, scaler: StandardScaler) -> Standardization:
        mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
        scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None
        return cls(mean, scale)

    def apply(self, rows: np.ndarray) -> np.ndarray:
        # StandardScaler.transform: X -= mean_, then X /= scale_ (scale_ already has zeros replaced by ones)
        if self.mean is not None:
            rows = rows - self.mean
        if self.scale is not None:
            rows = rows / self.scale
        return rows

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        if self.mean is not None:
            arrays[MEAN_KEY] = self.mean
        if self.scale is not None:
            arrays[SCALE_KEY] = self.scale
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], format_name: str, n_features: int) -> Standardization | None:
        present = [key for key in (MEAN_KEY, SCALE_KEY) if key in arrays]
        if not present:
            return None
        for array in require(arrays, format_name, *present):
            if array.shape != (n_features,) or array.dtype != np.float64:
                raise ValueError(f"corrupt {format_name} runtime data: scaler array {array.dtype}{array.shape}")
        return cls(arrays.get(MEAN_KEY), arrays.get(SCALE_KEY))
