"""The spectra the model trains on and encodes, and the account of every row read.

A :class:`SpectraSet` holds one row per star: ``values`` and ``errors`` of
shape (n_stars, n_inputs), source ids and any label columns. Rows with a
non-finite value or error, a non-positive error, or a missing or
non-positive G flux are set aside: counted and listed with their row number
and reason in :class:`RowAccounting`, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from ..core.constants import GAIAXPY_DEFAULT_GRID_NM
from ..core.errors import SpectraError


@dataclass
class RowAccounting:
    """Every row read, kept and set aside, with the reason for each set-aside row.

    Attributes:
        source: file (or description) the rows came from.
        rows_read: rows in the input.
        set_aside: list of (row_number, reason, column) for rejected rows:
            0-based row number, the reason, and the first offending input
            column (index into the spectrum).
    """

    source: str
    rows_read: int = 0
    set_aside: List[tuple] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def rows_set_aside(self) -> int:
        return len(self.set_aside)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.rows_set_aside

    def reasons(self) -> Dict[str, int]:
        return dict(Counter(reason for _, reason, _ in self.set_aside))

    def to_dict(self, max_rows_listed: int = 1000) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "rows_set_aside": self.rows_set_aside, "reasons": self.reasons(),
                "set_aside_rows": [{"row": int(r), "reason": why, "input_column": int(c)}
                                   for r, why, c in self.set_aside[:max_rows_listed]],
                "notes": list(self.notes)}

    def summary(self) -> str:
        text = (f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}, "
                f"set aside {self.rows_set_aside}")
        if self.set_aside:
            text += " (" + "; ".join(f"{n} {why}" for why, n in self.reasons().items()) + ")"
        return text


@dataclass
class SpectraSet:
    """Validated spectra ready for the model.

    Attributes:
        values: float32 array (n_stars, n_inputs): flux samples or G-flux
            normalised coefficients.
        errors: float32 array (n_stars, n_inputs), all positive.
        source_id: int64 array (n_stars,).
        kind: ``sampled`` or ``coefficients``.
        wavelength_nm: grid of sampled spectra (None for coefficients or an
            unknown grid).
        labels: per-star columns other than the spectra (teff, logg, ...).
        normalisation: how brightness was removed (``phot_g_mean_flux``,
            ``medflux (applied upstream)``, ``none``).
        accounting: the row accounting of the read.
        input_row: each star's row number in the input (rows set aside leave gaps).
    """

    values: np.ndarray
    errors: np.ndarray
    source_id: np.ndarray
    kind: str = "sampled"
    wavelength_nm: Optional[np.ndarray] = None
    labels: Optional[pd.DataFrame] = None
    normalisation: str = "none"
    accounting: Optional[RowAccounting] = None
    input_row: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.input_row is None:
            self.input_row = np.arange(self.values.shape[0], dtype=np.int64)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def n_inputs(self) -> int:
        return self.values.shape[1]

    def subset(self, index) -> "SpectraSet":
        """Rows ``index`` (an integer array or boolean mask) as a new set."""
        index = np.asarray(index)
        labels = None if self.labels is None else self.labels.iloc[index].reset_index(drop=True)
        return SpectraSet(self.values[index], self.errors[index], self.source_id[index],
                          self.kind, self.wavelength_nm, labels, self.normalisation,
                          self.accounting, self.input_row[index])

    def input_names(self) -> List[str]:
        """A name per input: ``flux_336nm`` ... or ``bp_0`` ... ``rp_54``."""
        if self.kind == "coefficients" and self.n_inputs % 2 == 0:
            half = self.n_inputs // 2
            return [f"bp_{i}" for i in range(half)] + [f"rp_{i}" for i in range(half)]
        if self.wavelength_nm is not None:
            return [f"flux_{w:g}nm" for w in self.wavelength_nm]
        return [f"input_{i}" for i in range(self.n_inputs)]

    @classmethod
    def from_arrays(cls, values, errors, source_id=None, kind: str = "sampled",
                    wavelength_nm=None, labels: Optional[pd.DataFrame] = None,
                    source: str = "<arrays>", normalisation: str = "none",
                    row_problems: Sequence[tuple] = (), allow_empty: bool = False
                    ) -> "SpectraSet":
        """Validate arrays into a set; bad rows are set aside and counted.

        Args:
            values: array (n_stars, n_inputs).
            errors: array of the same shape, positive.
            source_id: optional int array (n_stars,); row numbers if None.
            kind: ``sampled`` or ``coefficients``.
            wavelength_nm: optional grid (n_inputs,).
            labels: optional per-star DataFrame (n_stars rows).
            source: name used in messages.
            normalisation: how brightness was removed, recorded with the model.
            row_problems: (mask, reason) pairs checked before the numeric checks,
                e.g. a missing band or a missing G flux.
            allow_empty: return an empty set, with its accounting, where every
                row is set aside (a store's shard read alone) instead of raising.

        Returns:
            The validated set.

        Raises:
            SpectraError: empty input, mismatched shapes, or no usable row.
        """
        values = np.asarray(values, dtype=np.float64)
        errors = np.asarray(errors, dtype=np.float64)
        if values.ndim != 2:
            raise SpectraError(f"{source}: spectra must be a 2-D array (n_stars, n_inputs), "
                               f"got shape {values.shape}")
        if values.shape[0] == 0:
            raise SpectraError(f"{source}: the table holds no rows")
        if errors.shape != values.shape:
            raise SpectraError(f"{source}: errors have shape {errors.shape}, expected the "
                               f"shape of the values {values.shape}")
        n = values.shape[0]
        accounting = RowAccounting(source, rows_read=n)
        if source_id is None:
            source_id = np.arange(n, dtype=np.int64)
            accounting.notes.append("no source_id column: row numbers used as ids")
        source_id = np.asarray(source_id, dtype=np.int64)
        if source_id.shape != (n,):
            raise SpectraError(f"{source}: source_id has shape {source_id.shape}, expected ({n},)")
        if labels is not None and len(labels) != n:
            raise SpectraError(f"{source}: labels have {len(labels)} rows, spectra {n}")
        keep = set_aside_bad_rows(values, errors, accounting, row_problems)
        if not keep.any() and not allow_empty:
            raise SpectraError(f"{accounting.summary()}: no usable row left")
        note_duplicates(source_id[keep], accounting)
        if wavelength_nm is None and kind == "sampled" and values.shape[1] == len(GAIAXPY_DEFAULT_GRID_NM):
            wavelength_nm = GAIAXPY_DEFAULT_GRID_NM
        kept_labels = None if labels is None else labels[keep].reset_index(drop=True)
        return cls(values[keep].astype(np.float32), errors[keep].astype(np.float32),
                   source_id[keep], kind,
                   None if wavelength_nm is None else np.asarray(wavelength_nm, dtype=np.float64),
                   kept_labels, normalisation, accounting, np.flatnonzero(keep))



#: The note :func:`note_duplicates` adds to an account.
DUPLICATES_NOTE = "source_ids (kept, not merged; outputs carry the row number too)"


def note_duplicates(source_id: np.ndarray, accounting: RowAccounting) -> None:
    """Note in ``accounting`` how many kept rows share a source_id (they are kept)."""
    dup = pd.Series(source_id).duplicated(keep=False)
    if dup.any():
        accounting.notes.append(f"{int(dup.sum())} kept rows share "
                                f"{pd.Series(source_id)[dup].nunique()} {DUPLICATES_NOTE}")


def set_aside_bad_rows(values: np.ndarray, errors: np.ndarray, accounting: RowAccounting,
                       row_problems: Sequence[tuple] = ()) -> np.ndarray:
    """Mask of usable rows; each other row is recorded with the first problem found."""
    checks = [(np.broadcast_to(np.asarray(mask, bool)[:, None], values.shape), reason)
              for mask, reason in row_problems] + [
        (~np.isfinite(values), "non-finite value"),
        (~np.isfinite(errors), "non-finite error"),
        (errors <= 0, "zero or negative error"),
    ]
    keep = np.ones(values.shape[0], dtype=bool)
    for bad, reason in checks:
        rows = np.flatnonzero(bad.any(axis=1) & keep)
        first_column = bad[rows].argmax(axis=1)
        accounting.set_aside.extend(zip(rows.tolist(), [reason] * len(rows),
                                        first_column.tolist()))
        keep[rows] = False
    accounting.set_aside.sort()
    return keep


