"""Per-input standardisation (the paper's Section 2.1), fitted on the training split and
saved with the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Rows at a time in :meth:`Standardizer.fit` and in :meth:`Standardizer.transform` of chosen
#: rows: a few MB of float64 working copies, whatever the number of stars.
CHUNK_ROWS = 8192


@dataclass
class Standardizer:
    """Zero mean, unit variance per input; errors divided by the same standard deviation.

    Attributes:
        mean: per-input mean over the training stars, shape (n_inputs,).
        std: per-input standard deviation over the training stars, shape (n_inputs,).
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, rows: Optional[np.ndarray] = None) -> "Standardizer":
        """Fit on training values of shape (n_stars, n_inputs), or on their ``rows``.

        An input with zero spread keeps std 1, so it passes through centred
        instead of dividing by zero. The sums run in float64 over
        :data:`CHUNK_ROWS` rows at a time, added row after row as numpy's
        ``mean`` and ``std`` add them, so the statistics are theirs to the
        bit (tested) without a float64 copy of every training star.
        """
        values = np.asarray(values)
        rows = np.arange(len(values)) if rows is None else np.asarray(rows)
        if values.ndim != 2 or len(rows) < 2:
            raise ValueError(f"need at least 2 training spectra of shape (n_stars, n_inputs), "
                             f"got {values.shape}" + ("" if len(rows) == len(values) else
                                                      f" with {len(rows)} rows chosen"))

        def sum_of(term):
            total = np.zeros(values.shape[1])
            for start in range(0, len(rows), CHUNK_ROWS):
                chunk = np.asarray(values[rows[start:start + CHUNK_ROWS]], dtype=np.float64)
                # the running total as the first row: one sequential reduction, as numpy's
                total = np.add.reduce(np.vstack([total[None], term(chunk)]), axis=0)
            return total
        mean = sum_of(lambda chunk: chunk) / len(rows)

        def squared_deviation(chunk):
            chunk -= mean
            return np.multiply(chunk, chunk, out=chunk)
        std = np.sqrt(sum_of(squared_deviation) / len(rows))
        std[~(std > 0)] = 1.0
        return cls(mean, std)

    @property
    def n_inputs(self) -> int:
        return self.mean.shape[0]

    def transform(self, values: np.ndarray, errors: np.ndarray | None = None,
                  rows: Optional[np.ndarray] = None):
        """Standardised values (and errors, if given) as float32.

        Args:
            values, errors: (n_stars, n_inputs).
            rows: the rows to standardise, in this order (default: all). They
                are written chunk by chunk into the result, so no copy of the
                chosen rows is made first.
        """
        self._check(values)
        # float32 arithmetic on float32 data: half the memory traffic of float64 and no copies
        mean, inv_std = self.mean.astype(np.float32), (1.0 / self.std).astype(np.float32)
        if rows is None:
            x = (np.asarray(values, dtype=np.float32) - mean) * inv_std
            return x if errors is None else (x, np.asarray(errors, dtype=np.float32) * inv_std)
        rows = np.asarray(rows)
        x = np.empty((len(rows), values.shape[1]), dtype=np.float32)
        err = None if errors is None else np.empty_like(x)
        for start in range(0, len(rows), CHUNK_ROWS):
            at = rows[start:start + CHUNK_ROWS]
            x[start:start + len(at)] = (np.asarray(values[at], dtype=np.float32) - mean) * inv_std
            if err is not None:
                err[start:start + len(at)] = np.asarray(errors[at], dtype=np.float32) * inv_std
        return x if err is None else (x, err)

    def inverse_values(self, standardised: np.ndarray) -> np.ndarray:
        """Spectra back in the input's units."""
        self._check(standardised)
        return standardised * self.std + self.mean

    def inverse_scale(self, standardised_sigma: np.ndarray) -> np.ndarray:
        """A standard deviation (error or scatter) back in the input's units."""
        self._check(standardised_sigma)
        return standardised_sigma * self.std

    def _check(self, a) -> None:
        shape = np.shape(a)
        if len(shape) != 2 or shape[1] != self.n_inputs:
            raise ValueError(f"expected an array of shape (n_stars, {self.n_inputs}), got {shape}")

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardizer":
        mean = np.asarray(d["mean"], dtype=np.float64)
        std = np.asarray(d["std"], dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"standardisation statistics have shapes {mean.shape} and {std.shape}; "
                             "expected two equal 1-D vectors")
        return cls(mean, std)
