"""Worker processes that parse chunks of text, a few chunks ahead, results in file order.

A pool's worker runs the pool's job on a chunk (the ingest's is
:func:`xpsvae.ingestion.csvbatches.parse_chunk_rows`) while this process
hands out the next ones and writes the shards. Chunks and parsed tables go
through ``concurrent.futures``' own pipe: a transport of our own through
shared-memory files was 1.16x faster with 2 workers on 2 cores, short of the
1.2x that would have kept it (docs/benchmarks.md).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, List, Optional, Tuple

import pyarrow as pa

from ..core.machine import arrow_for_child, usable_cores

#: A pool's job: (chunk, *args) -> (records, table or None).
Job = Callable[..., Tuple[List[tuple], Optional[pa.Table]]]


def _worker_setup(workers: int) -> None:
    arrow_for_child(usable_cores() // workers)


class ParsePool:
    """Worker processes that parse chunks with ``job``, started on first use.

    Parsing is most of an ingest's work and, on one core, ~1.5x slower than
    inflating, so a few processes keep up with one file's inflating. Files of
    a single chunk never start the pool.

    Args:
        workers: processes (the ingest makes a pool only for 2 or more).
        job: ``job(chunk_bytes, *args) -> (records, table or None)``, a function
            of a module (the workers import it by name).
    """

    def __init__(self, workers: int, job: Job):
        self.workers = workers
        self.job = job
        self.ahead = workers + 1  # chunks in flight: memory holds about two chunks per worker
        # Half the in-process chunk: each worker's parsing holds several times its chunk, so
        # with 4 workers 16 MB chunks took the ingest to 1.1 GB, 8 MB to 0.85 (and no more CPU).
        self.chunk_bytes = 8 << 20
        self._executor: Optional[ProcessPoolExecutor] = None

    def submit(self, chunk: bytes, *args) -> Future:
        """``job(chunk, *args)`` in a worker; its future's result is the job's."""
        if self._executor is None:
            # spawn, not fork: the parent runs ISA-L's inflating thread while it forks
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_setup, initargs=(self.workers,))
        return self._executor.submit(self.job, chunk, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def __enter__(self) -> "ParsePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
