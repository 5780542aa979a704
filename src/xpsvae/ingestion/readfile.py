"""One input file's rows into shards: parsed, checked, duplicates set aside, G joined.

:func:`ingest_file` is what both a one-at-a-time ingest and each job of
:mod:`xpsvae.ingestion.jobs` run on a file.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..core.constants import BANDS, no_band
from ..core.errors import SpectraError, XPParseError
from .accounting import FileAccount, SeenIds, duplicate_reason, row_of
from .formats import file_batches
from .gflux import join_g_flux
from .pool import ParsePool
from .records import (
    BATCH_SCHEMA,
    SAMPLED_BATCH_SCHEMA,
    Batch,
    grid_length_error,
    is_sampled_record,
    normalise_record,
    normalise_sampled_record,
    partial_reason,
    sampled_grid,
)
from .writer import write_shard


def raw_text(batch: Batch, row: int) -> Optional[str]:
    """A row's raw text in its batch: its line, where the format has one."""
    return next((r for n, r, _ in batch.records if n == row), None) or batch.raw_line(row)


def normalise_batch(batch: Batch, account: "FileAccount", grid: Optional[np.ndarray] = None
                    ) -> Tuple[pa.Table, Dict[int, str]]:
    """The batch's good rows as one table (in row order), bad rows set aside; and the
    partial ones among them, input row to reason, for the caller to count once it knows
    which rows it keeps (a duplicate is set aside, not counted partial).

    Coefficients (BATCH_SCHEMA), or sampled spectra on ``grid`` (SAMPLED_BATCH_SCHEMA).
    """
    partial: Dict[int, str] = {}
    schema = BATCH_SCHEMA if grid is None else SAMPLED_BATCH_SCHEMA
    fast = batch.table
    if grid is None and fast is not None and fast.num_rows:
        # The fast path keeps a row with a band missing whole (its other inputs all good):
        # partial. A row with any other missing input it leaves to the exact reader below.
        rows = fast.column("input_row").to_numpy()
        for band in reversed(BANDS):  # the first band missing names the reason
            missing = fast.column(f"{band}_missing").to_numpy(zero_copy_only=False)
            partial.update(dict.fromkeys(rows[missing.astype(bool)].tolist(), no_band(band)))
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
        why = partial_reason(row)
        if why:
            partial[number] = why
        rows.append(row)
    tables = [t for t in (fast, pa.Table.from_pylist(rows, schema=schema) if rows
                          else None) if t is not None and t.num_rows]
    if not tables:
        return schema.empty_table(), partial
    table = pa.concat_tables(tables)
    return (table.take(pc.sort_indices(table.column("input_row"))) if len(tables) > 1
            else table), partial



def ingest_file(name: str, source, shard_dir: str, first_shard: int, rows_per_shard: int,
                g_flux: Tuple[np.ndarray, np.ndarray, np.ndarray],
                wavelength: Optional[np.ndarray], kinds: dict, seen: "SeenIds",
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
            writes.append(writer.submit(write_shard, shard_dir, first_shard + len(writes),
                                        shard))
            account.rows_kept += shard.num_rows
            table = table.slice(rows_per_shard)
        if table is not None and table.num_rows:
            pending.append(table)
    try:
        batches = file_batches(source, pool=pool)
        first_batch = next(batches, None)
        grid = check_kind(name, first_batch, kinds, wavelength)
        for batch in itertools.chain([first_batch] if first_batch else [], batches):
            account.rows_read += batch.rows
            on_rows(batch.rows)
            table, partial = normalise_batch(batch, account, grid)
            keep = drop_duplicates(table, batch, seen, name, account)
            if not keep.all():  # a filter copies every column, correlations too
                for row in table.column("input_row").to_numpy()[~keep].tolist():
                    partial.pop(row, None)
                table = table.filter(pa.array(keep))
            account.partial.update(partial.values())
            seen.add(table.column("source_id").to_numpy(), name,
                     table.column("input_row").to_numpy())
            pending.append(join_g_flux(table, name, *g_flux, grid))
            if sum(t.num_rows for t in pending) >= rows_per_shard:
                write_full_shards(final=False)
    except SpectraError as exc:
        account.add_set_aside(-1, f"file refused: {exc}")
    write_full_shards(final=True)
    return account, [w.result() for w in writes]



def check_kind(name: str, first: Optional[Batch], manifest: dict,
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
    agree_with_store(name, kind, None, manifest)
    if not sampled:
        return None
    grid = sampled_grid(name, record, wavelength)
    agree_with_store(name, kind, grid, manifest)
    return grid


def agree_with_store(name: str, kind: str, grid: Optional[Sequence[float]],
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


def drop_duplicates(table: pa.Table, batch: Batch, seen: "SeenIds", name: str,
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
        where = first[i] or row_of(name, rows[np.flatnonzero(ids == ids[i])[0]])
        account.add_set_aside(int(rows[i]), duplicate_reason(where),
                              raw_text(batch, int(rows[i])))
        keep[i] = False
    return keep

