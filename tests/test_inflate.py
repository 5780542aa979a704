"""A text file as chunks of complete lines, inflated ahead of the reader by ISA-L's thread."""
import gzip
import os
import random
import threading
import time

import pytest

from xpsvae.ingestion import inflate


def _lines_file(path, final_newline: bool):
    rng = random.Random(0)
    # lines far longer than a chunk, between short ones
    lines = [rng.randbytes(n // 2).hex() for n in (10, 3_000_000, 5, 200, 1_500_000, 7, 0,
                                                   40_000)]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    return text.encode()


def _read(path, chunk_bytes):
    """(chunks, the error raised after them or None)."""
    chunks = []
    try:
        for chunk in inflate.line_chunks(str(path), chunk_bytes):
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("chunk_bytes", [1_000, 2_000_000, 16 << 20])
def test_chunks_are_the_text_in_complete_lines(tmp_path, final_newline, chunk_bytes):
    path = tmp_path / "lines.txt.gz"
    text = _lines_file(path, final_newline)
    chunks, error = _read(path, chunk_bytes)
    assert error is None
    assert b"".join(chunks) == text
    assert all(c.endswith(b"\n") for c in chunks[:-1])  # complete lines only
    plain = tmp_path / "lines.txt"  # a file that is not gzip'd is read as it is
    plain.write_bytes(text)
    assert b"".join(_read(plain, chunk_bytes)[0]) == text


def test_a_cut_file_gives_its_complete_lines_then_a_read_error(tmp_path):
    whole = tmp_path / "whole.txt.gz"
    text = "".join(f"{i},{'7' * 900}\n" for i in range(60_000)).encode()
    whole.write_bytes(gzip.compress(text, compresslevel=1))
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(whole.read_bytes()[: os.path.getsize(whole) * 2 // 3])
    chunks, error = _read(cut, 1 << 20)
    read = b"".join(chunks)
    assert isinstance(error, (OSError, EOFError, ValueError)), error
    assert read.endswith(b"\n") and text.startswith(read)
    # every chunk of complete lines inflated before the cut's block was handed over
    assert len(read) >= len(text) * 2 // 3 - 2 * inflate._BLOCK_BYTES


def test_a_corrupt_member_is_an_oserror_after_the_lines_before_it(tmp_path):
    text = "".join(f"{i},{random.Random(i).random()}\n" for i in range(1_500_000)).encode()
    bad_member = bytearray(gzip.compress(b"more,lines\n" * 1000))
    bad_member[10] |= 0b110  # the first deflate block's type: 3, which does not exist
    path = tmp_path / "corrupt.txt.gz"
    path.write_bytes(gzip.compress(text) + bytes(bad_member))
    chunks, error = _read(path, 1 << 20)
    # ISA-L's (or zlib's) own error, which is no OSError, comes as one
    assert isinstance(error, OSError) and "corrupt gzip data" in str(error), error
    read = b"".join(chunks)
    assert text.startswith(read) and len(read) >= len(text) - 2 * inflate._BLOCK_BYTES


def test_stopping_early_ends_the_reading_thread(tmp_path):
    path = tmp_path / "lines.txt.gz"
    _lines_file(path, True)
    before = threading.active_count()
    chunks = inflate.line_chunks(str(path), 1_000)
    next(chunks)
    chunks.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


@pytest.mark.parametrize("final_newline", [True, False])
def test_a_line_too_long_to_hold_is_dropped_as_it_is_read(tmp_path, final_newline):
    """Lines longer than ``max_line`` that span a block are never held: each comes back as
    a mark with its length, in its place. (One that happens to lie whole inside a block
    may come back as it is; the CSV reader applies the same limit to it.)"""
    max_line = 100_000
    sizes = [10, 20_000_000, 5, 3_000_000, 7, 17_000_000]  # 20 and 17 MB span blocks
    lines = [b"x" * n for n in sizes]
    path = tmp_path / "long.txt"
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    chunks = list(inflate.complete_line_chunks(str(path), 1 << 20, max_line=max_line))
    out = b"".join(chunks).rstrip(b"\n").split(b"\n")
    assert len(out) == len(lines)
    for line, got in zip(lines, out):
        if len(line) <= max_line:
            assert got == line
        elif got != line:
            assert inflate.too_long(got.decode()) == len(line)
    assert inflate.too_long(out[1].decode()) == sizes[1]
    assert inflate.too_long(out[-1].decode()) == sizes[-1]
    # what was held at once: no chunk holds more than a chunk, a block and max_line
    assert max(map(len, chunks)) <= (1 << 20) + inflate._BLOCK_BYTES + max_line
