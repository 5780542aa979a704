"""One row of an XP file: arrays parsed from text, names and layouts made the store's.

Every reader of :mod:`xpsvae.ingestion` gives rows as ``(row number, raw text
or None, record)``, where a record maps the archive's snake_case names to
values. :func:`normalise_record` (coefficients) and
:func:`normalise_sampled_record` check a record and give the store's row; a
row they refuse raises :class:`~xpsvae.core.errors.XPParseError`, whose
message the store keeps with the row it sets aside.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import pyarrow as pa

from ..core.constants import (
    BANDS,
    DR3_BASIS_IDS,
    FLAT_COEFFICIENT,
    GAIAXPY_DEFAULT_GRID_NM,
    no_band,
)
from ..core.errors import SpectraError, XPParseError

_band_fields = []
for _b in BANDS:
    # Errors and correlations are float32, as the archive publishes them.
    _band_fields += [pa.field(f"{_b}_coefficients", pa.list_(pa.float64())),
                     pa.field(f"{_b}_coefficient_errors", pa.list_(pa.float32())),
                     pa.field(f"{_b}_coefficient_correlations", pa.list_(pa.float32())),
                     pa.field(f"{_b}_n_relevant_bases", pa.int32()),
                     pa.field(f"{_b}_standard_deviation", pa.float64()),
                     pa.field(f"{_b}_basis_function_id", pa.int32()),
                     pa.field(f"{_b}_missing", pa.bool_())]
#: Sampled spectra (XP_SAMPLED DataLink files, GaiaXPy calibrate output, flux tables): a store
#: holds either coefficients or sampled spectra on one wavelength grid (in the manifest).
SAMPLED_BATCH_SCHEMA = pa.schema([pa.field("source_id", pa.int64()),
                                  pa.field("flux", pa.list_(pa.float64())),
                                  pa.field("flux_error", pa.list_(pa.float64())),
                                  pa.field("input_row", pa.int64())])
#: A batch of rows before the G-flux join: the store's columns that come from the XP file.
BATCH_SCHEMA = pa.schema([pa.field("source_id", pa.int64()), *_band_fields,
                          pa.field("input_row", pa.int64())])


@dataclass
class Batch:
    """Consecutive rows of one input file.

    ``table`` holds rows the fast path has already parsed and checked (in
    BATCH_SCHEMA, with ``input_row``); ``records`` holds rows to check one by
    one, as ``(row, raw text or None, record or XPParseError)``.
    """

    records: List[tuple] = field(default_factory=list)
    table: Optional[pa.Table] = None
    raw_line: Callable[[int], Optional[str]] = lambda row: None

    @property
    def rows(self) -> int:
        return len(self.records) + (self.table.num_rows if self.table is not None else 0)


def parse_array_text(text: Optional[str]) -> Optional[np.ndarray]:
    """An array serialised as text: ``"(a, b, ...)"`` (DataLink CSV), ``"[a,b,...]"`` (ECSV).

    Args:
        text: the field; empty, ``"null"``, ``"()"`` or ``"[]"`` mean a missing array.

    Returns:
        float64 array, or None for a missing array.

    Raises:
        XPParseError: brackets that do not match, or an element that is not a number.
    """
    if text is None:
        return None
    stripped = text.strip()
    if stripped in ("", "null", "NULL", "()", "[]", "--"):
        return None
    opened, closed = stripped[:1], stripped[-1:]
    pairs = {"(": ")", "[": "]"}
    if (opened in pairs) != (closed in pairs.values()) or \
            (opened in pairs and pairs[opened] != closed):
        raise XPParseError(f"unbalanced brackets in array text {stripped[:40]!r}")
    body = stripped[1:-1] if opened in pairs else stripped
    parts = [p for p in re.split(r"[,\s]+", body.strip()) if p]
    if not parts:
        return None
    try:
        return np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError as exc:
        raise XPParseError(f"not a number in array text: {exc}") from None


def _as_array(value) -> Optional[np.ndarray]:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_array_text(value)
    if np.ma.isMaskedArray(value):
        if np.ma.getmaskarray(value).all():
            return None
        value = np.ma.filled(value.astype(np.float64), np.nan)
    arr = np.asarray(value, dtype=np.float64).ravel()
    return arr if arr.size else None


def _as_number(value) -> Optional[float]:
    if value is None or value is np.ma.masked or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise XPParseError(f"not a number: {str(value)[:30]!r}") from None
    return None if np.isnan(number) else number


def _unflatten(record: dict) -> dict:
    """bp_coeff_0.. / e_bp_coeff_0.. columns into arrays (the xp_coefficients_2000 layout)."""
    flat = {}
    for key in list(record):
        m = FLAT_COEFFICIENT.match(key)
        if m:
            flat.setdefault((bool(m.group(1)), m.group(2)), {})[int(m.group(3))] = record.pop(key)
    for (is_err, band), cells in flat.items():
        name = f"{band}_coefficient_errors" if is_err else f"{band}_coefficients"
        record[name] = np.array([_as_number(cells[i]) if _as_number(cells[i]) is not None
                                 else np.nan for i in sorted(cells)])
    return record


def normalise_record(record: dict) -> dict:
    """One archive row into the store's fields; raises XPParseError naming the problem."""
    record = _unflatten(dict(record))
    source_id = record.get("source_id")
    if source_id is None or (isinstance(source_id, str) and not source_id.strip()):
        raise XPParseError("missing source_id")
    try:
        out = {"source_id": int(source_id)}
    except (TypeError, ValueError):
        raise XPParseError(f"source_id {str(source_id)[:30]!r} is not an integer") from None
    for band in BANDS:
        coeff = _as_array(record.get(f"{band}_coefficients"))
        missing = coeff is None
        out[f"{band}_missing"] = missing
        if missing:
            for key in ("coefficients", "coefficient_errors", "coefficient_correlations",
                        "n_relevant_bases", "standard_deviation", "basis_function_id"):
                out[f"{band}_{key}"] = None
            continue
        errors = _as_array(record.get(f"{band}_coefficient_errors"))
        corr = _as_array(record.get(f"{band}_coefficient_correlations"))
        n = len(coeff)
        expected = _as_number(record.get(f"{band}_n_parameters"))
        if expected is not None and n != int(expected):
            raise XPParseError(f"{band}_coefficients: {n} values, n_parameters says {int(expected)}")
        if errors is None or len(errors) != n:
            raise XPParseError(f"{band}_coefficient_errors: "
                               f"{'missing' if errors is None else len(errors)} values for "
                               f"{n} coefficients")
        if corr is not None and len(corr) != n * (n - 1) // 2:
            raise XPParseError(f"{band}_coefficient_correlations: {len(corr)} values, expected "
                               f"{n * (n - 1) // 2}")
        basis = _as_number(record.get(f"{band}_basis_function_id"))
        if basis is not None and int(basis) not in DR3_BASIS_IDS[band]:
            raise XPParseError(f"unknown basis id: {band}_basis_function_id = {int(basis)} "
                               f"(DR3 uses {sorted(DR3_BASIS_IDS[band])})")
        relevant = _as_number(record.get(f"{band}_n_relevant_bases"))
        out.update({f"{band}_coefficients": coeff, f"{band}_coefficient_errors": errors,
                    f"{band}_coefficient_correlations": corr,
                    f"{band}_n_relevant_bases": None if relevant is None else int(relevant),
                    f"{band}_standard_deviation": _as_number(record.get(f"{band}_standard_deviation")),
                    f"{band}_basis_function_id": None if basis is None else int(basis)})
    if out["bp_missing"] and out["rp_missing"]:
        raise XPParseError("no BP and no RP spectrum")
    return out


def is_sampled_record(record: dict) -> bool:
    """A row of sampled spectra (flux on a grid) rather than of coefficients."""
    return "flux" in record and "bp_coefficients" not in record and \
        not any(FLAT_COEFFICIENT.match(k) for k in record)


def normalise_sampled_record(record: dict, n_samples: int) -> dict:
    """One row of sampled spectra into the sampled store's fields; raises XPParseError."""
    source_id = record.get("source_id")
    try:
        out = {"source_id": int(source_id)}
    except (TypeError, ValueError):
        raise XPParseError(f"source_id {str(source_id)[:30]!r} is not an integer") from None
    flux = _as_array(record.get("flux"))
    errors = _as_array(record.get("flux_error"))
    if flux is None:
        raise XPParseError("no flux")
    if len(flux) != n_samples:
        raise grid_length_error(len(flux), n_samples)
    if errors is None or len(errors) != len(flux):
        raise XPParseError(f"flux_error: {'missing' if errors is None else len(errors)} values "
                           f"for {len(flux)} samples")
    out.update(flux=flux, flux_error=errors)
    return out


def grid_length_error(n_flux: int, n_samples: int) -> XPParseError:
    """A row whose flux has another number of samples than the store's grid."""
    return XPParseError(f"flux: {n_flux} samples, the wavelength grid has {n_samples}")


def sampled_grid(name: str, record: dict, wavelength: Optional[np.ndarray]) -> np.ndarray:
    """The wavelength grid (nm) of a file of sampled spectra.

    In order: ``wavelength`` given by the caller; a ``wavelength`` column; the
    GaiaXPy companion file ``<stem>_sampling.csv`` (column ``pos``) beside the
    file; GaiaXPy's default grid (336-1020 nm in 2 nm) when the spectra have
    its 343 samples (the XP_SAMPLED DataLink product uses it).

    Raises:
        SpectraError: none of these gives a grid of the spectra's length.
    """
    flux = _as_array(record.get("flux"))
    n = 0 if flux is None else len(flux)
    if wavelength is not None:
        grid = np.asarray(wavelength, dtype=np.float64)
    elif record.get("wavelength") is not None:
        grid = _as_array(record["wavelength"])
    else:
        stem = re.sub(r"\.(csv|ecsv)(\.gz)?$", "", name, flags=re.I)
        companion = stem + "_sampling.csv"
        if os.path.exists(companion):
            with open(companion, newline="") as f:
                rows = list(csv.DictReader(f))
            if not rows or "pos" not in rows[0]:
                raise SpectraError(f"{companion}: expected GaiaXPy's 'pos' column")
            grid = parse_array_text(rows[0]["pos"])
        else:
            grid = GAIAXPY_DEFAULT_GRID_NM if n == len(GAIAXPY_DEFAULT_GRID_NM) else None
    if grid is None or len(grid) != n:
        raise SpectraError(f"{name}: sampled spectra of {n} samples and no wavelength grid of "
                           f"that length (give one: xpsvae ingest --wavelength START,STOP,STEP, a "
                           "'wavelength' column, or GaiaXPy's <name>_sampling.csv beside the file)")
    return grid


#: Why a row kept with inputs that carry no measurement is partial.
MISSING_INPUTS = "missing inputs (a NaN or infinite value, or an error not finite and positive)"


def partial_reason(row: dict) -> Optional[str]:
    """Why a normalised row is partial (kept, with some inputs unmeasured), or None.

    A band missing whole, or inputs whose value is not finite or whose error is not
    finite and positive: the row is kept, and a model reading it leaves those inputs
    out of its likelihood (:mod:`xpsvae.io.spectra`).
    """
    if "flux" in row:
        pairs = [("flux", "flux_error")]
    else:
        for band in BANDS:
            if row.get(f"{band}_missing"):
                return no_band(band)
        pairs = [(f"{b}_coefficients", f"{b}_coefficient_errors") for b in BANDS]
    for value, error in pairs:
        values = np.asarray(row[value], dtype=np.float64)
        errors = np.asarray(row[error], dtype=np.float64)
        if not (np.isfinite(values) & np.isfinite(errors) & (errors > 0)).all():
            return MISSING_INPUTS
    return None
