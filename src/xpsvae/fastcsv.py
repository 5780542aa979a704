"""The fast path for the CSV family (DataLink CSV, ECSV, bulk ``*.csv.gz``): whole chunks at once.

A file is decompressed in a background thread (``isal`` when installed, else
zlib) into chunks of complete lines. Each chunk is tokenised by Arrow's CSV
reader with every column kept as text, then:

* scalar columns are cast by Arrow;
* array columns (``"[a,b,...]"`` or ``"(a, b, ...)"``) are parsed in one go:
  brackets, commas and spaces become line breaks, so the chunk's arrays turn
  into a one-column CSV of numbers that Arrow parses natively, while the
  commas counted per row give each array's length.

Anything irregular in a chunk (a blank line, a row with the wrong number of
fields, text that is not a number) makes :func:`parse_chunk` return None and
the caller reads that chunk row by row with the exact, slower parser, so the
fast path never changes what is kept, what is set aside, or the messages.
"""

from __future__ import annotations

import csv
import queue
import threading
from typing import Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

#: Bytes of text per chunk: ~400 bulk-format rows.
CHUNK_BYTES = 16 << 20
_TO_NEWLINES = bytes.maketrans(b",[]() ", b"\n" * 6)


class Irregular(Exception):
    """A chunk the fast path does not handle; read it row by row instead."""


def _open_binary(path: str):
    if path.endswith(".gz"):
        try:  # ISA-L inflates about 1.5x faster than zlib
            from isal import igzip
            return igzip.open(path, "rb")
        except ImportError:
            import gzip
            return gzip.open(path, "rb")
    return open(path, "rb")


def line_chunks(path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Chunks of complete lines, read (and decompressed) ahead in a background thread.

    A read error (a corrupt gzip member, a cut file) is raised where it occurs,
    after every complete chunk before it has been yielded.
    """
    chunks: "queue.Queue" = queue.Queue(maxsize=2)  # bounds memory to ~3 chunks
    stop = threading.Event()

    def produce():
        pending: List[bytes] = []  # blocks read since the last chunk handed over
        size = 0
        try:
            with _open_binary(path) as f:
                while not stop.is_set():
                    # Small reads, so that a corrupt member loses at most 1 MB of lines.
                    block = f.read(1 << 20)
                    if not block:
                        break
                    pending.append(block)
                    size += len(block)
                    if size >= chunk_bytes:
                        data = b"".join(pending)
                        cut = data.rfind(b"\n") + 1
                        if cut:
                            chunks.put(data[:cut])
                        pending, size = [data[cut:]], len(data) - cut
            if size:
                chunks.put(b"".join(pending))
        except BaseException as exc:  # the complete lines read so far, then the error
            data = b"".join(pending)
            cut = data.rfind(b"\n") + 1
            if cut:
                chunks.put(data[:cut])
            chunks.put(exc)
        chunks.put(None)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                chunks.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def split_header(chunk: bytes) -> Tuple[Optional[List[str]], bytes]:
    """(header fields, the rest of the chunk) from a file's first chunk.

    Comment (``#``, the ECSV preamble) and blank lines before the header are
    skipped. Returns a None header when the chunk holds no header line.
    """
    pos = 0
    while pos < len(chunk):
        end = chunk.find(b"\n", pos)
        end = len(chunk) if end < 0 else end
        line = chunk[pos:end]
        if line.strip() and not line.startswith(b"#"):
            header = next(csv.reader([line.decode("utf-8").rstrip("\r")]))
            return header, chunk[end + 1:]
        pos = end + 1
    return None, b""


def parse_chunk(chunk: bytes, header: List[str]) -> pa.Table:
    """Tokenise a chunk of data lines; every column as text. Raises Irregular."""
    if b"\n\n" in chunk or chunk.startswith(b"\n") or b"\r" in chunk:
        raise Irregular("blank line or CR")  # row numbers must match the exact reader's
    rejected: List[int] = []

    def reject(row):
        rejected.append(1)
        return "skip"
    try:
        return pcsv.read_csv(
            pa.BufferReader(chunk),
            read_options=pcsv.ReadOptions(column_names=header, block_size=4 << 20),
            parse_options=pcsv.ParseOptions(invalid_row_handler=reject),
            convert_options=pcsv.ConvertOptions(column_types={h: pa.string() for h in header}))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise Irregular(str(exc)) from None
    finally:
        if rejected:
            raise Irregular(f"{len(rejected)} rows with the wrong number of fields")


def number_column(column: pa.ChunkedArray, type_: pa.DataType) -> pa.ChunkedArray:
    """Text column to numbers; empty text is null. Raises Irregular on anything else."""
    empty = pc.equal(pc.utf8_length(column), 0)
    try:
        return pc.cast(pc.if_else(empty, pa.scalar(None, pa.string()), column), type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise Irregular(str(exc)) from None


def array_column(column: pa.ChunkedArray, type_: pa.DataType) -> Tuple[np.ndarray, np.ndarray]:
    """Parse a text column of bracketed arrays.

    Returns:
        (values, counts): every row's numbers end to end (NaN for ``nan``/``null``
        elements) and the number of values in each row (0: an empty field, a
        missing array).

    Raises:
        Irregular: a field that is not a bracketed list of numbers.
    """
    array = pa.concat_arrays(column.chunks) if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        raise Irregular("null text")
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[array.offset:array.offset + len(array) + 1]
    lengths = np.diff(offsets)
    present = lengths > 0
    counts = np.zeros(len(array), dtype=np.int64)
    if not present.any():
        return np.zeros(0), counts
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    first, last = data[offsets[:-1][present]], data[offsets[1:][present] - 1]
    brackets_ok = (((first == ord("[")) & (last == ord("]")))
                   | ((first == ord("(")) & (last == ord(")"))))
    if not brackets_ok.all() or (lengths[present] <= 2).any():
        raise Irregular("not a bracketed array")
    raw = data_buffer.to_pybytes()
    counts[present] = [raw.count(b",", start, end) + 1  # bytes.count: C speed, no copy
                       for start, end in zip(offsets[:-1][present].tolist(),
                                             offsets[1:][present].tolist())]
    # Brackets, commas and spaces all become line breaks: a one-column CSV of numbers
    # (the empty lines this leaves are skipped by the CSV reader).
    text = raw[offsets[0]:offsets[-1]].translate(_TO_NEWLINES)
    try:
        parsed = pcsv.read_csv(
            pa.py_buffer(text),
            read_options=pcsv.ReadOptions(column_names=["v"], block_size=1 << 20),
            convert_options=pcsv.ConvertOptions(column_types={"v": type_}))
    except pa.ArrowInvalid as exc:
        raise Irregular(str(exc)) from None
    values = parsed.column(0).to_numpy()
    if len(values) != counts.sum():  # an empty element ("1,,2") or a space inside a number
        raise Irregular("element count")
    return values, counts


def row_flags(values: np.ndarray, counts: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per row: does any of its values have ``bad`` set."""
    cumulative = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    ends = np.cumsum(counts)
    return cumulative[ends] - cumulative[ends - counts] > 0


def list_array(values: np.ndarray, counts: np.ndarray, missing: np.ndarray,
               type_: pa.DataType) -> pa.Array:
    """A list column from values end to end, per-row counts and a missing-row mask."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=type_),
                                    mask=pa.array(missing))

