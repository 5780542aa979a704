"""Worker processes that parse chunks of text, fed and read back through shared memory files.

A pool's worker runs the pool's job on a chunk (the ingest's is
:func:`xpsvae.ingestion.csvbatches.parse_chunk_rows`) while this process
hands out the next ones and writes the shards. What goes between them is
large: 16 MB of text a chunk, and ~6 MB of parsed table back. Through the
executor's pipe each is pickled, written and read back in 64 kB pieces, a
large share of this process's CPU (docs/design/ingest.md). So, where the
system has a shared memory folder (``/dev/shm``), a worker reads its chunk
from one of a few files the pool rewrites in turn, and the table comes back
in a new file, in Arrow's IPC format, which this process maps and reads
without copying, unlinked as soon as it is opened (the memory goes with the
table). Elsewhere, or when a file cannot be written (the folder is full),
they go through the pipe.
"""

from __future__ import annotations

import glob
import mmap
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

import pyarrow as pa
import pyarrow.ipc

from ..core.machine import arrow_for_child, usable_cores

_PREFIX = "xpsvae-parse-"
#: The folder of shared memory files, where there is one (Linux): other processes can open
#: a file there by its name, and its pages never go to disk.
SHARED_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
    else None
#: A pool's job: (chunk, *args) -> (records, table or None).
Job = Callable[..., Tuple[List[tuple], Optional[pa.Table]]]


def remove_abandoned(prefix: str) -> None:
    """Files and folders ``SHARED_DIR/{prefix}{pid}-*`` of processes that ended without
    removing them (killed, say): shared memory is only given back when they go."""
    if SHARED_DIR is None:
        return
    for path in glob.glob(os.path.join(SHARED_DIR, f"{prefix}*-*")):
        pid = os.path.basename(path)[len(prefix):].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass
        except (ValueError, OSError):
            pass  # not ours to judge: another user's, or not a pid


class InFile(NamedTuple):
    """Bytes, or a table in Arrow's IPC format, left for the other process in a file."""

    path: str
    length: int = -1  # bytes: how many, from ``offset``
    offset: int = 0


def take_bytes(ref: Union[bytes, InFile]) -> bytes:
    """The bytes a pool left in one of its chunk files (the file stays: the pool reuses
    it)."""
    if not isinstance(ref, InFile):
        return ref
    with open(ref.path, "rb") as f:
        return os.pread(f.fileno(), ref.length, ref.offset)


def put_table(table: Optional[pa.Table], folder: Optional[str]
              ) -> Union[None, pa.Table, InFile]:
    """``table`` in Arrow's IPC format in a new file of ``folder`` (or itself)."""
    if table is None or folder is None:
        return table
    fd, path = tempfile.mkstemp(dir=folder)
    os.close(fd)
    try:
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    except OSError:
        os.unlink(path)
        return table
    return InFile(path)


def take_table(ref: Union[None, pa.Table, InFile]) -> Optional[pa.Table]:
    """The table of :func:`put_table`, read in place from its file (which is removed: the
    memory stays while the table lives)."""
    if not isinstance(ref, InFile):
        return ref
    fd = os.open(ref.path, os.O_RDONLY)
    try:
        os.unlink(ref.path)
        # One call maps every page, rather than a page fault for each as the table is read.
        memory = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ,
                           flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    finally:
        os.close(fd)
    return pa.ipc.open_stream(pa.py_buffer(memory)).read_all()


def _run_job(job: Job, chunk: Union[bytes, InFile], args: tuple, folder: Optional[str]
             ) -> Tuple[List[tuple], Union[None, pa.Table, InFile]]:
    """In a worker: ``job(chunk, *args)``, the table it gives left in a file."""
    records, table = job(take_bytes(chunk), *args)
    return records, put_table(table, folder)


def job_result(job: Future) -> Tuple[List[tuple], Optional[pa.Table]]:
    """A :meth:`ParsePool.submit` job's (records, table)."""
    records, table = job.result()
    return records, take_table(table)


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
        self._executor = None
        self._submitted = 0
        self._folder: Optional[str] = None
        # Chunk files, reused in turn: a file rewritten in place keeps its pages, where a
        # new one has the system find 16 MB of fresh memory for every chunk.
        self._chunk_files: List[Tuple[str, Optional[Future]]] = []

    def submit(self, chunk: bytes, *args) -> Future:
        """``job(chunk, *args)`` in a worker; read its result with :func:`job_result`."""
        if self._executor is None:
            if SHARED_DIR is not None:
                remove_abandoned(_PREFIX)
                self._folder = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-",
                                                dir=SHARED_DIR)
                self._chunk_files = [(os.path.join(self._folder, f"chunk-{k}"), None)
                                     for k in range(self.ahead + 1)]
            # spawn, not fork: the parent runs the decompression thread while it forks
            self._executor = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_setup, initargs=(self.workers,))
        k = len(self._chunk_files) and self._submitted % len(self._chunk_files)
        job = self._executor.submit(_run_job, self.job, self._put_chunk(k, chunk), args,
                                    self._folder)
        if self._chunk_files:
            self._chunk_files[k] = (self._chunk_files[k][0], job)
        self._submitted += 1
        return job

    def _put_chunk(self, k: int, chunk: bytes) -> Union[bytes, InFile]:
        """The chunk in chunk file ``k`` (or itself, where there is none or it is full)."""
        if not self._chunk_files:
            return chunk
        path, last = self._chunk_files[k]
        if last is not None:
            wait([last])  # read by its worker (a caller at most ``ahead`` behind never waits)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                view, done = memoryview(chunk), 0
                while done < len(chunk):
                    done += os.pwrite(fd, view[done:], done)
            finally:
                os.close(fd)
        except OSError:
            return chunk
        return InFile(path, len(chunk))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
        if self._folder is not None:  # the files of jobs cancelled or never read
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> "ParsePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
