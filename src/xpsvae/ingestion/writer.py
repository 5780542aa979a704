"""Writing a store: its shards, its set-aside rows and its manifest, each atomically.

The layout is in :mod:`xpsvae.core.files`; the reading side is
:class:`xpsvae.io.store.Store`.
"""

from __future__ import annotations

import glob
import os

try:  # POSIX; elsewhere a store is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
from typing import List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.constants import BANDS
from ..core.errors import SpectraError
from ..core.files import (
    MANIFEST,
    SET_ASIDE,
    SHARD_GLOB,
    STORE_FORMAT_VERSION,
    WRITER_LOCK,
    atomic_path,
    shard_name,
    write_json,
)
from ..io.store import Store
from .accounting import FileAccount, totals
from .records import BATCH_SCHEMA, SAMPLED_BATCH_SCHEMA

SAMPLED_STORE_SCHEMA = pa.schema([*list(SAMPLED_BATCH_SCHEMA)[:3],
                                  pa.field("phot_g_mean_flux", pa.float64()),
                                  pa.field("g_flux_origin", pa.string()),
                                  pa.field("input_file", pa.string()),
                                  pa.field("input_row", pa.int64())])
FLOAT_LIST_COLUMNS = ["flux", "flux_error"] + [f"{b}_{k}" for b in BANDS
                      for k in ("coefficients", "coefficient_errors", "coefficient_correlations")]
STORE_SCHEMA = pa.schema([*list(BATCH_SCHEMA)[:-1],
                          pa.field("phot_g_mean_flux", pa.float64()),
                          pa.field("g_flux_origin", pa.string()),
                          pa.field("input_file", pa.string()),
                          pa.field("input_row", pa.int64())])


def write_shard(store: str, index: int, table: pa.Table) -> str:
    """Write a STORE_SCHEMA table as shard number ``index`` (atomically); return its file name."""
    name = shard_name(index)
    # Floats rarely repeat: no dictionary pages (they cost ~60% of the write). Min/max
    # statistics only for the scalar columns (source_id ranges for readers' filters): over
    # the arrays' elements they tell nothing and cost ~20% of the write. Byte-stream-split
    # encoding of the elements would make shards 11% smaller, but the ingest ~5% slower
    # (five A/B pairs on 20,000 bulk rows), so it is not used.
    lists = [c for c in FLOAT_LIST_COLUMNS if c in table.column_names]
    with atomic_path(os.path.join(store, name)) as tmp:
        pq.write_table(table, tmp, compression="zstd",
                       use_dictionary=["g_flux_origin", "input_file"],
                       write_statistics=[c for c in table.column_names if c not in lists])
    return name


SET_ASIDE_SCHEMA = pa.schema([("input_file", pa.string()), ("input_row", pa.int64()),
                              ("raw_text", pa.string()), ("reason", pa.string())])


def append_set_aside(store: str, rows: List[dict]) -> None:
    """Add a file's rejected rows to ``set_aside.parquet`` (made if absent), atomically.

    The rows already there are copied into the new file a row group (one
    earlier file's rows) at a time, so memory holds one file's rejected rows,
    not the store's: each bulk row carries ~40 kB of raw text.
    """
    path = os.path.join(store, SET_ASIDE)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, SET_ASIDE_SCHEMA) as writer:
        if os.path.exists(path):
            with pq.ParquetFile(path) as earlier:
                for group in range(earlier.num_row_groups):
                    writer.write_table(earlier.read_row_group(group))
        if rows or not os.path.exists(path):
            writer.write_table(pa.Table.from_pylist(rows, schema=SET_ASIDE_SCHEMA))


class StoreWriter:
    """A store being written: its manifest, and each input file's shards and rows recorded.

    One process writes a store at a time: the writer holds an OS lock on
    ``STORE/.writer.lock`` until :meth:`close`, and a second writer is refused
    at once, by the first one's pid, before it reads anything (the lock goes
    with the process, however it ends).

    Args:
        folder: the store's folder, made if absent. A folder holding shards
            but no manifest (an encoded catalogue, say) is refused.

    Example::

        with StoreWriter("my_store") as writer:
            ...  # write the file's shards with write_shard(folder, index, table)
            writer.record(name, account, shards, size, fingerprint)   # saves the manifest
    """

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.manifest_path = os.path.join(folder, MANIFEST)
        if not os.path.exists(self.manifest_path) and glob.glob(os.path.join(folder, SHARD_GLOB)):
            # an encoded catalogue, say: its shards have the names this would write
            raise SpectraError(f"{folder}: holds {SHARD_GLOB} files but no {MANIFEST}, so it "
                               "is not a store to add to; ingest into a new folder")
        self._lock = _lock_store(folder)
        exists = os.path.exists(self.manifest_path)
        self.manifest = Store(folder).manifest if exists else \
            {"files": {}, "shards": [], "gaia_source": []}
        self.manifest["format_version"] = STORE_FORMAT_VERSION  # stores from before said 1
        if self.manifest["shards"]:
            self.manifest.setdefault("kind", "coefficients")  # stores before sampled ones

    @property
    def next_shard(self) -> int:
        """The number the next shard written takes."""
        return len(self.manifest["shards"])

    def record(self, name: str, account: FileAccount, shards: List[str],
               size: Optional[int] = None, fingerprint: Optional[str] = None) -> None:
        """An input file done: its shards (already written), its account, its rows set
        aside; the manifest saved."""
        account.set_aside.sort(key=lambda r: r["input_row"])
        self.manifest["shards"] += shards
        entry = account.to_dict()
        # a file refused whole is tried again by the next run (it may have been fixed)
        entry.update(shards=shards, size=size, complete="refused" not in entry)
        if fingerprint is not None:
            entry["fingerprint"] = fingerprint
        self.manifest["files"][name] = entry
        if account.set_aside or not os.path.exists(os.path.join(self.folder, SET_ASIDE)):
            # written again only when it changed: rows set aside carry their raw text
            # (~40 kB a bulk row), and a catalogue is thousands of files
            append_set_aside(self.folder, account.set_aside)
        self.save()

    def save(self) -> None:
        """The manifest, with its totals, written atomically."""
        self.manifest["total"] = totals(self.manifest["files"])
        write_json(self.manifest_path, self.manifest)

    def close(self) -> None:
        """Let another writer have the store."""
        if self._lock is not None:
            self._lock.close()  # closing the file releases its lock
            self._lock = None

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lock_store(folder: str):
    """The open, locked ``.writer.lock`` of a store (None where locks are not offered).

    Raises:
        SpectraError: another process holds it.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None
    lock = open(os.path.join(folder, WRITER_LOCK), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise SpectraError(f"{folder}: another xpsvae ingest (pid {holder}) is writing this "
                           "store; wait for it to finish (a store takes one writer at a time), "
                           "or ingest into another folder") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock
