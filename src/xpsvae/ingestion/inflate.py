"""A text file as chunks of complete lines, inflated and read ahead of the reader.

A gzip'd file is inflated by ISA-L in a thread of its own that releases the
GIL while it inflates (``isal.igzip_threaded``), two blocks ahead of the
reader, so the inflating goes on beside a parser that holds the GIL for long
stretches (simdjson does not release it). The reader cuts the text into
chunks of complete lines, copying each once. ISA-L inflates about 1.5x faster
than zlib.

The inflated blocks are 8 MB, half a chunk: the GIL then changes hands twice a
chunk, not once a megabyte, and ISA-L's buffer of compressed text (eight
blocks) stays at 64 MB. ``benchmarks/inflate_library.py`` measures this
against the alternatives, side by side (docs/benchmarks.md): 1 MB, 4 MB and
16 MB blocks were all slower on 2 cores.
"""

from __future__ import annotations

import zlib
from typing import Iterator, List, Optional

from isal import igzip_threaded, isal_zlib

#: Bytes of text per chunk: ~400 bulk-format rows.
CHUNK_BYTES = 16 << 20
#: Bytes inflated at a time; a corrupt gzip member loses at most two blocks of the lines
#: before it.
_BLOCK_BYTES = 8 << 20
#: The errors a reader of a file raises, and its caller sets the file's rest aside for.
_READ_ERRORS = (OSError, EOFError, ValueError)
#: The longest line kept: 100x a bulk file's row (~40 kB). A longer line is set aside
#: unread, so that one line cannot take the reader's memory.
MAX_LINE_BYTES = 4 << 20
#: Starts the line that stands in for one longer than MAX_LINE_BYTES (a control
#: character, found in no XP table, then the line's length in bytes).
LONG_LINE_MARK = b"\x1expsvae-dropped-line-of-bytes:"


def open_binary(path: str):
    """The file, inflated (in a thread of ISA-L's, outside the GIL) if its name ends in
    ``.gz``."""
    if path.endswith(".gz"):
        return igzip_threaded.open(path, "rb", threads=1, block_size=_BLOCK_BYTES)
    return open(path, "rb")


def complete_line_chunks(path: str, chunk_bytes: int = CHUNK_BYTES,
                         max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The file's text in chunks of complete lines (the last one may lack its newline).

    A line longer than ``max_line`` bytes is never held: its bytes are dropped
    as they are read, and a line :func:`long_line_mark` stands in its place, so
    that the row keeps its number and is set aside with its length. Memory is
    thus bounded by ``chunk_bytes + max_line`` plus a block, whatever one line holds.

    A read error (a corrupt gzip member, a cut file) is raised after every
    complete line before it has been yielded.
    """
    pending: List[bytes] = []  # blocks read since the last chunk handed over
    size = 0
    tail = 0  # bytes after the last newline in pending: the line being read so far
    dropped = 0  # bytes of a line too long to keep, dropped so far (0: none)
    try:
        with open_binary(path) as f:
            while True:
                block = f.read(_BLOCK_BYTES)
                if not block:
                    break
                if dropped:
                    end = block.find(b"\n")
                    if end < 0:
                        dropped += len(block)
                        continue
                    pending.append(long_line_mark(dropped + end))
                    size += len(pending[-1])
                    dropped, block = 0, block[end + 1:]
                    if not block:
                        continue
                pending.append(block)
                size += len(block)
                last = block.rfind(b"\n")
                tail = len(block) - last - 1 if last >= 0 else tail + len(block)
                if tail > max_line:  # drop the line read so far; keep the lines before it
                    data = b"".join(pending)
                    pending, size = [data[:len(data) - tail]], len(data) - tail
                    dropped, tail = tail, 0
                    continue
                if size >= chunk_bytes:
                    cut = last + 1
                    if cut:  # the chunk copied once: the blocks before, the block to its cut
                        yield b"".join(pending[:-1] + [memoryview(block)[:cut]])
                        pending, size = [block[cut:]], len(block) - cut
                        continue
                    data = b"".join(pending)  # a line longer than a block
                    cut = data.rfind(b"\n") + 1
                    if cut:
                        yield data[:cut]
                    pending, size = [data[cut:]], len(data) - cut
    except (*_READ_ERRORS, *_inflate_errors()) as exc:
        data = b"".join(pending)
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        error = _as_read_error(exc)
        if error is exc:
            raise
        raise error from exc
    if dropped:
        pending.append(long_line_mark(dropped).rstrip(b"\n"))
        size += 1
    if size:
        yield b"".join(pending)


def long_line_mark(n_bytes: int) -> bytes:
    """The line that stands for a dropped line of ``n_bytes`` bytes (see
    :func:`too_long`)."""
    return LONG_LINE_MARK + str(n_bytes).encode() + b"\n"


def too_long(line: str) -> Optional[int]:
    """The length in bytes of a line past :data:`MAX_LINE_BYTES`: one the reader dropped
    (``line`` is its mark), or one that lay whole inside a block; None for any other."""
    if line.startswith(LONG_LINE_MARK.decode()):
        return int(line[len(LONG_LINE_MARK):])
    if len(line) > MAX_LINE_BYTES and len(line.encode()) > MAX_LINE_BYTES:
        return len(line.encode())
    return None


def _inflate_errors() -> tuple:
    return zlib.error, isal_zlib.error


def _as_read_error(exc: Exception) -> Exception:
    """``exc`` itself if it is one of :data:`_READ_ERRORS`, else an OSError saying so.

    zlib's and ISA-L's own errors (a corrupt member) derive from none of them.
    """
    return exc if isinstance(exc, _READ_ERRORS) else OSError(f"corrupt gzip data: {exc}")


def line_chunks(path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file's text in chunks of complete lines, inflated ahead of the reader by ISA-L's
    thread (:func:`complete_line_chunks`; memory: about three chunks, one line of at
    most :data:`MAX_LINE_BYTES`, and ISA-L's buffer of compressed text)."""
    return complete_line_chunks(path, chunk_bytes)
