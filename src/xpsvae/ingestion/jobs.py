"""Many input files ingested at once, one process each, into the same store as one at a time.

One file's ingest is limited by a single process (it inflates, parses and
writes in ~0.4 ms of CPU a bulk row, on ~2 cores); a catalogue of 3,386
bulk files can use every core of a machine by reading several files at
once. Each job ingests one file with :func:`xpsvae.ingestion.readfile.ingest_file` into
shards of its own (``STORE/.jobs/N/``), checking duplicates within that file
only; this process takes the files' results in the order given and adds
them to the store as a one-at-a-time ingest would have:

- a file's kind (and grid) must be the store's, else it is refused whole;
- a source_id already in the store (from an earlier file) is set aside, its
  raw text read again from the file, the file's shards rewritten without it,
  and a duplicate within the file that named it as first named the earlier
  file's row instead;
- the shards take their numbers in the store.

The G-flux table goes to the jobs as memory-mapped ``.npy`` files (the
store's kept ``.g_flux``, else a copy in ``.jobs``), so that the jobs share
one copy. An interrupted ingest leaves ``.jobs``, which the next one clears.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..core.errors import SpectraError
from ..core.files import JOBS_DIR, shard_name
from ..core.machine import arrow_for_child, system_allocator
from .accounting import FileAccount, SeenIds, duplicate_reason, row_of
from .formats import file_batches
from .gflux import G_FLUX_ARRAYS
from .readfile import agree_with_store, ingest_file, raw_text
from .records import partial_reason
from .writer import write_shard

_job_state: dict = {}  # in a job process: the G-flux arrays, the queue for row counts


def _job_setup(g_dir: str, rows_queue) -> None:
    arrow_for_child(1)  # a job's parsing is its own; the other jobs have the other cores
    _job_state["g_flux"] = tuple(np.load(os.path.join(g_dir, f"{n}.npy"), mmap_mode="r")
                                 for n in G_FLUX_ARRAYS)
    _job_state["rows"] = rows_queue


def _job(index: int, name: str, source, store: str, rows_per_shard: int, kinds: dict,
         wavelength: Optional[np.ndarray]) -> Tuple[FileAccount, List[str], dict]:
    """One file into ``STORE/.jobs/index/``: its account, shard paths and kind."""
    shard_dir = os.path.join(store, JOBS_DIR, str(index))
    os.makedirs(shard_dir, exist_ok=True)
    with ThreadPoolExecutor(max_workers=1) as writer:
        account, shards = ingest_file(
            name, source, shard_dir, 0, rows_per_shard, _job_state["g_flux"], wavelength,
            kinds, SeenIds(), None, writer, _job_state["rows"].put)
    return account, [os.path.join(shard_dir, s) for s in shards], kinds


def ingest_in_jobs(todo: Dict[str, tuple], store: str, manifest: dict,
                   seen: "SeenIds", g_flux: tuple, rows_per_shard: int,
                   wavelength: Optional[np.ndarray], jobs: int,
                   record: Callable[[str, "FileAccount", List[str]], None],
                   progress: bool, g_dir: Optional[str] = None) -> None:
    """Ingest ``todo`` (name: (source, size)) with ``jobs`` processes; ``record`` each file.

    Files are recorded in the order of ``todo``, each once all before it are;
    at most ``2 * jobs`` files are read ahead of the one to record next. The jobs
    map the G-flux arrays from ``g_dir`` (the store's kept table) or from a copy.
    """
    jobs_dir = os.path.join(store, JOBS_DIR)
    shutil.rmtree(jobs_dir, ignore_errors=True)  # an interrupted ingest's
    os.makedirs(jobs_dir)
    if g_dir is None:
        g_dir = os.path.join(jobs_dir, "g_flux")
        os.makedirs(g_dir)
        for n, array in zip(G_FLUX_ARRAYS, g_flux):
            np.save(os.path.join(g_dir, f"{n}.npy"), array)
    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads
    rows_queue = context.Queue()
    names = list(todo)
    kinds = {k: manifest[k] for k in ("kind", "wavelength_nm") if k in manifest}
    files_bar = tqdm(total=len(names), desc="ingest", unit="file", disable=not progress)
    rows_bar = tqdm(desc="rows", unit="row", disable=not progress)
    try:
        with system_allocator(), ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_job_setup,
                initargs=(g_dir, rows_queue)) as pool:
            running = {}
            for position, name in enumerate(names):
                while len(running) < 2 * jobs and len(running) + position < len(names):
                    i = position + len(running)
                    running[i] = pool.submit(_job, i, names[i], todo[names[i]][0], store,
                                             rows_per_shard, kinds, wavelength)
                while not running[position].done():
                    wait([running[position]], timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(rows_queue, rows_bar)
                account, shards, file_kinds = running.pop(position).result()
                account, shards = _add_to_store(name, todo[name][0], account, shards,
                                                file_kinds, store, manifest, seen,
                                                rows_per_shard)
                record(name, account, shards)
                files_bar.update()
            _drain(rows_queue, rows_bar)
    finally:
        files_bar.close()
        rows_bar.close()
        shutil.rmtree(jobs_dir, ignore_errors=True)


def _drain(rows_queue, rows_bar) -> None:
    try:
        while True:
            rows_bar.update(rows_queue.get_nowait())
    except queue.Empty:
        pass


def _add_to_store(name: str, source, account: "FileAccount", shards: List[str],
                  file_kinds: dict, store: str, manifest: dict, seen: "SeenIds",
                  rows_per_shard: int) -> Tuple["FileAccount", List[str]]:
    """A job's file into the store as a one-at-a-time ingest would have put it (see above)."""
    if "kind" in file_kinds:
        try:
            agree_with_store(name, file_kinds["kind"], file_kinds.get("wavelength_nm"),
                                      manifest)
        except SpectraError as exc:  # the same refusal as when reading its first rows
            for path in shards:
                os.remove(path)
            account = FileAccount(name)
            account.add_set_aside(-1, f"file refused: {exc}")
            return account, []
    tables = [pq.read_table(p, columns=["source_id", "input_row"]) for p in shards]
    ids = np.concatenate([t.column("source_id").to_numpy() for t in tables]) \
        if tables else np.zeros(0, np.int64)
    rows = np.concatenate([t.column("input_row").to_numpy() for t in tables]) \
        if tables else np.zeros(0, np.int64)
    first = seen.first_seen(ids)
    again = np.array([f is not None for f in first], bool)
    first_shard = len(manifest["shards"])
    if not again.any():
        names = []
        for k, path in enumerate(shards):
            names.append(shard_name(first_shard + k))
            os.replace(path, os.path.join(store, names[-1]))
    else:
        names, dropped = _rewrite_without(shards, ~again, store, first_shard, rows_per_shard)
        account.partial.subtract(dropped)  # a duplicate set aside is no partial row kept
        account.partial = +account.partial
        raw = _raw_lines(source, set(rows[again].tolist()))
        renamed = {}  # a duplicate within the file names the earlier file's row instead
        for i in np.flatnonzero(again):
            reason = duplicate_reason(first[i])
            renamed[duplicate_reason(row_of(name, rows[i]))] = reason
            account.add_set_aside(int(rows[i]), reason, raw.get(int(rows[i])))
        for entry in account.set_aside:
            entry["reason"] = renamed.get(entry["reason"], entry["reason"])
        account.rows_kept -= int(again.sum())
    seen.add(ids[~again], name, rows[~again])
    return account, names


def _rewrite_without(shards: List[str], keep: np.ndarray, store: str, first_shard: int,
                     rows_per_shard: int) -> Tuple[List[str], Counter]:
    """The shards' rows where ``keep``, as the store's shards from number ``first_shard``;
    and the partial reasons of the rows left out."""
    table = pa.concat_tables([pq.read_table(p) for p in shards])
    dropped = Counter(filter(None, map(partial_reason, table.filter(pa.array(~keep))
                                       .to_pylist())))
    table = table.filter(pa.array(keep))
    names = []
    for start in range(0, table.num_rows, rows_per_shard):
        names.append(write_shard(store, first_shard + len(names),
                                 table.slice(start, rows_per_shard)))
    for path in shards:
        os.remove(path)
    return names, dropped


def _raw_lines(source, rows: set) -> Dict[int, Optional[str]]:
    """The raw text of the file's ``rows``, read again (None where a format has none)."""
    found: Dict[int, Optional[str]] = {}
    for batch in file_batches(source):
        numbers = [n for n, _, _ in batch.records]
        if batch.table is not None:
            numbers += batch.table.column("input_row").to_pylist()
        for number in rows.intersection(numbers):
            found[number] = raw_text(batch, number)
        if len(found) == len(rows):
            break
    return found
