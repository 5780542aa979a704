"""Reading Gaia DR3 XP files, any archive format, into batches of rows the store takes.

Formats: DataLink CSV (arrays as ``"(a, b, ...)"``), ECSV and the bulk
``XpContinuousMeanSpectrum_*.csv.gz`` (gzip'd ECSV, arrays as ``"[a,b,...]"``),
FITS, VOTable (binary and plain), Avro (``MeanSpectrumSolutionWithCov``,
camelCase fields, packed covariance), tables with flattened columns
(``bp_coeff_0..``, ``e_bp_coeff_..``), Parquet with arrays as strings or lists,
sampled spectra (``flux``/``flux_error``), and in-memory astropy/pyarrow
Tables and DataFrames.

:func:`file_batches` gives a file's rows in batches
(:class:`~xpsvae.ingestion.records.Batch`): rows the CSV fast path has
already parsed and checked, and records to check one by one.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.constants import ARCHIVE_KINDS, BANDS, file_kind, suffixes_of
from ..core.errors import SpectraError, XPParseError
from .csvbatches import csv_batches, csv_records
from .pool import ParsePool
from .records import Batch


def archive_kind(path: str) -> str:
    """A file's format, of those the ingest reads, by its name.

    Raises:
        SpectraError: a name no reader takes.
    """
    kind = file_kind(path)
    if kind not in ARCHIVE_KINDS:
        raise SpectraError(f"{path}: unknown format; expected CSV/ECSV(.gz), FITS, VOTable, "
                           f"Avro or Parquet ({', '.join(suffixes_of(ARCHIVE_KINDS))})")
    return kind


def table_records(table) -> Iterator[tuple]:
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
    import fastavro  # only for an Avro file
    with open(path, "rb") as f:
        try:
            reader = fastavro.reader(f)
        except Exception as exc:  # fastavro raises many types for what is no Avro file
            raise SpectraError(f"{path}: cannot read as avro ({exc})") from None
        i = -1
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except Exception as exc:  # a cut or damaged file: the rows before it are kept
                yield i + 1, None, XPParseError(f"file unreadable after row {i}: {exc!r}")
                return
            i += 1
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


def records(path: str) -> Iterator[tuple]:
    """(row, raw_text, record or XPParseError) for every row of an XP file, any format."""
    kind = archive_kind(path)
    if kind == "csv":
        yield from csv_records(path)
    elif kind == "avro":
        yield from _avro_records(path)
    elif kind == "parquet":
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:  # Arrow's errors for what is no Parquet file
            raise SpectraError(f"{path}: cannot read as parquet ({exc})") from None
        yield from table_records(table)
    else:
        # astropy is slow to import: only when such a file is read
        from astropy.table import Table
        try:
            table = Table.read(path, format="votable" if kind == "votable" else None)
        except Exception as exc:  # astropy raises many types for a bad file
            raise SpectraError(f"{path}: cannot read as {kind} ({exc})") from exc
        yield from table_records(table)


def file_batches(source, batch_rows: int = 2_000, pool: Optional[ParsePool] = None
                 ) -> Iterator[Batch]:
    """Batches of rows of a file (by path) or of an in-memory astropy/pyarrow Table or DataFrame.

    A ``pool`` parses the chunks of CSV-family files in worker processes.
    """
    if isinstance(source, str):
        if archive_kind(source) == "csv":
            yield from csv_batches(source, pool=pool)
            return
        rows = records(source)
    else:
        if isinstance(source, pd.DataFrame):
            source = pa.Table.from_pandas(source, preserve_index=False)
        rows = table_records(source)
    while True:
        chunk = list(itertools.islice(rows, batch_rows))
        if not chunk:
            return
        yield Batch(records=chunk)
