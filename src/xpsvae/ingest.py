"""The store: Gaia DR3 XP files, in any archive format, read into one Parquet store.

The files are read by :mod:`xpsvae.xpformats` (every format; CSV-family
files through the fast path of :mod:`xpsvae.fastcsv`). This module checks
every row, joins the G-band flux, sets duplicates aside and writes::

    STORE/part-NNNNN.parquet   one schema (STORE_SCHEMA, or SAMPLED_STORE_SCHEMA for
                               sampled spectra), one or more shards per input file
    STORE/set_aside.parquet    every rejected row: file, row, raw text, reason
    STORE/manifest.json        the store's kind (and grid); per input file and in total:
                               rows read, kept, set aside, reasons

Nothing is silently lost: a row is either kept or set aside with a reason;
``rows_read = rows_kept + rows_set_aside`` for every file (a file refused
whole is listed with its reason and no rows). A missing band is kept and
flagged (``bp_missing`` / ``rp_missing``); a row with neither band is set
aside. Duplicate source ids are set aside with the row of the first one.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import shutil
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .data import SpectraError, column_to_1d, read_table_columns
from .files import write_json
from .machine import usable_cores, usable_memory
from .sampling import G_ZERO_POINT
# XPParseError and parse_array_text are re-exported: ``from xpsvae.ingest import ...`` works
from .xpformats import (BANDS, BATCH_SCHEMA, FILE_KINDS, SAMPLED_BATCH_SCHEMA,  # noqa: F401
                        XPParseError, _Batch, ParsePool, file_batches, grid_length_error,
                        is_sampled_record, normalise_record, normalise_sampled_record,
                        parse_array_text, sampled_grid, system_allocator)

MANIFEST = "manifest.json"
#: The store's layout (the shards' schema, the manifest's keys), in its manifest. A later
#: layout gets a higher number, so that this version refuses it with a message.
STORE_FORMAT_VERSION = 1
SET_ASIDE = "set_aside.parquet"
SAMPLED_STORE_SCHEMA = pa.schema([*list(SAMPLED_BATCH_SCHEMA)[:3],
                                  pa.field("phot_g_mean_flux", pa.float64()),
                                  pa.field("g_flux_origin", pa.string()),
                                  pa.field("input_file", pa.string()),
                                  pa.field("input_row", pa.int64())])
_FLOAT_LIST_COLUMNS = ["flux", "flux_error"] + [f"{b}_{k}" for b in BANDS
                       for k in ("coefficients", "coefficient_errors", "coefficient_correlations")]
STORE_SCHEMA = pa.schema([*list(BATCH_SCHEMA)[:-1],
                          pa.field("phot_g_mean_flux", pa.float64()),
                          pa.field("g_flux_origin", pa.string()),
                          pa.field("input_file", pa.string()),
                          pa.field("input_row", pa.int64())])


# --------------------------------------------------------------------------- accounting

@dataclass
class FileAccount:
    """Rows of one input file: read, kept, set aside (with reasons)."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    set_aside: List[dict] = field(default_factory=list)

    def add_set_aside(self, row: int, reason: str, raw: Optional[str] = None) -> None:
        self.set_aside.append({"input_file": self.path, "input_row": row,
                               "raw_text": raw, "reason": reason})

    def to_dict(self) -> dict:
        rows = [r for r in self.set_aside if r["input_row"] >= 0]  # row -1: the whole file
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "rows_set_aside": len(rows),
                "reasons": dict(Counter(r["reason"].split(":")[0] for r in self.set_aside))}


# --------------------------------------------------------------------------- G flux

#: Where a row's G flux came from, by the codes :func:`read_g_flux` returns.
G_ORIGINS = ("phot_g_mean_flux", "phot_g_mean_mag")
_G_COLUMNS = ("source_id", "phot_g_mean_flux", "phot_g_mean_mag", "has_xp_continuous")
#: The G-flux table of a store's last ``--gaia-source`` tables, kept for the next run.
G_FLUX_DIR = ".g_flux"
_G_NAMES = ("ids", "flux", "origin")


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
    from tqdm.auto import tqdm
    # Rows in the order of preference: the fluxes last row first, then the magnitudes
    # first row first. A stable sort by source_id then puts each star's row to keep first,
    # with no key arrays beside the ids (the whole GaiaSource keeps 220 million stars).
    by_flux, by_mag = [], []
    start = without_xp = without_g = 0
    # Tables read several at once, in order: each gzip'd file inflates on one core, and
    # the whole GaiaSource is 3,386 of them.
    at_once = tables_at_once or min(8, usable_cores())
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
        return _no_g_flux(), {}, None
    key = [[os.path.abspath(p), stat.st_size, stat.st_mtime_ns]
           for p, stat in ((p, os.stat(p)) for p in paths)]
    folder = os.path.join(store, G_FLUX_DIR)
    try:
        with open(os.path.join(folder, "tables.json")) as f:
            kept = json.load(f)
        if kept["tables"] == key:
            return _map_g_flux(folder), kept["counts"], folder
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none kept, or for other tables: read them
    counts: dict = {}
    arrays = read_g_flux(paths, counts, progress)
    writing = folder + ".tmp"
    shutil.rmtree(writing, ignore_errors=True)
    os.makedirs(writing)
    for name, array in zip(_G_NAMES, arrays):
        np.save(os.path.join(writing, f"{name}.npy"), array)
    write_json(os.path.join(writing, "tables.json"), {"tables": key, "counts": counts})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(writing, folder)
    return _map_g_flux(folder), counts, folder


def _no_g_flux() -> tuple:
    return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8)


def _map_g_flux(folder: str) -> tuple:
    return tuple(np.load(os.path.join(folder, f"{n}.npy"), mmap_mode="r") for n in _G_NAMES)


def _gaia_source_columns(path: str) -> dict:
    """source_id, the G columns and has_xp_continuous of a gaia_source table; only those
    are read."""
    name = path.lower()
    if name.endswith((".csv", ".ecsv", ".csv.gz", ".ecsv.gz")):
        header, comments, delimiter = _csv_header(path)
        wanted = [c for c in _G_COLUMNS if c in header]
        _check_g_columns(path, wanted)
        import pyarrow.csv as pcsv
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
    if name.endswith((".parquet", ".pq")):
        wanted = [c for c in _G_COLUMNS if c in pq.read_schema(path).names]
        _check_g_columns(path, wanted)
        table = pq.read_table(path, columns=wanted)
        return {c: table.column(c) for c in wanted}
    columns = read_table_columns(path)
    _check_g_columns(path, list(columns))
    return columns


def _csv_header(path: str) -> Tuple[List[str], int, str]:
    """A CSV or ECSV file's column names, the number of lines before them, and its delimiter.

    ECSV states its delimiter in the YAML header (``# delimiter: ','``); without
    that line it is a space, the ECSV default (astropy writes such files).
    """
    import csv
    from .inflate import open_binary
    delimiter = ","
    with open_binary(path) as f:
        for comments, line in enumerate(f):
            text = line.decode("utf-8", errors="replace").strip()
            if comments == 0 and text.startswith("# %ECSV"):
                delimiter = " "
            elif text.startswith("# delimiter:"):
                delimiter = text.split(":", 1)[1].strip().strip("'\"") or " "
            elif text and not text.startswith("#"):
                return next(csv.reader([text], delimiter=delimiter)), comments, delimiter
    raise SpectraError(f"{path}: no header line; an empty file or not a table")


def _check_g_columns(path: str, names: Sequence[str]) -> None:
    if "source_id" not in names:
        raise SpectraError(f"{path}: a gaia_source table needs a source_id column")
    if "phot_g_mean_flux" not in names and "phot_g_mean_mag" not in names:
        raise SpectraError(f"{path}: needs phot_g_mean_flux or phot_g_mean_mag")


# --------------------------------------------------------------------------- the store


class _SeenIds:
    """source_ids already in the store, with where each came from (sorted arrays, not a dict,
    so 10^8 ids take ~2 GB rather than ~20).

    The ids are kept as sorted runs (ids, file index, row); a new batch becomes a run and
    runs of similar size are merged, so adding n ids costs O(n log n) in all rather than a
    sort of everything seen for every batch, and a lookup searches O(log n) runs.
    """

    def __init__(self):
        self.files: List[str] = []
        self._runs: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, ids: np.ndarray, file: str, rows: np.ndarray) -> None:
        if not len(ids):
            return
        if file not in self.files:
            self.files.append(file)
        run = (ids, np.full(len(ids), self.files.index(file), np.int32), rows)
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            run = tuple(np.concatenate([a, b]) for a, b in zip(self._runs.pop(), run))
        order = np.argsort(run[0], kind="stable")
        self._runs.append(tuple(a[order] for a in run))

    def first_seen(self, ids: np.ndarray) -> List[Optional[str]]:
        """For each id, where it was first seen ("file row N"), or None."""
        where: List[Optional[str]] = [None] * len(ids)
        for run_ids, run_file, run_row in self._runs:
            at = np.minimum(np.searchsorted(run_ids, ids), len(run_ids) - 1)
            for i in np.flatnonzero(run_ids[at] == ids):
                where[i] = _row_of(self.files[run_file[at[i]]], run_row[at[i]])
        return where


def _row_of(file: str, row: int) -> str:
    """A row as a duplicate's reason names it: "file row N"."""
    return f"{os.path.basename(file)} row {row}"


def duplicate_reason(where: str) -> str:
    """The reason a duplicate source_id is set aside, naming the first (:func:`_row_of`)."""
    return f"duplicate source_id: first at {where}"


def raw_text(batch: _Batch, row: int) -> Optional[str]:
    """A row's raw text in its batch: its line, where the format has one."""
    return next((r for n, r, _ in batch.records if n == row), None) or batch.raw_line(row)


def _normalise_batch(batch: _Batch, account: "FileAccount",
                     grid: Optional[np.ndarray] = None) -> pa.Table:
    """The batch's good rows as one table (in row order); bad rows set aside.

    Coefficients (BATCH_SCHEMA), or sampled spectra on ``grid`` (SAMPLED_BATCH_SCHEMA).
    """
    schema = BATCH_SCHEMA if grid is None else SAMPLED_BATCH_SCHEMA
    fast = batch.table
    if grid is not None and fast is not None and fast.num_rows:
        # The fast path checked all but the grid's length, which the store decides.
        n_flux = pc.list_value_length(fast.column("flux")).to_numpy(zero_copy_only=False)
        wrong = n_flux != len(grid)
        for row, n in zip(fast.column("input_row").to_numpy()[wrong], n_flux[wrong]):
            account.add_set_aside(int(row), str(grid_length_error(int(n), len(grid))),
                                  batch.raw_line(int(row)))
        if wrong.any():
            fast = fast.filter(pa.array(~wrong))
    rows = []
    for number, raw, record in batch.records:
        try:
            if isinstance(record, XPParseError):
                raise record
            row = normalise_record(record) if grid is None else \
                normalise_sampled_record(record, len(grid))
        except XPParseError as exc:
            account.add_set_aside(number, str(exc), raw)
            continue
        row["input_row"] = number
        rows.append(row)
    tables = [t for t in (fast, pa.Table.from_pylist(rows, schema=schema) if rows
                          else None) if t is not None and t.num_rows]
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    return table.take(pc.sort_indices(table.column("input_row"))) if len(tables) > 1 else table


def default_workers() -> int:
    """Parsing processes for ``xpsvae ingest``: 4 from 4 cores up, else 1 (in this process).

    In-process parsing already keeps ~2 cores busy (the parsing thread, the
    shard writer and the process inflating the file): on 2 cores, 2 workers
    gave fewer rows/s (4,600 against 4,760 on 100,000 rows,
    benchmarks/ingest_throughput.py) for more memory. The workers parse a bulk
    row in ~185 µs of CPU between them, while inflating it, in a child process
    (:mod:`xpsvae.inflate`), takes ~105 µs: from 2-3 workers on, that process
    is the limit for one file, so more would only cost memory (~100 MB each).
    """
    return 4 if usable_cores() >= 4 else 1


def default_jobs(n_files: int) -> int:
    """Files read at once by ``xpsvae ingest``: with several files and 4 cores or more, one
    job per two cores (a job keeps ~2 busy: its parsing, its shard writer and the process
    inflating its file), at most one per file and one per 2 GB of memory (a job takes
    ~0.5 GB); else 1, one file at a time (with :func:`default_workers` parsing it).
    """
    cores = usable_cores()
    if n_files < 2 or cores < 4:
        return 1
    jobs = min(n_files, cores // 2)
    memory = usable_memory()  # the container's limit where it has one; unknown: cores decide
    if memory is not None:
        jobs = min(jobs, memory // 2**31)
    return max(1, jobs)


def files_in_folders(paths: Iterable) -> Tuple[list, List[dict]]:
    """The inputs, each folder among them replaced by the table files in it.

    A folder (the bulk ``XpContinuousMeanSpectrum/`` as downloaded, say)
    gives its files that a reader takes by their name (CSV/ECSV(.gz), FITS,
    VOTable, Avro, Parquet), sorted; its other files (``_MD5SUM.txt``) are
    not read, and said so. Other inputs pass unchanged.

    Returns:
        (inputs, not_read): ``not_read`` holds a ``{"path", "reason"}`` per file left.

    Raises:
        SpectraError: a folder with no table file in it.
    """
    inputs: list = []
    not_read: List[dict] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or not os.path.isdir(p):
            inputs.append(p)
            continue
        names = sorted(n for n in os.listdir(p) if os.path.isfile(os.path.join(p, n)))
        tables = [n for n in names if n.lower().endswith(tuple(FILE_KINDS))]
        if not tables:
            raise SpectraError(f"{p}: a folder with no table file in it (CSV/ECSV(.gz), FITS, "
                               f"VOTable, Avro or Parquet); {len(names)} other files")
        inputs += [os.path.join(p, n) for n in tables]
        not_read += [{"path": os.path.abspath(os.path.join(p, n)),
                      "reason": "not a table file, by its name"}
                     for n in names if n not in tables]
    return inputs, not_read


def ingest(paths: Iterable, store: str, gaia_source: Sequence[str] = (),
           rows_per_shard: int = 5_000, progress: bool = True,
           wavelength: Optional[np.ndarray] = None, workers: int = 1, jobs: int = 1) -> dict:
    """Read XP files into the store; files already complete in its manifest are skipped.

    Args:
        paths: input files, any mix of formats, or folders of them
            (:func:`files_in_folders`; the folders' other files are listed in
            the manifest's ``not_read``); also, from Python, astropy Tables,
            pyarrow Tables or pandas DataFrames (named in the manifest by
            ``table.meta["name"]``, ``df.attrs["name"]`` or their position).
        store: the store folder (created if needed). A store holds either
            coefficients or sampled spectra on one wavelength grid.
        gaia_source: gaia_source tables for the G-band flux join, or folders
            of them (the bulk ``GaiaSource/`` files).
        rows_per_shard: rows per Parquet shard; memory holds about one shard
            plus four read chunks (16 MB of text each: three inflated ahead,
            one being parsed), or, with workers, two chunks of 8 MB per worker.
        progress: show progress bars over files and rows.
        wavelength: the grid (nm) of sampled spectra whose files do not say
            (see :func:`sampled_grid`).
        workers: processes that parse CSV-family files (DataLink CSV, ECSV,
            bulk ``*.csv.gz``); 1 parses in this process. They start with the
            first file of more than one chunk (~400 bulk rows). The store is
            the same whatever the number.
        jobs: files read at once, each by its own process (which parses it
            itself: ``workers`` is then not used); for many files on many
            cores (:mod:`xpsvae.filejobs`). The store is the same as with 1.
            With one file to read, ``workers`` parse it instead. 0:
            :func:`default_jobs` for the files given, folders counted by the
            files in them.

    Scripts that pass ``workers`` or ``jobs`` above 1 need the
    ``if __name__ == "__main__":`` guard of Python's multiprocessing.

    Returns:
        The manifest (also written to ``store/manifest.json``).
    """
    from tqdm.auto import tqdm
    paths, not_read = files_in_folders(paths)
    gaia_source, g_not_read = files_in_folders(gaia_source)
    jobs = jobs or default_jobs(len(paths))
    os.makedirs(store, exist_ok=True)
    manifest_path = os.path.join(store, MANIFEST)
    if not os.path.exists(manifest_path) and glob.glob(os.path.join(store, "part-*.parquet")):
        # an encoded catalogue, say: its shards have the names this would write
        raise SpectraError(f"{store}: holds part-*.parquet files but no {MANIFEST}, so it is "
                           "not a store to add to; ingest into a new folder")
    manifest = store_manifest(store) if os.path.exists(manifest_path) else \
        {"files": {}, "shards": [], "gaia_source": []}
    manifest["format_version"] = STORE_FORMAT_VERSION  # stores from before it said are 1
    if not_read or g_not_read:  # files of the folders given that are not tables
        listed = {entry["path"] for entry in manifest.get("not_read", [])}
        manifest["not_read"] = manifest.get("not_read", []) + [
            e for e in not_read + g_not_read if e["path"] not in listed]
    if manifest["shards"]:
        manifest.setdefault("kind", "coefficients")  # stores written before sampled ones
    todo: dict = {}  # name: (source, size), in the order given
    same_content = _SameContent(manifest)
    for i, p in enumerate(paths):
        name, source = (os.path.abspath(p), os.path.abspath(p)) \
            if isinstance(p, (str, os.PathLike)) else (_table_name(p, i), p)
        size = os.stat(source).st_size if isinstance(source, str) else None
        done = manifest["files"].get(name)
        if size is not None and done and done.get("complete") and done.get("size") == size:
            continue  # re-running after an interruption: this file is already in the store
        if size is not None and not done and name not in todo and \
                same_content.find(name, size):
            continue  # a file in the store, or given before, under another path
        todo.setdefault(name, (source, size))
    # After the files to do are known: with none left, neither the store's ids nor the
    # gaia_source tables are read (minutes, for the whole catalogue).
    seen = _ids_in_store(store, manifest, progress) if todo else _SeenIds()
    g_flux, g_counts, g_dir = g_flux_table(store, list(gaia_source), progress) if todo else \
        (_no_g_flux(), {}, None)
    manifest["gaia_source"] = sorted(set(manifest["gaia_source"]) | set(map(os.path.abspath,
                                                                             gaia_source)))
    if g_counts:
        manifest["gaia_source_rows"] = g_counts

    def record(name: str, account: FileAccount, shards: List[str]) -> None:
        account.set_aside.sort(key=lambda r: r["input_row"])
        manifest["shards"] += shards
        source, size = todo[name]
        manifest["files"][name] = {**account.to_dict(), "shards": shards, "size": size,
                                   "complete": True}
        if size is not None:
            manifest["files"][name]["fingerprint"] = same_content.fingerprint_of(source)
        if account.set_aside or not os.path.exists(os.path.join(store, SET_ASIDE)):
            # written again only when it changed: rows set aside carry their raw text
            # (~40 kB a bulk row), and a catalogue is thousands of files
            _append_set_aside(store, account.set_aside)
        manifest["total"] = _totals(manifest["files"])
        write_json(manifest_path, manifest)

    if min(jobs, len(todo)) > 1:  # a single file is better read by parsing processes
        from .filejobs import ingest_in_jobs
        ingest_in_jobs(todo, store, manifest, seen, g_flux, rows_per_shard, wavelength, jobs,
                       record, progress, g_dir)
    else:
        # Shards are written by a thread: Arrow writes without the GIL, alongside the parsing.
        with system_allocator(), ParsePool(workers) if workers > 1 else nullcontext() as pool, \
                ThreadPoolExecutor(max_workers=1) as writer:
            for name, (source, _) in tqdm(todo.items(), desc="ingest", unit="file",
                                          disable=not progress):
                with tqdm(desc=os.path.basename(name), unit="row", leave=False,
                          disable=not progress) as rows_bar:
                    account, shards = ingest_file(
                        name, source, store, len(manifest["shards"]), rows_per_shard, g_flux,
                        wavelength, manifest, seen, pool, writer, rows_bar.update)
                record(name, account, shards)
    manifest["total"] = _totals(manifest["files"])
    write_json(manifest_path, manifest)
    return manifest


def ingest_file(name: str, source, shard_dir: str, first_shard: int, rows_per_shard: int,
                g_flux: Tuple[np.ndarray, np.ndarray, np.ndarray],
                wavelength: Optional[np.ndarray], kinds: dict, seen: "_SeenIds",
                pool: Optional[ParsePool], writer: ThreadPoolExecutor,
                on_rows: Callable[[int], object]) -> Tuple[FileAccount, List[str]]:
    """One input file's rows into shards ``part-{first_shard:05d}.parquet``... of ``shard_dir``.

    Args:
        name: the file's name in the manifest (and the shards' ``input_file``).
        source: its path, or an in-memory table.
        g_flux: from :func:`read_g_flux`.
        kinds: the store's ``kind`` and ``wavelength_nm`` (the manifest), set
            by the file if the store has none yet.
        seen: the source_ids kept so far; the file's are added.
        pool: parsing processes, or None to parse here.
        writer: the thread that writes the shards.
        on_rows: told the rows of every batch read.

    Returns:
        The file's account and its shards' file names, in order.
    """
    account = FileAccount(name)
    pending: List[pa.Table] = []
    writes: List[Future] = []  # shard file names, once written

    def write_full_shards(final: bool) -> None:
        table = pa.concat_tables(pending) if pending else None
        pending.clear()
        while table is not None and (table.num_rows >= rows_per_shard or
                                     (final and table.num_rows)):
            shard = table.slice(0, rows_per_shard)
            if writes:
                writes[-1].result()  # one shard in flight: memory stays bounded
            writes.append(writer.submit(_write_shard, shard_dir, first_shard + len(writes),
                                        shard))
            account.rows_kept += shard.num_rows
            table = table.slice(rows_per_shard)
        if table is not None and table.num_rows:
            pending.append(table)
    try:
        batches = file_batches(source, pool=pool)
        first_batch = next(batches, None)
        grid = _check_kind(name, first_batch, kinds, wavelength)
        for batch in itertools.chain([first_batch] if first_batch else [], batches):
            account.rows_read += batch.rows
            on_rows(batch.rows)
            table = _normalise_batch(batch, account, grid)
            keep = _drop_duplicates(table, batch, seen, name, account)
            if not keep.all():  # a filter copies every column, correlations too
                table = table.filter(pa.array(keep))
            seen.add(table.column("source_id").to_numpy(), name,
                     table.column("input_row").to_numpy())
            pending.append(_join_g_flux(table, name, *g_flux, grid))
            if sum(t.num_rows for t in pending) >= rows_per_shard:
                write_full_shards(final=False)
    except SpectraError as exc:
        account.add_set_aside(-1, f"file refused: {exc}")
    write_full_shards(final=True)
    return account, [w.result() for w in writes]


def file_fingerprint(path: str) -> str:
    """A file's size and a hash of its first and last MiB: the same file under another
    path (a folder moved or copied) has the same one; two different Gaia files do not."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(size - _FINGERPRINT_BYTES)
        digest.update(f.read())
    return f"{size}:{digest.hexdigest()}"


_FINGERPRINT_BYTES = 2**20


class _SameContent:
    """Finds, for a path the store does not know, a file of the same content: complete in
    the store, or given earlier in this run.

    Only files of a size another such file has are fingerprinted, so a run
    over new files reads nothing more; a store's files that were recorded
    before fingerprints were are fingerprinted from their path, where it is.
    What is found is listed in the manifest's ``same_content`` (path: the
    other file), so that every file given is accounted for.
    """

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.fingerprints: dict = {}  # files given in this run
        self.by_size: dict = {}
        for name, entry in manifest["files"].items():
            if entry.get("complete") and entry.get("size") is not None:
                self.by_size.setdefault(entry["size"], []).append(name)
                if "fingerprint" in entry:
                    self.fingerprints[name] = entry["fingerprint"]

    def _fingerprint(self, name: str) -> Optional[str]:
        if name not in self.fingerprints and os.path.isfile(name):
            self.fingerprints[name] = file_fingerprint(name)
            if name in self.manifest["files"]:  # recorded before fingerprints were
                self.manifest["files"][name]["fingerprint"] = self.fingerprints[name]
        return self.fingerprints.get(name)

    def fingerprint_of(self, name: str) -> str:
        """A file's fingerprint, computed once."""
        fingerprint = self._fingerprint(name)
        return fingerprint if fingerprint is not None else file_fingerprint(name)

    def find(self, path: str, size: int) -> Optional[str]:
        """The other file of ``path``'s content, or None (``path`` is then a candidate)."""
        candidates = self.by_size.setdefault(size, [])
        found = None
        if candidates:
            fingerprint = self._fingerprint(path)
            found = next((c for c in candidates if self._fingerprint(c) == fingerprint), None)
        if found is None:
            candidates.append(path)
            return None
        self.manifest.setdefault("same_content", {})[path] = found
        return found


def _table_name(table, position: int) -> str:
    meta = getattr(table, "meta", None) or getattr(table, "attrs", None) or {}
    kind = type(table).__name__
    return f"<{kind} {meta['name']}>" if meta.get("name") else f"<{kind} #{position}>"


def _check_kind(name: str, first: Optional[_Batch], manifest: dict,
                wavelength: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The file's kind against the store's: None for coefficients, else the sampled grid.

    Raises:
        SpectraError: a file of the other kind, or on another grid, than the store holds.
    """
    record = None
    if first is not None and first.table is not None and first.table.num_rows:
        record = first.table.slice(0, 1).to_pylist()[0]  # a row the fast path read
    elif first is not None:
        record = next((r for _, _, r in first.records if isinstance(r, dict)), None)
    sampled = record is not None and is_sampled_record(record)
    kind = "sampled" if sampled else "coefficients"
    _agree_with_store(name, kind, None, manifest)
    if not sampled:
        return None
    grid = sampled_grid(name, record, wavelength)
    _agree_with_store(name, kind, grid, manifest)
    return grid


def _agree_with_store(name: str, kind: str, grid: Optional[Sequence[float]],
                      manifest: dict) -> None:
    """The store takes the file's kind (and grid) if it has none; else they must be its own.

    Raises:
        SpectraError: a file of the other kind, or on another grid, than the store holds.
    """
    if manifest.get("kind", kind) != kind:
        raise SpectraError(f"{name} holds {kind}, this store holds {manifest['kind']}; "
                           "ingest it into another store")
    manifest["kind"] = kind
    if grid is None:
        return
    if "wavelength_nm" in manifest and not np.allclose(manifest["wavelength_nm"], grid):
        raise SpectraError(f"{name}: wavelength grid of {len(grid)} samples "
                           f"({grid[0]:g}-{grid[-1]:g} nm) is not the store's "
                           f"({len(manifest['wavelength_nm'])} samples)")
    manifest["wavelength_nm"] = [float(w) for w in grid]


def _drop_duplicates(table: pa.Table, batch: _Batch, seen: "_SeenIds", name: str,
                     account: FileAccount) -> np.ndarray:
    """Rows whose source_id is new (True); the others set aside, naming the first."""
    ids = table.column("source_id").to_numpy()
    rows = table.column("input_row").to_numpy()
    first = seen.first_seen(ids)
    _, first_in_batch = np.unique(ids, return_index=True)
    repeated = np.ones(len(ids), bool)
    repeated[first_in_batch] = False
    keep = np.ones(len(ids), bool)
    for i in np.flatnonzero(np.array([f is not None for f in first], bool) | repeated):
        where = first[i] or _row_of(name, rows[np.flatnonzero(ids == ids[i])[0]])
        account.add_set_aside(int(rows[i]), duplicate_reason(where),
                              raw_text(batch, int(rows[i])))
        keep[i] = False
    return keep


def _join_g_flux(table: pa.Table, path: str, g_ids: np.ndarray, g_flux: np.ndarray,
                 g_origin: np.ndarray, grid: Optional[np.ndarray] = None) -> pa.Table:
    """Add the store's G-flux and provenance columns (STORE_SCHEMA order): from gaia_source
    where it has the star, else the synthetic G of :func:`_fill_synthetic_g` (sampled
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
    return _fill_synthetic_g(pa.table({name: columns[name] for name in schema.names},
                                      schema=schema), grid)


def _rows_as_matrix(column: pa.ChunkedArray, rows: np.ndarray) -> np.ndarray:
    """The list column's values at ``rows`` as a (len(rows), k) float64 matrix."""
    lists = column.take(pa.array(rows)).combine_chunks()
    if len(set(lists.value_lengths().to_numpy())) == 1:
        return lists.flatten().to_numpy().reshape(len(rows), -1).astype(np.float64)
    return np.array(lists.to_pylist(), dtype=np.float64)


def _fill_synthetic_g(table: pa.Table, grid: Optional[np.ndarray] = None) -> pa.Table:
    """Rows without a G flux from gaia_source get the synthetic one: from the coefficients
    where both bands are there, from sampled flux where it is on GaiaXPy's default grid."""
    from .data import GAIAXPY_DEFAULT_GRID_NM
    from .sampling import (SYNTHETIC_G_ORIGIN, SYNTHETIC_G_SAMPLED_ORIGIN, synthetic_g_flux,
                           synthetic_g_flux_from_sampled)
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
        flux_new = synthetic_g_flux_from_sampled(_rows_as_matrix(table.column("flux"), todo))
    else:
        flux_new = synthetic_g_flux(*[_rows_as_matrix(table.column(f"{band}_coefficients"),
                                                      todo) for band in BANDS])
    flux = table.column("phot_g_mean_flux").to_numpy(zero_copy_only=False).copy()
    origin = np.array(table.column("g_flux_origin").to_pylist(), dtype=object)
    ok = np.isfinite(flux_new)
    flux[todo[ok]] = flux_new[ok]
    origin[todo[ok]] = SYNTHETIC_G_SAMPLED_ORIGIN if sampled else SYNTHETIC_G_ORIGIN
    table = table.set_column(table.schema.get_field_index("phot_g_mean_flux"),
                             "phot_g_mean_flux", pa.array(flux))
    return table.set_column(table.schema.get_field_index("g_flux_origin"), "g_flux_origin",
                            pa.array(origin, pa.string()))


def _write_shard(store: str, index: int, table: pa.Table) -> str:
    """Write a STORE_SCHEMA table as shard number ``index`` (atomically); return its file name."""
    name = f"part-{index:05d}.parquet"
    # Floats rarely repeat: no dictionary pages (they cost ~60% of the write). Min/max
    # statistics only for the scalar columns (source_id ranges for readers' filters): over
    # the arrays' elements they tell nothing and cost ~20% of the write. Byte-stream-split
    # encoding of the elements would make shards 11% smaller, but the ingest ~5% slower
    # (five A/B pairs on 20,000 bulk rows), so it is not used.
    lists = [c for c in _FLOAT_LIST_COLUMNS if c in table.column_names]
    pq.write_table(table, os.path.join(store, name + ".tmp"), compression="zstd",
                   use_dictionary=["g_flux_origin", "input_file"],
                   write_statistics=[c for c in table.column_names if c not in lists])
    os.replace(os.path.join(store, name + ".tmp"), os.path.join(store, name))
    return name


def _totals(files: dict) -> dict:
    reasons: Counter = Counter()
    for f in files.values():
        reasons.update(f["reasons"])
    return {"files": len(files), "rows_read": sum(f["rows_read"] for f in files.values()),
            "rows_kept": sum(f["rows_kept"] for f in files.values()),
            "rows_set_aside": sum(f["rows_set_aside"] for f in files.values()),
            "reasons": dict(reasons)}


def _ids_in_store(store: str, manifest: dict, progress: bool = False) -> _SeenIds:
    """The source_ids of the store's shards, for the duplicates of the files to come."""
    from tqdm.auto import tqdm
    seen = _SeenIds()
    for name in tqdm(manifest["shards"], desc="store's source_ids", unit="shard",
                     disable=not progress or not manifest["shards"]):
        table = pq.read_table(os.path.join(store, name), columns=["source_id", "input_file",
                                                                  "input_row"])
        files = table.column("input_file").to_numpy(zero_copy_only=False)
        for file in np.unique(files):
            mask = files == file
            seen.add(table.column("source_id").to_numpy()[mask], str(file),
                     table.column("input_row").to_numpy()[mask])
    return seen


_SET_ASIDE_SCHEMA = pa.schema([("input_file", pa.string()), ("input_row", pa.int64()),
                               ("raw_text", pa.string()), ("reason", pa.string())])


def _append_set_aside(store: str, rows: List[dict]) -> None:
    """Add a file's rejected rows to ``set_aside.parquet`` (made if absent), atomically.

    The rows already there are copied into the new file a row group (one
    earlier file's rows) at a time, so memory holds one file's rejected rows,
    not the store's: each bulk row carries ~40 kB of raw text.
    """
    path = os.path.join(store, SET_ASIDE)
    with pq.ParquetWriter(path + ".tmp", _SET_ASIDE_SCHEMA) as writer:
        if os.path.exists(path):
            with pq.ParquetFile(path) as earlier:
                for group in range(earlier.num_row_groups):
                    writer.write_table(earlier.read_row_group(group))
        if rows or not os.path.exists(path):
            writer.write_table(pa.Table.from_pylist(rows, schema=_SET_ASIDE_SCHEMA))
    os.replace(path + ".tmp", path)


def store_info(store: str) -> dict:
    """What a store holds: ``kind`` (``coefficients`` or ``sampled``) and, for sampled
    spectra, ``wavelength_nm``."""
    manifest = store_manifest(store)
    return {"kind": manifest.get("kind", "coefficients"),
            "wavelength_nm": manifest.get("wavelength_nm")}


def read_store_columns(store: str, without_correlations: bool = False) -> dict:
    """The store's shards as one column mapping (for :func:`xpsvae.data.spectra_from_columns`).

    Args:
        store: the store folder.
        without_correlations: leave out the correlation columns (~90% of a
            coefficient store's bytes; training and encoding do not use them).
    """
    shards = store_shards(store)
    names = pq.read_schema(shards[0]).names
    if without_correlations:
        names = [n for n in names if not n.endswith("_coefficient_correlations")]
    table = pa.concat_tables([pq.read_table(s, columns=names) for s in shards])
    return {c: table.column(c) for c in table.column_names}


def store_manifest(store: str) -> dict:
    """A store's ``manifest.json``: its files, shards, row accounting and format version.

    Raises:
        SpectraError: the folder is not a store, or one of a later format than
            this xpsvae reads.
    """
    manifest_path = os.path.join(store, MANIFEST)
    if not os.path.exists(manifest_path):
        raise SpectraError(f"{store}: no {MANIFEST}; not an xpsvae store")
    with open(manifest_path) as f:
        manifest = json.load(f)
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or version > STORE_FORMAT_VERSION:
        raise SpectraError(f"{store}: a store of format version {version}; this xpsvae "
                           f"({__version__}) reads version {STORE_FORMAT_VERSION}: upgrade "
                           "xpsvae to read it")
    return manifest


def store_shards(store: str) -> List[str]:
    """Paths of a store's shards, in manifest order.

    Raises:
        SpectraError: the folder is not a store, or it holds no rows.
    """
    shards = store_manifest(store)["shards"]
    if not shards:
        raise SpectraError(f"{store}: the store holds no rows")
    return [os.path.join(store, s) for s in shards]


def open_store(store: str):
    """A store's shards as one ``pyarrow.dataset.Dataset``, in manifest order.

    The store's folder also holds ``manifest.json`` and ``set_aside.parquet``
    (the rejected rows, another schema), so reading the folder itself with
    pandas or Dask fails or mixes them in; this reads the shards alone, lazily::

        stars = open_store("my_store").to_table(columns=["source_id", "bp_coefficients"])
        frame = stars.to_pandas()
        dask_frame = dask.dataframe.read_parquet(open_store("my_store").files)

    Args:
        store: a folder written by :func:`ingest`.

    Returns:
        The dataset (``.files`` lists the shards; ``.to_table(columns=..., filter=...)``
        reads them).
    """
    import pyarrow.dataset as ds
    return ds.dataset(store_shards(store), format="parquet")
