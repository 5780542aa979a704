"""The G-band flux by which each spectrum is divided (the paper's Section 2.1).

From the gaia_source tables given to ``xpsvae ingest --gaia-source``:
``phot_g_mean_flux``, else ``phot_g_mean_mag`` with the DR3 zero point. A
star they lack gets the synthetic G of its own spectrum
(:func:`xpsvae.flux.synthetic_g_flux`), and every row says where its G came
from (``g_flux_origin``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..core import machine
from ..core.constants import (
    BANDS,
    G_ORIGINS,
    G_ZERO_POINT,
    GAIAXPY_DEFAULT_GRID_NM,
    SYNTHETIC_G_ORIGIN,
    SYNTHETIC_G_SAMPLED_ORIGIN,
    file_kind,
)
from ..core.errors import SpectraError
from ..core.files import G_FLUX_DIR, G_FLUX_TABLES, atomic_path, write_json
from ..flux import synthetic_g_flux, synthetic_g_flux_from_sampled
from ..io.columns import arrow_lists_to_2d, column_to_1d
from ..io.tables import read_table_columns
from .fastcsv import read_header
from .inflate import open_binary
from .writer import SAMPLED_STORE_SCHEMA, STORE_SCHEMA

G_COLUMNS = ("source_id", "phot_g_mean_flux", "phot_g_mean_mag", "has_xp_continuous")
#: The arrays of a G-flux table, by name (``STORE/.g_flux/NAME.npy``).
G_FLUX_ARRAYS = ("ids", "flux", "origin")


def read_g_flux(paths: Sequence[str], counts: Optional[dict] = None, progress: bool = False,
                tables_at_once: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """G fluxes from gaia_source tables, as sorted arrays (17 bytes a star).

    ``phot_g_mean_flux`` where given, else ``phot_g_mean_mag`` converted with
    the DR3 zero point: ``10**(-0.4 (G - 25.6874))``. A star in several rows
    or tables takes its last flux, else its first magnitude. Where a table has
    ``has_xp_continuous`` (the archive's gaia_source does), only its stars
    with XP spectra are kept: a tenth of the 1.8 billion, the ones an XP
    file can name.

    Args:
        paths: gaia_source tables (Parquet, FITS, CSV, ECSV, gzip'd or not).
        counts: if given, filled in with ``rows_read``, ``rows_without_xp``
            (``has_xp_continuous`` false), ``rows_without_g`` (neither a
            positive flux nor a magnitude) and ``stars`` (distinct, with G).
        progress: a progress bar over the tables (the whole GaiaSource is
            3,386 files).
        tables_at_once: tables read at the same time, by threads (a gzip'd
            file inflates on one core); 0: one per core, at most 8.

    Returns:
        (source_id sorted, G flux in e-/s, origin code: an index into :data:`G_ORIGINS`).
    """
    # Rows in the order of preference: the fluxes last row first, then the magnitudes
    # first row first. A stable sort by source_id then puts each star's row to keep first,
    # with no key arrays beside the ids (the whole GaiaSource keeps 220 million stars).
    by_flux, by_mag = [], []
    start = without_xp = without_g = 0
    # Tables read several at once, in order: each gzip'd file inflates on one core, and
    # the whole GaiaSource is 3,386 of them.
    at_once = tables_at_once or min(8, machine.usable_cores())
    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(paths)))) as pool:
        for n, has_flux, has_mag, with_xp, sid, flux, mag in tqdm(
                pool.map(_g_rows, paths), total=len(paths), desc="gaia_source", unit="table",
                disable=not progress):
            without_xp += int(n - with_xp.sum())
            without_g += int((with_xp & ~(has_flux | has_mag)).sum())
            by_flux.append((sid[has_flux][::-1], flux[has_flux][::-1]))
            by_mag.append((sid[has_mag], 10 ** (-0.4 * (mag[has_mag] - G_ZERO_POINT))))
            start += n
    by_flux.reverse()
    codes = np.repeat(np.array([0, 1], np.int8), [sum(len(i) for i, _ in by_flux),
                                                   sum(len(i) for i, _ in by_mag)])
    id_parts = [i for i, _ in by_flux + by_mag]
    value_parts = [v for _, v in by_flux + by_mag]
    del by_flux, by_mag  # each part goes as soon as it is joined: memory peaks once, lower
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
    del id_parts
    values = np.concatenate(value_parts) if value_parts else np.zeros(0)
    del value_parts
    ranked = np.argsort(ids, kind="stable")
    ids = ids[ranked]
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    ranked = ranked[first]
    ids = ids[first]  # one array at a time, each old one gone before the next is made
    del first
    values = values[ranked]
    codes = codes[ranked]
    if counts is not None:
        counts.update(rows_read=start, rows_without_xp=without_xp, rows_without_g=without_g,
                      stars=len(ids))
    return ids, values, codes


def _g_rows(path: str) -> tuple:
    """One gaia_source table: (rows, has a flux, has only a magnitude, has XP spectra,
    source_id, flux, magnitude), the masks per row."""
    columns = _gaia_source_columns(path)
    sid = column_to_1d(columns["source_id"]).astype(np.int64)
    n = len(sid)
    flux = column_to_1d(columns["phot_g_mean_flux"]).astype(float) \
        if "phot_g_mean_flux" in columns else np.full(n, np.nan)
    mag = column_to_1d(columns["phot_g_mean_mag"]).astype(float) \
        if "phot_g_mean_mag" in columns else np.full(n, np.nan)
    with_xp = _has_xp(columns.get("has_xp_continuous"), n)
    has_flux = np.isfinite(flux) & (flux > 0) & with_xp
    has_mag = ~has_flux & np.isfinite(mag) & with_xp
    return n, has_flux, has_mag, with_xp, sid, flux, mag


def _has_xp(column, n: int) -> np.ndarray:
    """``has_xp_continuous`` as booleans; where the column or a value is missing: true."""
    if column is None:
        return np.ones(n, dtype=bool)
    if np.ma.isMaskedArray(column):
        return np.ma.filled(column, True).astype(bool)
    values = column_to_1d(column)
    if values.dtype == object:  # Arrow's nulls come as None
        return np.array([v is None or bool(v) for v in values], dtype=bool)
    return values.astype(bool)


def g_flux_table(store: str, paths: Sequence[str], progress: bool = False
                 ) -> Tuple[tuple, dict, Optional[str]]:
    """:func:`read_g_flux` of ``paths``, read once for a store and kept in ``STORE/.g_flux/``.

    Reading the bulk GaiaSource files is hours of work. A run again with the
    same tables (by path, size and modification time), after an interruption
    or with more XP files, maps the arrays kept by the last run instead.

    Returns:
        (the arrays, memory-mapped; their counts; the folder holding them, or
        None where no table is given).
    """
    if not paths:
        return no_g_flux(), {}, None
    key = [[os.path.abspath(p), stat.st_size, stat.st_mtime_ns]
           for p, stat in ((p, os.stat(p)) for p in paths)]
    folder = os.path.join(store, G_FLUX_DIR)
    try:
        with open(os.path.join(folder, G_FLUX_TABLES)) as f:
            kept = json.load(f)
        if kept["tables"] == key:
            return map_g_flux(folder), kept["counts"], folder
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none kept, or for other tables: read them
    counts: dict = {}
    arrays = read_g_flux(paths, counts, progress)
    with atomic_path(folder) as writing:
        shutil.rmtree(writing, ignore_errors=True)  # an interrupted run's
        os.makedirs(writing)
        for name, array in zip(G_FLUX_ARRAYS, arrays):
            np.save(os.path.join(writing, f"{name}.npy"), array)
        write_json(os.path.join(writing, G_FLUX_TABLES), {"tables": key, "counts": counts})
        shutil.rmtree(folder, ignore_errors=True)  # the last tables' (a folder is not replaced)
    return map_g_flux(folder), counts, folder


def no_g_flux() -> tuple:
    return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8)


def map_g_flux(folder: str) -> tuple:
    return tuple(np.load(os.path.join(folder, f"{n}.npy"), mmap_mode="r") for n in G_FLUX_ARRAYS)


def _gaia_source_columns(path: str) -> dict:
    """source_id, the G columns and has_xp_continuous of a gaia_source table; only those
    are read."""
    kind = file_kind(path)
    if kind == "csv":
        header, comments, delimiter = csv_header(path)
        wanted = [c for c in G_COLUMNS if c in header]
        _check_g_columns(path, wanted)
        # Types given, not inferred from the first block: a G column empty there would be
        # inferred as null and refuse the values that follow.
        types = {c: {"source_id": pa.int64(), "has_xp_continuous": pa.bool_()}.get(
            c, pa.float64()) for c in wanted}
        try:  # the bulk GaiaSource files have ~150 columns: Arrow reads just these
            table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(skip_rows=comments),
                                  parse_options=pcsv.ParseOptions(delimiter=delimiter),
                                  convert_options=pcsv.ConvertOptions(include_columns=wanted,
                                                                      column_types=types))
        except pa.ArrowInvalid as exc:
            raise SpectraError(f"{path}: cannot read the gaia_source table ({exc})") from exc
        return {c: table.column(c) for c in wanted}
    if kind == "parquet":
        wanted = [c for c in G_COLUMNS if c in pq.read_schema(path).names]
        _check_g_columns(path, wanted)
        table = pq.read_table(path, columns=wanted)
        return {c: table.column(c) for c in wanted}
    columns = read_table_columns(path)
    _check_g_columns(path, list(columns))
    return columns


def csv_header(path: str) -> Tuple[List[str], int, str]:
    """A CSV or ECSV file's column names, the number of lines before them, and its delimiter
    (:func:`~xpsvae.ingestion.fastcsv.read_header`)."""
    try:
        with open_binary(path) as f:
            found = read_header(f)
    except csv.Error as exc:  # a header line past the CSV module's field limit
        raise SpectraError(f"{path}: the header line cannot be read as CSV ({exc})") from None
    if found is None:
        raise SpectraError(f"{path}: no header line; an empty file or not a table")
    return found


def _check_g_columns(path: str, names: Sequence[str]) -> None:
    if "source_id" not in names:
        raise SpectraError(f"{path}: a gaia_source table needs a source_id column")
    if "phot_g_mean_flux" not in names and "phot_g_mean_mag" not in names:
        raise SpectraError(f"{path}: needs phot_g_mean_flux or phot_g_mean_mag")



def join_g_flux(table: pa.Table, path: str, g_ids: np.ndarray, g_flux: np.ndarray,
                 g_origin: np.ndarray, grid: Optional[np.ndarray] = None) -> pa.Table:
    """Add the store's G-flux and provenance columns (STORE_SCHEMA order): from gaia_source
    where it has the star, else the synthetic G of :func:`fill_synthetic_g` (sampled
    spectra: on ``grid``)."""
    ids = table.column("source_id").to_numpy()
    flux = np.full(len(ids), np.nan)
    origin = np.full(len(ids), "missing", dtype=object)
    if len(g_ids):
        at = np.minimum(np.searchsorted(g_ids, ids), len(g_ids) - 1)
        found = g_ids[at] == ids
        flux[found] = g_flux[at[found]]
        origin[found] = np.array(G_ORIGINS, dtype=object)[g_origin[at[found]]]
    schema = SAMPLED_STORE_SCHEMA if "flux" in table.column_names else STORE_SCHEMA
    columns = {name: table.column(name) for name in table.column_names}
    columns.update(phot_g_mean_flux=pa.array(flux), g_flux_origin=pa.array(origin, pa.string()),
                   input_file=pa.array(np.full(len(ids), path, dtype=object), pa.string()))
    return fill_synthetic_g(pa.table({name: columns[name] for name in schema.names},
                                      schema=schema), grid)


def fill_synthetic_g(table: pa.Table, grid: Optional[np.ndarray] = None) -> pa.Table:
    """Rows without a G flux from gaia_source get the synthetic one: from the coefficients
    where both bands are there, from sampled flux where it is on GaiaXPy's default grid."""
    todo = pc.equal(table.column("g_flux_origin"), "missing").to_numpy(zero_copy_only=False)
    sampled = "flux" in table.column_names
    if sampled and (grid is None or len(grid) != len(GAIAXPY_DEFAULT_GRID_NM)
                    or not np.allclose(grid, GAIAXPY_DEFAULT_GRID_NM)):
        return table  # another grid: the passband weights are for GaiaXPy's
    if not sampled:
        todo &= ~table.column("bp_missing").to_numpy(zero_copy_only=False) \
            & ~table.column("rp_missing").to_numpy(zero_copy_only=False)
    todo = np.flatnonzero(todo)
    if not len(todo):
        return table
    if sampled:
        flux_new = synthetic_g_flux_from_sampled(_rows(table, "flux", todo))
    else:
        flux_new = synthetic_g_flux(*[_rows(table, f"{band}_coefficients", todo)
                                      for band in BANDS])
    flux = table.column("phot_g_mean_flux").to_numpy(zero_copy_only=False).copy()
    origin = np.array(table.column("g_flux_origin").to_pylist(), dtype=object)
    ok = np.isfinite(flux_new)
    flux[todo[ok]] = flux_new[ok]
    origin[todo[ok]] = SYNTHETIC_G_SAMPLED_ORIGIN if sampled else SYNTHETIC_G_ORIGIN
    table = table.set_column(table.schema.get_field_index("phot_g_mean_flux"),
                             "phot_g_mean_flux", pa.array(flux))
    return table.set_column(table.schema.get_field_index("g_flux_origin"), "g_flux_origin",
                            pa.array(origin, pa.string()))


def _rows(table: pa.Table, name: str, rows: np.ndarray) -> np.ndarray:
    """The list column's arrays at ``rows`` as an (len(rows), k) float64 matrix."""
    return arrow_lists_to_2d(table.column(name).take(pa.array(rows)), "<batch>", name, None)
