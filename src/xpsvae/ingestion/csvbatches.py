"""CSV-family XP files (DataLink CSV, ECSV, the bulk ``*.csv.gz``) in batches of rows.

A file's text comes in chunks of complete lines (:mod:`xpsvae.ingestion.inflate`).
Each chunk goes through the fast path (:mod:`xpsvae.ingestion.fastcsv`), which
parses and checks it whole; a chunk it calls irregular, and each row one of
its checks refuses, is read again row by row by the exact reader, for its own
message. With a :class:`~xpsvae.ingestion.pool.ParsePool`, chunks are parsed in
worker processes, a few ahead, and come back in file order.
"""

from __future__ import annotations

import csv
from collections import deque
from concurrent.futures import Future
from typing import Deque, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.constants import BANDS, DR3_BASIS_IDS
from ..core.errors import SpectraError, XPParseError
from . import fastcsv, inflate
from .pool import ParsePool
from .records import BATCH_SCHEMA, SAMPLED_BATCH_SCHEMA, Batch, is_sampled_record


def csv_lines(lines: Iterable[str], header: List[str], first_number: int) -> Iterator[tuple]:
    """The exact, row-by-row reader of CSV data lines (numbered from ``first_number``)."""
    for number, line in enumerate(lines, start=first_number):
        if not line.strip():
            continue
        dropped = inflate.too_long(line)
        if dropped is not None:
            yield number, None, XPParseError(
                f"a line of {dropped:,} bytes, longer than the {inflate.MAX_LINE_BYTES >> 20} MB "
                f"a row may hold (an XP row is ~40 kB); set aside unread")
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


def csv_records(path: str) -> Iterator[tuple]:
    """DataLink CSV and ECSV (plain or gzip'd), row by row; see :func:`_csv_batches`."""
    for batch in csv_batches(path, fast=False):
        yield from batch.records



def csv_batches(path: str, fast: bool = True, pool: Optional["ParsePool"] = None
                 ) -> Iterator[Batch]:
    """DataLink CSV and ECSV (plain or gzip'd): header line, then one star per line.

    Chunks of lines go through :mod:`xpsvae.ingestion.fastcsv`; a chunk it calls
    irregular (or every chunk, with ``fast=False``) is read row by row. With a
    ``pool``, chunks are parsed in its worker processes, a few ahead, and come
    back in file order.
    """
    chunks = inflate.line_chunks(path, pool.chunk_bytes if pool else inflate.CHUNK_BYTES)
    in_flight: Deque[tuple] = deque()
    next_row = 0
    header = None
    failure: Optional[Exception] = None
    first_chunk = True
    try:
        for chunk in chunks:
            if header is None:
                try:
                    header, chunk = fastcsv.split_header(chunk)
                except csv.Error as exc:  # a header line past the CSV module's field limit
                    raise SpectraError(f"{path}: the header line cannot be read as CSV "
                                       f"({exc}); not an XP table") from None
                if header is None:
                    continue
                fast = fast and _fast_kind(header)
            if not chunk:
                continue
            n_lines = _line_count(chunk)
            # A file's first chunk is parsed here: a file of one chunk never starts the pool.
            if first_chunk or pool is None:
                job = (chunk, header, next_row, n_lines, fast)
            else:
                job = pool.submit(chunk, header, next_row, n_lines, fast)
            in_flight.append((chunk, next_row, job))
            first_chunk = False
            next_row += n_lines
            while len(in_flight) > (pool.ahead if pool else 0):
                yield _finished(*in_flight.popleft())
    except SpectraError:
        raise  # the file as a whole (its header): refused by the caller
    except (OSError, EOFError, ValueError) as exc:  # a corrupt or cut gzip member
        failure = exc
    while in_flight:
        yield _finished(*in_flight.popleft())
    if failure is not None:
        yield Batch(records=[(next_row, None, XPParseError(
            f"file unreadable after row {next_row - 1}: {failure}"))])
        return
    if header is None:
        raise SpectraError(f"{path}: no header line; an empty file or not a table")


def _line_count(chunk: bytes) -> int:
    """Data lines in a chunk: its rows, on the fast path and the exact one alike."""
    end = chunk.find(b"\n")
    if 0 <= end < 4096:  # short lines: bytes.count, a plain loop over the bytes
        return chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    # Long lines (~39 kB in the bulk files): a memchr per line is ~8x faster than count.
    lines = 0
    while end >= 0:
        lines += 1
        end = chunk.find(b"\n", end + 1)
    return lines + (not chunk.endswith(b"\n"))


def _finished(chunk, first_row: int, job) -> Batch:
    """A chunk's batch from its parse job (a pool's future, or the arguments to parse here)."""
    records, table = job.result() if isinstance(job, Future) else parse_chunk_rows(*job)
    lines: List[bytes] = []

    def raw_line(row: int) -> str:
        if not lines:
            lines.extend(chunk.split(b"\n"))
        return lines[row - first_row].decode("utf-8", errors="replace")
    return Batch(records=records, table=table, raw_line=raw_line)


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
        return list(csv_lines(lines, header, first_row)), None


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
    records = [record for i in np.flatnonzero(exact) for record in csv_lines(
        [lines[i].decode("utf-8", errors="replace")], header, first_row + int(i))]
    return records, table.filter(pa.array(~exact))  # a filter copies every column
