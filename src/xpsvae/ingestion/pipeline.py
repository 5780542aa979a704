"""``xpsvae ingest``: Gaia DR3 XP files, in any archive format, read into one Parquet store.

The files are read by :mod:`xpsvae.ingestion.formats` (every format;
CSV-family files through the fast path of :mod:`xpsvae.ingestion.fastcsv`).
Every row is checked, the G-band flux joined (:mod:`xpsvae.ingestion.gflux`),
duplicates set aside (:mod:`xpsvae.ingestion.accounting`) and the store
written (:mod:`xpsvae.ingestion.writer`; its layout in
:mod:`xpsvae.core.files`).

Nothing is silently lost: a row is either kept or set aside with a reason;
``rows_read = rows_kept + rows_set_aside`` for every file (a file refused
whole is listed with its reason and no rows). A missing band is kept and
flagged (``bp_missing`` / ``rp_missing``); a row with neither band is set
aside. Duplicate source ids are set aside with the row of the first one.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..core import machine
from ..core.constants import ARCHIVE_KINDS, suffixes_of
from ..core.errors import SpectraError
from ..core.machine import system_allocator
from .accounting import SameContent, SeenIds, ids_in_store
from .csvbatches import parse_chunk_rows
from .gflux import g_flux_table, no_g_flux
from .jobs import ingest_in_jobs
from .pool import ParsePool
from .readfile import ingest_file
from .writer import StoreWriter


def default_parse_workers() -> int:
    """Parsing processes for ``xpsvae ingest``: 4 from 4 cores up, else 1 (in this process).

    In-process parsing already keeps ~2 cores busy (the parsing thread, the
    shard writer and the thread inflating the file): on 2 cores, 2 workers
    gave fewer rows/s for more memory (``benchmarks/ingest_throughput.py``).
    Parsing a bulk row costs about twice what inflating it does
    (:mod:`xpsvae.ingestion.inflate`), so from 2-3 workers on the inflating
    is the limit for one file, and more would only cost memory (~100 MB each).
    """
    return 4 if machine.usable_cores() >= 4 else 1


def default_jobs(n_files: int) -> int:
    """Files read at once by ``xpsvae ingest``: with several files and 4 cores or more, one
    job per two cores (a job keeps ~2 busy: its parsing, its shard writer and the process
    inflating its file), at most one per file and one per 2 GB of memory (a job takes
    ~0.5 GB); else 1, one file at a time (with :func:`default_parse_workers` parsing it).
    """
    cores = machine.usable_cores()
    if n_files < 2 or cores < 4:
        return 1
    jobs = min(n_files, cores // 2)
    memory = machine.usable_memory()  # the container's limit where it has one; unknown: cores decide
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
        tables = [n for n in names if n.lower().endswith(suffixes_of(ARCHIVE_KINDS))]
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
            cores (:mod:`xpsvae.ingestion.jobs`). The store is the same as with 1.
            With one file to read, ``workers`` parse it instead. 0:
            :func:`default_jobs` for the files given, folders counted by the
            files in them.

    Scripts that pass ``workers`` or ``jobs`` above 1 need the
    ``if __name__ == "__main__":`` guard of Python's multiprocessing.

    Returns:
        The manifest (also written to ``store/manifest.json``).
    """
    paths, not_read = files_in_folders(paths)
    gaia_source, g_not_read = files_in_folders(gaia_source)
    jobs = jobs or default_jobs(len(paths))
    with StoreWriter(store) as writer:  # one writer at a time: a second is refused
        manifest = writer.manifest
        if not_read or g_not_read:  # files of the folders given that are not tables
            listed = {entry["path"] for entry in manifest.get("not_read", [])}
            manifest["not_read"] = manifest.get("not_read", []) + [
                e for e in not_read + g_not_read if e["path"] not in listed]
        todo: dict = {}  # name: (source, size), in the order given
        same_content = SameContent(manifest)
        for i, p in enumerate(paths):
            name, source = (os.path.abspath(p), os.path.abspath(p)) \
                if isinstance(p, (str, os.PathLike)) else (table_name(p, i), p)
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
        seen = ids_in_store(store, manifest, progress) if todo else SeenIds()
        g_flux, g_counts, g_dir = g_flux_table(store, list(gaia_source), progress) if todo else \
            (no_g_flux(), {}, None)
        manifest["gaia_source"] = sorted(set(manifest["gaia_source"]) | set(map(os.path.abspath,
                                                                                 gaia_source)))
        if g_counts:
            manifest["gaia_source_rows"] = g_counts

        def record(name: str, account, shards: List[str]) -> None:
            source, size = todo[name]
            writer.record(name, account, shards, size,
                          None if size is None else same_content.fingerprint_of(source))

        if min(jobs, len(todo)) > 1:  # a single file is better read by parsing processes
            ingest_in_jobs(todo, store, manifest, seen, g_flux, rows_per_shard, wavelength, jobs,
                           record, progress, g_dir)
        else:
            # Shards are written by a thread: Arrow writes without the GIL, alongside the parsing.
            parsers = ParsePool(workers, parse_chunk_rows) if workers > 1 else nullcontext()
            with system_allocator(), parsers as pool, \
                    ThreadPoolExecutor(max_workers=1) as shard_writer:
                for name, (source, _) in tqdm(todo.items(), desc="ingest", unit="file",
                                              disable=not progress):
                    with tqdm(desc=os.path.basename(name), unit="row", leave=False,
                              disable=not progress) as rows_bar:
                        account, shards = ingest_file(
                            name, source, store, writer.next_shard, rows_per_shard, g_flux,
                            wavelength, manifest, seen, pool, shard_writer, rows_bar.update)
                    record(name, account, shards)
        writer.save()
        return manifest


def table_name(table, position: int) -> str:
    """How the manifest names an in-memory table: by its name, else its position."""
    meta = getattr(table, "meta", None) or getattr(table, "attrs", None) or {}
    kind = type(table).__name__
    return f"<{kind} {meta['name']}>" if meta.get("name") else f"<{kind} #{position}>"
