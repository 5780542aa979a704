"""Chunks of complete lines, inflated by a thread or by a child process: the same text."""
import gzip
import os
import random

import pytest

from xpsvae.ingestion import inflate

needs_process = pytest.mark.skipif(not hasattr(os, "memfd_create"),
                                   reason="the child-process inflater needs os.memfd_create")


def _lines_file(path, final_newline: bool):
    rng = random.Random(0)
    # lines far longer than a chunk and than a slot, between short ones
    lines = [rng.randbytes(n // 2).hex() for n in (10, 3_000_000, 5, 200, 1_500_000, 7, 0,
                                                   40_000)]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    return text.encode()


def _read(reader, path, chunk_bytes):
    """(chunks, the error raised after them or None)."""
    chunks = []
    try:
        for chunk in reader(str(path), chunk_bytes):
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    return chunks, None


@needs_process
@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("chunk_bytes", [1_000, 2_000_000, 16 << 20])
def test_process_and_thread_give_the_same_lines(tmp_path, final_newline, chunk_bytes):
    path = tmp_path / "lines.txt.gz"
    text = _lines_file(path, final_newline)
    for reader in (inflate._from_thread, inflate._from_process):
        chunks, error = _read(reader, path, chunk_bytes)
        assert error is None
        assert b"".join(chunks) == text
        assert all(c.endswith(b"\n") for c in chunks[:-1])  # complete lines only


@needs_process
def test_a_cut_file_gives_the_same_complete_lines_then_the_same_error(tmp_path):
    whole = tmp_path / "whole.txt.gz"
    text = "".join(f"{i},{'7' * 900}\n" for i in range(6_000)).encode()
    whole.write_bytes(gzip.compress(text, compresslevel=1))
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(whole.read_bytes()[: os.path.getsize(whole) * 2 // 3])
    (thread_chunks, thread_error), (child_chunks, child_error) = (
        _read(reader, cut, 1 << 20) for reader in (inflate._from_thread, inflate._from_process))
    assert b"".join(child_chunks) == b"".join(thread_chunks)
    assert b"".join(child_chunks).endswith(b"\n") and text.startswith(b"".join(child_chunks))
    assert len(b"".join(child_chunks)) > len(text) // 3  # lines before the cut were kept
    assert type(child_error) is type(thread_error) and str(child_error) == str(thread_error)


@pytest.mark.parametrize("reader", [inflate._from_thread, pytest.param(
    inflate._from_process, marks=needs_process)])
def test_a_corrupt_member_is_an_oserror_after_the_lines_before_it(tmp_path, reader):
    text = "".join(f"{i},{random.Random(i).random()}\n" for i in range(100_000)).encode()
    bad_member = bytearray(gzip.compress(b"more,lines\n" * 1000))
    bad_member[10] |= 0b110  # the first deflate block's type: 3, which does not exist
    path = tmp_path / "corrupt.txt.gz"
    path.write_bytes(gzip.compress(text) + bytes(bad_member))
    chunks, error = _read(reader, path, 1 << 20)
    # ISA-L's (or zlib's) own error, which is no OSError, comes as one
    assert isinstance(error, OSError) and "corrupt gzip data" in str(error), error
    assert text.startswith(b"".join(chunks)) and len(b"".join(chunks)) > len(text) // 2


@needs_process
def test_closing_early_stops_the_child(tmp_path, monkeypatch):
    path = tmp_path / "lines.txt.gz"
    _lines_file(path, True)
    children = []
    real_popen = inflate.subprocess.Popen

    def popen(*args, **kwargs):
        children.append(real_popen(*args, **kwargs))
        return children[-1]
    monkeypatch.setattr(inflate.subprocess, "Popen", popen)
    chunks = inflate._from_process(str(path), 1_000)
    next(chunks)
    chunks.close()
    assert len(children) == 1 and children[0].poll() is not None


def test_line_chunks_takes_a_process_only_for_large_gzip_files(tmp_path, monkeypatch):
    path = tmp_path / "lines.txt.gz"
    _lines_file(path, True)
    assert inflate.line_chunks(str(path)).__name__ == "_from_thread"  # 2.6 MB compressed
    monkeypatch.setattr(inflate, "PROCESS_FROM_BYTES", 0)
    expected = "_from_process" if hasattr(os, "memfd_create") else "_from_thread"
    assert inflate.line_chunks(str(path)).__name__ == expected
    plain = tmp_path / "lines.txt"
    plain.write_bytes(b"1\n2\n")
    assert inflate.line_chunks(str(plain)).__name__ == "_from_thread"


@needs_process
def test_a_child_that_cannot_start_leaves_the_reading_to_a_thread(tmp_path, monkeypatch):
    path = tmp_path / "lines.txt.gz"
    text = _lines_file(path, True)
    monkeypatch.setattr(inflate.sys, "executable", "/bin/false")  # exits at once, says nothing
    with pytest.warns(UserWarning, match="inflating in a thread instead"):
        chunks, error = _read(inflate._from_process, path, 1 << 20)
    assert error is None and b"".join(chunks) == text


@needs_process
@pytest.mark.skipif(inflate.SHARED_DIR is None, reason="needs a shared memory folder (/dev/shm)")
@pytest.mark.parametrize("final_newline", [True, False])
def test_held_chunks_are_read_in_place_and_their_file_goes_with_the_last(tmp_path,
                                                                        final_newline):
    """With ``hold``, chunks stay in their slots of a named shared memory file until released:
    their text is the thread's (lines longer than a slot come as bytes), another process can
    read them there, a released one refuses to be read, and the file goes with the last."""
    path = tmp_path / "lines.txt.gz"
    text = _lines_file(path, final_newline)
    held = list(inflate._from_process(str(path), 1_000, hold=20))  # the reader done, all held
    shared = [c for c in held if isinstance(c, inflate.SharedChunk)]
    assert shared and any(isinstance(c, bytes) for c in held)
    assert b"".join(c if isinstance(c, bytes) else c.tobytes() for c in held) == text
    for chunk in shared:
        with open(chunk.path, "rb") as f:  # as a parsing process reads it
            assert os.pread(f.fileno(), chunk.length, chunk.offset) == chunk.tobytes()
        data = chunk.tobytes()
        assert chunk.line_count() == data.count(b"\n") + (not data.endswith(b"\n"))
    files = {c.path for c in shared}
    assert len(files) == 1 and os.path.exists(shared[0].path)
    shared[0].release()
    with pytest.raises(RuntimeError, match="released"):
        shared[0].tobytes()
    for chunk in shared[1:]:
        assert os.path.exists(chunk.path)
        chunk.release()
    assert not os.path.exists(files.pop())


@needs_process
@pytest.mark.skipif(inflate.SHARED_DIR is None, reason="needs a shared memory folder (/dev/shm)")
def test_a_full_shared_memory_folder_gives_bytes(tmp_path, monkeypatch):
    path = tmp_path / "lines.txt.gz"
    text = _lines_file(path, True)

    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    chunks = list(inflate._from_process(str(path), 1_000, hold=20))
    assert all(isinstance(c, bytes) for c in chunks) and b"".join(chunks) == text
    assert not [f for f in os.listdir(inflate.SHARED_DIR)
                if f.startswith(f"xpsvae-inflate-{os.getpid()}-")]
