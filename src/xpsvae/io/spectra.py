"""The spectra the model trains on and encodes, and the account of every row read.

A :class:`SpectraSet` holds one row per star: ``values`` and ``errors`` of
shape (n_stars, n_inputs), source ids and any label columns.

An input with a non-finite value or error, or a non-positive error (a masked
sample, a band missing whole) carries no measurement: it is NaN in both
arrays, and its row is kept as *partial*, counted by reason. A model leaves
such inputs out of its likelihood. A row with fewer than
:data:`MIN_OBSERVED_FRACTION` of its inputs measured, or with a whole-row
problem (a missing or non-positive G flux), is set aside. Every row is
counted and each one set aside is listed with its row number and reason in
:class:`RowAccounting`, never silently dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..core.constants import GAIAXPY_DEFAULT_GRID_NM
from ..core.errors import SpectraError

#: The least share of a spectrum's inputs that must be measured for its row to be kept
#: (partial) rather than set aside: half, so that a spectrum with one of its two bands
#: missing whole is kept. Below it the latent would rest on more extrapolation than data
#: (benchmarks/masked_inputs.py measures the latent shift as inputs go missing).
MIN_OBSERVED_FRACTION = 0.5
#: The accounting note of a table read without a source_id column.
ROW_NUMBER_IDS_NOTE = "no source_id column: row numbers used as ids"


@dataclass
class RowAccounting:
    """Every row read, kept and set aside, with the reason for each set-aside row.

    Attributes:
        source: file (or description) the rows came from.
        rows_read: rows in the input.
        partial: list of (row_number, reason, column) for rows kept with some
            inputs unmeasured (NaN in the set).
        set_aside: list of (row_number, reason, column) for rejected rows:
            0-based row number, the reason, and the first offending input
            column (index into the spectrum).
    """

    source: str
    rows_read: int = 0
    set_aside: List[tuple] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    #: (row_number, reason, first unmeasured input) for each row kept with inputs missing.
    partial: List[tuple] = field(default_factory=list)

    @property
    def rows_set_aside(self) -> int:
        return len(self.set_aside)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - self.rows_set_aside

    @property
    def rows_partial(self) -> int:
        return len(self.partial)

    def reasons(self) -> Dict[str, int]:
        return dict(Counter(reason for _, reason, _ in self.set_aside))

    def partial_reasons(self) -> Dict[str, int]:
        return dict(Counter(reason for _, reason, _ in self.partial))

    def to_dict(self, max_rows_listed: int = 1000) -> dict:
        return {"source": self.source, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "rows_set_aside": self.rows_set_aside, "reasons": self.reasons(),
                "set_aside_rows": [{"row": int(r), "reason": why, "input_column": int(c)}
                                   for r, why, c in self.set_aside[:max_rows_listed]],
                "rows_partial": self.rows_partial, "partial_reasons": self.partial_reasons(),
                "notes": list(self.notes)}

    def summary(self) -> str:
        text = f"{self.source}: read {self.rows_read} rows, kept {self.rows_kept}"
        if self.partial:
            text += f" ({self.rows_partial} partial: " + "; ".join(
                f"{n} {why}" for why, n in self.partial_reasons().items()) + ")"
        text += f", set aside {self.rows_set_aside}"
        if self.set_aside:
            text += " (" + "; ".join(f"{n} {why}" for why, n in self.reasons().items()) + ")"
        return text


@dataclass
class SpectraSet:
    """Validated spectra ready for the model.

    Attributes:
        values: float32 array (n_stars, n_inputs): flux samples or G-flux
            normalised coefficients.
        errors: float32 array (n_stars, n_inputs), positive; an input not
            measured is NaN here and in ``values`` (a partial row).
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
    def observed(self) -> np.ndarray:
        """(n_stars, n_inputs) bool: which inputs carry a measurement."""
        return np.isfinite(self.values)

    def complete(self) -> "SpectraSet":
        """The stars with every input measured (``self`` if all are)."""
        whole = self.observed.all(axis=1)
        return self if whole.all() else self.subset(np.flatnonzero(whole))

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
                    row_problems: Sequence[tuple] = (), allow_empty: bool = False,
                    input_problems: Sequence[tuple] = ()) -> "SpectraSet":
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
            row_problems: (mask, reason) pairs checked before the numeric checks
                that set a row aside, e.g. a missing G flux.
            input_problems: ((n_stars, n_inputs) mask, reason) pairs of inputs
                not measured, e.g. a band missing: the row is kept, partial.
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
            accounting.notes.append(ROW_NUMBER_IDS_NOTE)
        source_id = np.asarray(source_id, dtype=np.int64)
        if source_id.shape != (n,):
            raise SpectraError(f"{source}: source_id has shape {source_id.shape}, expected ({n},)")
        if labels is not None and len(labels) != n:
            raise SpectraError(f"{source}: labels have {len(labels)} rows, spectra {n}")
        keep, values, errors = set_aside_bad_rows(values, errors, accounting, row_problems,
                                                  input_problems)
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
                       row_problems: Sequence[tuple] = (), input_problems: Sequence[tuple] = ()
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows kept, values, errors): each row set aside is recorded with the first problem
    found; each row kept with inputs unmeasured is recorded as partial, those inputs NaN
    in the values and errors returned (new arrays; the ones given are left as they are)."""
    keep = np.ones(values.shape[0], dtype=bool)
    for mask, reason in row_problems:
        rows = np.flatnonzero(np.asarray(mask, bool) & keep)
        accounting.set_aside.extend((r, reason, 0) for r in rows.tolist())
        keep[rows] = False
    unmeasured = [(np.asarray(mask, bool), reason) for mask, reason in input_problems] + [
        (~np.isfinite(values), "non-finite value"),
        (~np.isfinite(errors), "non-finite error"),
        (~(errors > 0), "zero or negative error"),
    ]
    missing = np.zeros(values.shape, dtype=bool)
    why = np.full(values.shape[0], -1)
    for k, (mask, _) in enumerate(unmeasured):
        why[(why < 0) & mask.any(axis=1)] = k
        missing |= mask
    n_inputs = values.shape[1]
    least = int(np.ceil(MIN_OBSERVED_FRACTION * n_inputs))
    observed = n_inputs - missing.sum(axis=1)
    rows = np.flatnonzero((observed < least) & keep)
    accounting.set_aside.extend(
        (r, f"fewer than {least} of its {n_inputs} inputs measured",
         int(missing[r].argmax())) for r in rows.tolist())
    keep[rows] = False
    accounting.set_aside.sort()
    partial = np.flatnonzero(missing.any(axis=1) & keep)
    accounting.partial.extend((r, unmeasured[why[r]][1], int(missing[r].argmax()))
                              for r in partial.tolist())
    if len(partial):
        values = np.where(missing, np.nan, values)
        errors = np.where(missing, np.nan, errors)
    return keep, values, errors
