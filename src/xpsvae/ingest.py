"""Read Gaia DR3 XP continuous spectra, in any archive format, into one Parquet store.

Formats: DataLink CSV (arrays as ``"(a, b, ...)"``), ECSV and the bulk
``XpContinuousMeanSpectrum_*.csv.gz`` (gzip'd ECSV, arrays as ``"[a,b,...]"``),
FITS, VOTable (binary and plain), Avro (``MeanSpectrumSolutionWithCov``,
camelCase fields, packed covariance), tables with flattened columns
(``bp_coeff_0..``, ``e_bp_coeff_..``) and Parquet with arrays as strings or
lists.

The store is a folder::

    STORE/part-NNNNN.parquet   one schema (STORE_SCHEMA), one or more shards per input file
    STORE/set_aside.parquet    every rejected row: file, row, raw text, reason
    STORE/manifest.json        per input file and in total: rows read, kept, set aside, reasons

Nothing is silently lost: a row is either kept or set aside with a reason;
``rows_read = rows_kept + rows_set_aside`` for every file. A missing band is
kept and flagged (``bp_missing`` / ``rp_missing``); a row with neither band is
set aside. Duplicate source ids are set aside with the row of the first one.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .data import SpectraError
from .files import write_json
from .sampling import G_ZERO_POINT

BANDS = ("bp", "rp")
#: Basis function set ids of Gaia DR3 (BP, RP); others are refused.
DR3_BASIS_IDS = {"bp": {56}, "rp": {57}}
MANIFEST = "manifest.json"
SET_ASIDE = "set_aside.parquet"

_band_fields = []
for _b in BANDS:
    _band_fields += [pa.field(f"{_b}_coefficients", pa.list_(pa.float64())),
                     pa.field(f"{_b}_coefficient_errors", pa.list_(pa.float64())),
                     pa.field(f"{_b}_coefficient_correlations", pa.list_(pa.float64())),
                     pa.field(f"{_b}_n_relevant_bases", pa.int32()),
                     pa.field(f"{_b}_standard_deviation", pa.float64()),
                     pa.field(f"{_b}_basis_function_id", pa.int32()),
                     pa.field(f"{_b}_missing", pa.bool_())]
STORE_SCHEMA = pa.schema([pa.field("source_id", pa.int64()), *_band_fields,
                          pa.field("phot_g_mean_flux", pa.float64()),
                          pa.field("g_flux_origin", pa.string()),
                          pa.field("input_file", pa.string()),
                          pa.field("input_row", pa.int64())])


class XPParseError(SpectraError):
    """A value in an XP file that cannot be parsed."""


_ARRAY_TEXT = re.compile(r"^\s*[\(\[]?(.*?)[\)\]]?\s*$", re.S)


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
        return {"rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "rows_set_aside": len(self.set_aside),
                "reasons": dict(Counter(r["reason"].split(":")[0] for r in self.set_aside))}


# --------------------------------------------------------------------------- readers
# Each reader yields (row_number, raw_text_or_None, record) where record maps the
# archive's snake_case names to values, arrays already parsed (or raises XPParseError
# for that row, which the caller sets aside).

def _open_text(path: str):
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _csv_records(path: str) -> Iterator[tuple]:
    """DataLink CSV and ECSV (plain or gzip'd): header line, then one star per line."""
    with _open_text(path) as f:
        header = None
        number = -1
        try:
            for line in f:
                if header is None:
                    if line.startswith("#") or not line.strip():
                        continue
                    header = next(csv.reader([line]))
                    continue
                number += 1
                if not line.strip():
                    continue
                try:
                    fields = next(csv.reader([line]))
                except csv.Error as exc:
                    yield number, line.rstrip("\n"), XPParseError(f"bad CSV line ({exc})")
                    continue
                if len(fields) != len(header):
                    yield number, line.rstrip("\n"), XPParseError(
                        f"{len(fields)} fields, the header has {len(header)} (truncated line?)")
                    continue
                yield number, line.rstrip("\n"), dict(zip(header, fields))
        except (EOFError, OSError, gzip.BadGzipFile) as exc:  # a corrupt or cut gzip member
            yield number + 1, None, XPParseError(f"file unreadable after row {number}: {exc}")
    if header is None:
        raise SpectraError(f"{path}: no header line; an empty file or not a table")


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


def _file_kind(path: str) -> str:
    name = path.lower()
    if name.endswith(".avro"):
        return "avro"
    if name.endswith((".fits", ".fit", ".fits.gz")):
        return "fits"
    if name.endswith((".xml", ".vot", ".votable")):
        return "votable"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".ecsv", ".ecsv.gz")):
        return "csv"
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


# --------------------------------------------------------------------------- G flux

def read_g_flux(paths: Sequence[str]) -> Dict[int, tuple]:
    """source_id -> (G flux in e-/s, origin) from gaia_source tables.

    ``phot_g_mean_flux`` where given, else ``phot_g_mean_mag`` converted with
    the DR3 zero point: ``10**(-0.4 (G - 25.6874))``.
    """
    from .data import column_to_1d, read_table_columns
    found: Dict[int, tuple] = {}
    for path in paths:
        columns = read_table_columns(path) if not path.lower().endswith((".csv", ".ecsv")) \
            else _astropy_columns(path)
        if "source_id" not in columns:
            raise SpectraError(f"{path}: a gaia_source table needs a source_id column")
        ids = column_to_1d(columns["source_id"]).astype(np.int64)
        flux = column_to_1d(columns["phot_g_mean_flux"]).astype(float) \
            if "phot_g_mean_flux" in columns else np.full(len(ids), np.nan)
        mag = column_to_1d(columns["phot_g_mean_mag"]).astype(float) \
            if "phot_g_mean_mag" in columns else np.full(len(ids), np.nan)
        if "phot_g_mean_flux" not in columns and "phot_g_mean_mag" not in columns:
            raise SpectraError(f"{path}: needs phot_g_mean_flux or phot_g_mean_mag")
        for sid, f, m in zip(ids, flux, mag):
            if np.isfinite(f) and f > 0:
                found[int(sid)] = (float(f), "phot_g_mean_flux")
            elif np.isfinite(m):
                found.setdefault(int(sid), (10 ** (-0.4 * (m - G_ZERO_POINT)), "phot_g_mean_mag"))
    return found


def _astropy_columns(path: str) -> dict:
    from astropy.table import Table
    table = Table.read(path)
    return {c: table[c] for c in table.colnames}


# --------------------------------------------------------------------------- the store

def ingest(paths: Iterable[str], store: str, gaia_source: Sequence[str] = (),
           rows_per_shard: int = 5_000, progress: bool = True) -> dict:
    """Read XP files into the store; files already complete in its manifest are skipped.

    Args:
        paths: input files, any mix of formats.
        store: the store folder (created if needed).
        gaia_source: gaia_source tables for the G-band flux join.
        rows_per_shard: rows per Parquet shard; also the most rows held in
            memory (5,000 rows: ~720 MB peak RSS, the package included).
        progress: show a progress bar over files.

    Returns:
        The manifest (also written to ``store/manifest.json``).
    """
    from tqdm.auto import tqdm
    os.makedirs(store, exist_ok=True)
    manifest_path = os.path.join(store, MANIFEST)
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else \
        {"files": {}, "shards": [], "gaia_source": []}
    g_flux = read_g_flux(list(gaia_source)) if gaia_source else {}
    manifest["gaia_source"] = sorted(set(manifest["gaia_source"]) | set(map(os.path.abspath,
                                                                             gaia_source)))
    seen = _ids_in_store(store, manifest)
    set_aside_rows = _read_set_aside(store)
    paths = [os.path.abspath(p) for p in paths]
    for path in tqdm(paths, desc="ingest", unit="file", disable=not progress):
        stat = os.stat(path)
        done = manifest["files"].get(path)
        if done and done.get("complete") and done.get("size") == stat.st_size:
            continue  # re-running after an interruption: this file is already in the store
        account = FileAccount(path)
        rows: List[dict] = []
        shards: List[str] = []
        rows_bar = tqdm(records(path), desc=os.path.basename(path), unit="row", leave=False,
                        disable=not progress)
        try:
            for number, raw, record in rows_bar:
                account.rows_read += 1
                try:
                    if isinstance(record, XPParseError):
                        raise record
                    row = normalise_record(record)
                except XPParseError as exc:
                    account.add_set_aside(number, str(exc), raw)
                    continue
                first = seen.get(row["source_id"])
                if first is not None:
                    account.add_set_aside(number, f"duplicate source_id: first at {first}", raw)
                    continue
                seen[row["source_id"]] = f"{os.path.basename(path)} row {number}"
                flux, origin = g_flux.get(row["source_id"], (np.nan, "missing"))
                row.update(phot_g_mean_flux=flux, g_flux_origin=origin, input_file=path,
                           input_row=number)
                rows.append(row)
                if len(rows) >= rows_per_shard:  # memory holds at most one shard of rows
                    shards.append(_write_shard(store, len(manifest["shards"]) + len(shards), rows))
                    account.rows_kept += len(rows)
                    rows = []
        except SpectraError as exc:
            account.add_set_aside(-1, f"file refused: {exc}")
        finally:
            rows_bar.close()
        if rows:
            shards.append(_write_shard(store, len(manifest["shards"]) + len(shards), rows))
            account.rows_kept += len(rows)
        set_aside_rows += account.set_aside
        manifest["shards"] += shards
        manifest["files"][path] = {**account.to_dict(), "shards": shards, "size": stat.st_size,
                                   "complete": True}
        _write_set_aside(store, set_aside_rows)
        manifest["total"] = _totals(manifest["files"])
        write_json(manifest_path, manifest)
    manifest["total"] = _totals(manifest["files"])
    write_json(manifest_path, manifest)
    return manifest


def _fill_synthetic_g(rows: List[dict]) -> None:
    """Rows without a G flux from gaia_source and with both bands get the synthetic one."""
    todo = [r for r in rows if r["g_flux_origin"] == "missing"
            and not (r["bp_missing"] or r["rp_missing"])]
    if not todo:
        return
    try:
        from .sampling import SYNTHETIC_G_ORIGIN, synthetic_g_flux
        flux = synthetic_g_flux(np.array([r["bp_coefficients"] for r in todo]),
                                np.array([r["rp_coefficients"] for r in todo]))
    except ImportError:  # GaiaXPy absent: the rows stay flagged "missing"
        return
    for row, value in zip(todo, flux):
        if np.isfinite(value):
            row["phot_g_mean_flux"], row["g_flux_origin"] = float(value), SYNTHETIC_G_ORIGIN


def _write_shard(store: str, index: int, rows: List[dict]) -> str:
    """Write rows as shard number ``index`` (atomically); return its file name."""
    _fill_synthetic_g(rows)
    name = f"part-{index:05d}.parquet"
    table = pa.Table.from_pylist(rows, schema=STORE_SCHEMA)
    pq.write_table(table, os.path.join(store, name + ".tmp"), compression="zstd")
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


def _ids_in_store(store: str, manifest: dict) -> Dict[int, str]:
    seen = {}
    for name in manifest["shards"]:
        table = pq.read_table(os.path.join(store, name), columns=["source_id", "input_file",
                                                                  "input_row"])
        for sid, f, r in zip(*(table.column(c).to_pylist() for c in table.column_names)):
            seen[sid] = f"{os.path.basename(f)} row {r}"
    return seen


def _read_set_aside(store: str) -> List[dict]:
    path = os.path.join(store, SET_ASIDE)
    return pq.read_table(path).to_pylist() if os.path.exists(path) else []


def _write_set_aside(store: str, rows: List[dict]) -> None:
    schema = pa.schema([("input_file", pa.string()), ("input_row", pa.int64()),
                        ("raw_text", pa.string()), ("reason", pa.string())])
    path = os.path.join(store, SET_ASIDE)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path + ".tmp")
    os.replace(path + ".tmp", path)


def read_store_columns(store: str) -> dict:
    """The store's shards as one column mapping (for :func:`xpsvae.data.spectra_from_columns`)."""
    manifest_path = os.path.join(store, MANIFEST)
    if not os.path.exists(manifest_path):
        raise SpectraError(f"{store}: no {MANIFEST}; not an xpsvae store")
    shards = json.load(open(manifest_path))["shards"]
    if not shards:
        raise SpectraError(f"{store}: the store holds no rows")
    table = pa.concat_tables([pq.read_table(os.path.join(store, s)) for s in shards])
    return {c: table.column(c) for c in table.column_names}
