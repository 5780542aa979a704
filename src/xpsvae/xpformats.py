"""Reading Gaia DR3 XP files, any archive format, into rows the store takes.

Formats: DataLink CSV (arrays as ``"(a, b, ...)"``), ECSV and the bulk
``XpContinuousMeanSpectrum_*.csv.gz`` (gzip'd ECSV, arrays as ``"[a,b,...]"``),
FITS, VOTable (binary and plain), Avro (``MeanSpectrumSolutionWithCov``,
camelCase fields, packed covariance), tables with flattened columns
(``bp_coeff_0..``, ``e_bp_coeff_..``), Parquet with arrays as strings or lists,
sampled spectra (``flux``/``flux_error``), and in-memory astropy/pyarrow
Tables and DataFrames.

:func:`file_batches` gives a file's rows in batches. A batch holds rows the
CSV fast path (:mod:`xpsvae.fastcsv`) has already parsed and checked, and
``records`` to check one by one with :func:`normalise_record` (coefficients)
or :func:`normalise_sampled_record`, which raise :class:`XPParseError` with a
message naming the problem.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from collections import deque
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import fastcsv, inflate
from .data import SpectraError
from .parsepool import ParsePool, job_result

BANDS = ("bp", "rp")
#: Basis function set ids of Gaia DR3 (BP, RP); others are refused.
DR3_BASIS_IDS = {"bp": {56}, "rp": {57}}

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


class XPParseError(SpectraError):
    """A value in an XP file that cannot be parsed."""


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

# --------------------------------------------------------------------------- readers
# Each reader yields (row_number, raw_text_or_None, record) where record maps the
# archive's snake_case names to values, arrays already parsed (or raises XPParseError
# for that row, which the caller sets aside).

def _csv_lines(lines: Iterable[str], header: List[str], first_number: int) -> Iterator[tuple]:
    """The exact, row-by-row reader of CSV data lines (numbered from ``first_number``)."""
    for number, line in enumerate(lines, start=first_number):
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error as exc:
            yield number, line, XPParseError(f"bad CSV line ({exc})")
            continue
        if len(fields) != len(header):
            yield number, line, XPParseError(
                f"{len(fields)} fields, the header has {len(header)} (truncated line?)")
            continue
        yield number, line, dict(zip(header, fields))


def _csv_records(path: str) -> Iterator[tuple]:
    """DataLink CSV and ECSV (plain or gzip'd), row by row; see :func:`_csv_batches`."""
    for batch in _csv_batches(path, fast=False):
        yield from batch.records


@dataclass
class _Batch:
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


def _csv_batches(path: str, fast: bool = True, pool: Optional["ParsePool"] = None
                 ) -> Iterator[_Batch]:
    """DataLink CSV and ECSV (plain or gzip'd): header line, then one star per line.

    Chunks of lines go through :mod:`xpsvae.fastcsv`; a chunk it calls
    irregular (or every chunk, with ``fast=False``) is read row by row. With a
    ``pool``, chunks are parsed in its worker processes, a few ahead, and come
    back in file order.
    """
    # With a pool, a chunk the inflating process left in shared memory is read there by
    # the worker, and held until its batch has been taken (the rows' raw text is in it).
    chunks = inflate.line_chunks(path, pool.chunk_bytes if pool else inflate.CHUNK_BYTES,
                                 hold=pool.ahead + 1 if pool else 0)
    in_flight: Deque[tuple] = deque()
    next_row = 0
    header = None
    failure: Optional[Exception] = None
    first_chunk = True
    try:
        try:
            for chunk in chunks:
                if header is None:
                    header, chunk = fastcsv.split_header(_as_bytes(chunk, release=True))
                    if header is None:
                        continue
                    fast = fast and _fast_kind(header)
                if not chunk:
                    continue
                n_lines = _line_count(chunk)
                # A file's first chunk is parsed here: a file of one chunk never starts the
                # pool.
                if first_chunk or pool is None:
                    chunk = _as_bytes(chunk, release=True)
                    job = (chunk, header, next_row, n_lines, fast)
                else:
                    job = pool.submit(chunk, header, next_row, n_lines, fast)
                in_flight.append((chunk, next_row, job))
                first_chunk = False
                next_row += n_lines
                while len(in_flight) > (pool.ahead if pool else 0):
                    yield from _taken(*in_flight.popleft())
        except (OSError, EOFError, ValueError) as exc:  # a corrupt or cut gzip member
            failure = exc
        while in_flight:
            yield from _taken(*in_flight.popleft())
    finally:
        for chunk, _, _ in in_flight:  # an early stop: give their slots back
            _as_bytes(chunk, release=True)
    if failure is not None:
        yield _Batch(records=[(next_row, None, XPParseError(
            f"file unreadable after row {next_row - 1}: {failure}"))])
        return
    if header is None:
        raise SpectraError(f"{path}: no header line; an empty file or not a table")


def _as_bytes(chunk, release: bool = False) -> bytes:
    """A chunk's text; a :class:`~xpsvae.inflate.SharedChunk` copied out (and, if
    ``release``, given back)."""
    if not isinstance(chunk, inflate.SharedChunk):
        return chunk
    data = chunk.tobytes()
    if release:
        chunk.release()
    return data


def _taken(chunk, first_row: int, job) -> Iterator[_Batch]:
    """:func:`_finished`, the chunk's slot given back once the batch has been taken."""
    try:
        yield _finished(chunk, first_row, job)
    finally:
        if isinstance(chunk, inflate.SharedChunk):
            chunk.release()


def _line_count(chunk) -> int:
    """Data lines in a chunk: its rows, on the fast path and the exact one alike."""
    if isinstance(chunk, inflate.SharedChunk):
        return chunk.line_count()
    end = chunk.find(b"\n")
    if 0 <= end < 4096:  # short lines: bytes.count, a plain loop over the bytes
        return chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    # Long lines (~39 kB in the bulk files): a memchr per line is ~8x faster than count.
    lines = 0
    while end >= 0:
        lines += 1
        end = chunk.find(b"\n", end + 1)
    return lines + (not chunk.endswith(b"\n"))


def _finished(chunk, first_row: int, job) -> _Batch:
    """A chunk's batch from its parse job (a pool's future, or the arguments to parse here)."""
    records, table = job_result(job) if isinstance(job, Future) else parse_chunk_rows(*job)
    lines: List[bytes] = []

    def raw_line(row: int) -> str:
        if not lines:
            lines.extend(_as_bytes(chunk).split(b"\n"))
        return lines[row - first_row].decode("utf-8", errors="replace")
    return _Batch(records=records, table=table, raw_line=raw_line)


def parse_chunk_rows(chunk: bytes, header: List[str], first_row: int, n_lines: int,
                     fast: Optional[str]) -> Tuple[List[tuple], Optional[pa.Table]]:
    """One chunk of ``n_lines`` CSV data lines, numbered from ``first_row``: (records, table).

    The table holds the rows that passed every check of the fast path
    (``fast``: "coefficients" or "sampled", see :func:`_fast_kind`; None for
    the exact reader alone); the records, each row read one by one (the whole
    chunk where the fast path steps aside). Runs in a
    :class:`~xpsvae.parsepool.ParsePool` worker, so it takes and returns only plain data.
    """
    try:
        if not fast:
            raise fastcsv.Irregular("exact reader asked for")
        strings, quoted = fastcsv.parse_chunk(chunk, header)
        if strings.num_rows != n_lines:  # row numbers must be line numbers
            raise fastcsv.Irregular("rows are not lines")
        parse = _fast_batch if fast == "coefficients" else _fast_sampled_batch
        return parse(strings, quoted, first_row, chunk, header)
    except fastcsv.Irregular:
        lines = chunk.decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return list(_csv_lines(lines, header, first_row)), None


@contextmanager
def system_allocator() -> Iterator[None]:
    """Arrow allocates with the C library's malloc while the block runs.

    The mimalloc pool of the pyarrow wheels gives freed pages back to the
    system at once, so every chunk's large temporaries fault theirs in again:
    on a 20,000-row bulk file that was ~2 s of system time in ~6 s of parsing,
    against ~0.2 s with malloc. Buffers keep track of their own pool, so the
    previous default comes back safely afterwards.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


_FAST_COLUMNS = ("source_id",) + tuple(f"{b}_{k}" for b in BANDS
                                       for k in ("coefficients", "coefficient_errors"))


def _fast_kind(header: List[str]) -> Optional[str]:
    """Which fast path reads a CSV file with this header: "coefficients", "sampled" or None.

    Sampled spectra go the fast way only without a ``wavelength`` column (its
    grid is read from the first row, by :func:`sampled_grid`).
    """
    if all(c in header for c in _FAST_COLUMNS):
        return "coefficients"
    if all(c in header for c in ("source_id", "flux_error")) and "wavelength" not in header \
            and is_sampled_record(dict.fromkeys(header)):
        return "sampled"
    return None


def _fast_batch(strings: pa.Table, quoted: dict, first_row: int, chunk: bytes,
                header: List[str]) -> Tuple[List[tuple], pa.Table]:
    """Parse and check a whole chunk at once; rows failing a check go to the exact reader.

    Raises:
        fastcsv.Irregular: a value the vectorised parsers refuse (the caller
            reads the chunk row by row).
    """
    n = strings.num_rows
    exact = np.zeros(n, dtype=bool)  # rows to read one by one, for their exact message
    columns = {"source_id": fastcsv.number_column(strings.column("source_id"), pa.int64())}
    exact |= columns["source_id"].is_null().to_numpy(zero_copy_only=False)
    both_missing = np.ones(n, dtype=bool)

    def scalar(name, type_):
        return fastcsv.number_column(strings.column(name), type_) if name in strings.column_names \
            else pa.nulls(n, type_)
    def array(name, type_):
        return fastcsv.array_column(strings.column(name), quoted.get(name), type_)
    for band in BANDS:
        coeff, n_coeff = array(f"{band}_coefficients", pa.float64())
        errors, n_errors = array(f"{band}_coefficient_errors", pa.float32())
        corr_name = f"{band}_coefficient_correlations"
        corr, n_corr = array(corr_name, pa.float32()) if corr_name in strings.column_names \
            else (np.zeros(0, np.float32), np.zeros(n, int))
        missing = n_coeff == 0
        both_missing &= missing
        n_parameters = scalar(f"{band}_n_parameters", pa.int64()).to_numpy(zero_copy_only=False)
        basis = scalar(f"{band}_basis_function_id", pa.int32())
        basis_np = basis.to_numpy(zero_copy_only=False)
        known_basis = np.isin(basis_np, list(DR3_BASIS_IDS[band])) | np.isnan(basis_np)
        exact |= ~missing & (
            (n_errors != n_coeff)
            | ((n_corr != 0) & (n_corr != n_coeff * (n_coeff - 1) // 2))
            | (~np.isnan(n_parameters) & (n_parameters != n_coeff))
            | fastcsv.row_flags(coeff, n_coeff, ~np.isfinite(coeff))
            | fastcsv.row_flags(errors, n_errors, ~(np.isfinite(errors) & (errors > 0)))
            | ~known_basis)
        null_if_missing = pa.array(missing)
        columns.update({
            f"{band}_coefficients": fastcsv.list_array(coeff, n_coeff, missing, pa.float64()),
            f"{band}_coefficient_errors": fastcsv.list_array(errors, n_errors, missing,
                                                             pa.float32()),
            f"{band}_coefficient_correlations": fastcsv.list_array(
                corr, n_corr, missing | (n_corr == 0), pa.float32()),
            f"{band}_n_relevant_bases": pc.if_else(
                null_if_missing, pa.scalar(None, pa.int32()),
                scalar(f"{band}_n_relevant_bases", pa.int32())),
            f"{band}_standard_deviation": pc.if_else(
                null_if_missing, pa.scalar(None, pa.float64()),
                scalar(f"{band}_standard_deviation", pa.float64())),
            f"{band}_basis_function_id": pc.if_else(null_if_missing,
                                                    pa.scalar(None, pa.int32()), basis),
            f"{band}_missing": null_if_missing})
    exact |= both_missing
    columns["input_row"] = pa.array(np.arange(first_row, first_row + n, dtype=np.int64))
    return _without_exact_rows(pa.table(columns, schema=BATCH_SCHEMA), exact, first_row,
                               chunk, header)


def _fast_sampled_batch(strings: pa.Table, quoted: dict, first_row: int, chunk: bytes,
                        header: List[str]) -> Tuple[List[tuple], pa.Table]:
    """:func:`_fast_batch` for sampled spectra (``flux``, ``flux_error``).

    The checks of :func:`normalise_sampled_record` but the grid's length,
    which the store's grid decides (:func:`xpsvae.ingest.ingest` checks it).
    """
    n = strings.num_rows
    source_id = fastcsv.number_column(strings.column("source_id"), pa.int64())
    flux, n_flux = fastcsv.array_column(strings.column("flux"), quoted.get("flux"),
                                        pa.float64())
    errors, n_errors = fastcsv.array_column(strings.column("flux_error"),
                                            quoted.get("flux_error"), pa.float64())
    exact = (source_id.is_null().to_numpy(zero_copy_only=False) | (n_flux == 0)
             | (n_errors != n_flux)
             | fastcsv.row_flags(flux, n_flux, ~np.isfinite(flux))
             | fastcsv.row_flags(errors, n_errors, ~(np.isfinite(errors) & (errors > 0))))
    present = np.zeros(n, dtype=bool)
    table = pa.table({
        "source_id": source_id,
        "flux": fastcsv.list_array(flux, n_flux, present, pa.float64()),
        "flux_error": fastcsv.list_array(errors, n_errors, present, pa.float64()),
        "input_row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64))},
        schema=SAMPLED_BATCH_SCHEMA)
    return _without_exact_rows(table, exact, first_row, chunk, header)


def _without_exact_rows(table: pa.Table, exact: np.ndarray, first_row: int, chunk: bytes,
                        header: List[str]) -> Tuple[List[tuple], pa.Table]:
    """(records, table): the rows a check refused, read again by the exact reader (for its
    own message), and the table without them."""
    if not exact.any():
        return [], table
    lines = chunk.split(b"\n")
    records = [record for i in np.flatnonzero(exact) for record in _csv_lines(
        [lines[i].decode("utf-8", errors="replace")], header, first_row + int(i))]
    return records, table.filter(pa.array(~exact))  # a filter copies every column


def _table_records(table) -> Iterator[tuple]:
    """Rows of an astropy Table (FITS, VOTable) or a pyarrow Table (Parquet)."""
    if isinstance(table, pa.Table):
        for i, row in enumerate(table.to_pylist()):
            yield i, None, row
        return
    names = table.colnames
    for i, row in enumerate(table):
        yield i, None, {n: row[n] for n in names}


def _avro_records(path: str) -> Iterator[tuple]:
    """MeanSpectrumSolutionWithCov Avro: camelCase, packed lower-triangle covariance."""
    import fastavro
    with open(path, "rb") as f:
        for i, rec in enumerate(fastavro.reader(f)):
            out = {"source_id": rec.get("sourceId")}
            for band in BANDS:
                spec = rec.get(f"{band}Spec")
                sol = spec.get("solution") if spec else None
                if not sol or not sol.get("parameters"):
                    continue
                params = np.asarray(sol["parameters"], dtype=np.float64)
                n = len(params)
                packed = np.asarray(sol.get("covariance") or [], dtype=np.float64)
                if len(packed) != n * (n + 1) // 2:
                    yield i, None, XPParseError(f"{band} covariance of length {len(packed)}, "
                                                f"expected {n * (n + 1) // 2}")
                    break
                cov = np.zeros((n, n))
                cov[np.tril_indices(n)] = packed
                sigma = np.sqrt(np.diag(cov))
                std = float(sol.get("standardDeviation") or 1.0)
                # The archive's errors are the formal errors scaled by the fit's standard
                # deviation; its correlations are the lower triangle, row by row.
                corr = cov / np.outer(sigma, sigma)
                out.update({f"{band}_coefficients": params,
                            f"{band}_coefficient_errors": sigma * std,
                            f"{band}_coefficient_correlations": corr[np.tril_indices(n, -1)],
                            f"{band}_n_relevant_bases": spec.get("NRelevantBases"),
                            f"{band}_standard_deviation": std,
                            f"{band}_basis_function_id": spec.get("basisFunctionSetDefId"),
                            f"{band}_n_parameters": sol.get("numberOfParameters")})
            else:
                yield i, None, out


#: The readers' formats by the file name's ending (the archive's, compressed as it serves them).
FILE_KINDS = {".avro": "avro", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits",
              ".xml": "votable", ".vot": "votable", ".votable": "votable",
              ".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv",
              ".ecsv": "csv", ".ecsv.gz": "csv"}


def _file_kind(path: str) -> str:
    name = path.lower()
    for suffix, kind in FILE_KINDS.items():
        if name.endswith(suffix):
            return kind
    raise SpectraError(f"{path}: unknown format; expected CSV/ECSV(.gz), FITS, VOTable, Avro "
                       "or Parquet")


def records(path: str) -> Iterator[tuple]:
    """(row, raw_text, record or XPParseError) for every row of an XP file, any format."""
    kind = _file_kind(path)
    if kind == "csv":
        yield from _csv_records(path)
    elif kind == "avro":
        yield from _avro_records(path)
    elif kind == "parquet":
        yield from _table_records(pq.read_table(path))
    else:
        from astropy.table import Table
        try:
            table = Table.read(path, format="votable" if kind == "votable" else None)
        except Exception as exc:  # astropy raises many types for a bad file
            raise SpectraError(f"{path}: cannot read as {kind} ({exc})") from exc
        yield from _table_records(table)


# --------------------------------------------------------------------------- one row

_FLAT = re.compile(r"^(e_)?(bp|rp)_coeff_(\d+)$")


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
        m = _FLAT.match(key)
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
        if not np.isfinite(coeff).all():
            raise XPParseError(f"NaN or inf in a coefficient: {band}_coefficients[{int(np.flatnonzero(~np.isfinite(coeff))[0])}]")
        if not (np.isfinite(errors) & (errors > 0)).all():
            raise XPParseError(f"zero, negative or non-finite error: {band}_coefficient_errors"
                               f"[{int(np.flatnonzero(~(np.isfinite(errors) & (errors > 0)))[0])}]")
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
        not any(_FLAT.match(k) for k in record)


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
    if not np.isfinite(flux).all():
        raise XPParseError(f"NaN or inf in flux[{int(np.flatnonzero(~np.isfinite(flux))[0])}]")
    bad = ~(np.isfinite(errors) & (errors > 0))
    if bad.any():
        raise XPParseError(f"zero, negative or non-finite error: flux_error"
                           f"[{int(np.flatnonzero(bad)[0])}]")
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
            from .data import GAIAXPY_DEFAULT_GRID_NM
            grid = GAIAXPY_DEFAULT_GRID_NM if n == len(GAIAXPY_DEFAULT_GRID_NM) else None
    if grid is None or len(grid) != n:
        raise SpectraError(f"{name}: sampled spectra of {n} samples and no wavelength grid of "
                           f"that length (give one: xpsvae ingest --wavelength START,STOP,STEP, a "
                           "'wavelength' column, or GaiaXPy's <name>_sampling.csv beside the file)")
    return grid


def file_batches(source, batch_rows: int = 2_000, pool: Optional[ParsePool] = None
                 ) -> Iterator[_Batch]:
    """Batches of rows of a file (by path) or of an in-memory astropy/pyarrow Table or DataFrame.

    A ``pool`` parses the chunks of CSV-family files in worker processes.
    """
    if isinstance(source, str):
        if _file_kind(source) == "csv":
            yield from _csv_batches(source, pool=pool)
            return
        rows = records(source)
    else:
        if isinstance(source, pd.DataFrame):
            source = pa.Table.from_pandas(source, preserve_index=False)
        rows = _table_records(source)
    while True:
        chunk = list(itertools.islice(rows, batch_rows))
        if not chunk:
            return
        yield _Batch(records=chunk)
