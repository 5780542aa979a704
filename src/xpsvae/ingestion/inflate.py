"""A text file as chunks of complete lines, read and decompressed ahead of the reader.

A large gzip'd file is inflated by a child process straight into shared
memory, and the reader copies each chunk out once. A thread would share the
GIL with the reader: the parser holds it for long stretches (simdjson does
not release it), and a decompressing thread needs it back after every
~100 kB it inflates, so beside such a parser it inflated 5-25x slower than
alone. Small files, files that are not gzip'd, and platforms without
``os.memfd_create`` (macOS, Windows) use a thread.

This module imports nothing but the standard library and ``isal``: the child
runs this file as a script.
"""

from __future__ import annotations

import json
import mmap
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import warnings
from typing import Iterator, List, Optional, Union

#: Bytes of text per chunk: ~400 bulk-format rows.
CHUNK_BYTES = 16 << 20
#: Compressed files from this size up are inflated by a child process (its start, ~50 ms,
#: is paid back within ~20 MB of text).
PROCESS_FROM_BYTES = 32 << 20
#: Small reads, so that a corrupt gzip member loses at most 1 MB of lines.
_BLOCK_BYTES = 1 << 20
_MESSAGE = struct.Struct("<cIQ")  # kind, slot, length (of the chunk, or of what follows)
#: The errors a reader of a file raises, and its caller sets the file's rest aside for.
_READ_ERRORS = (OSError, EOFError, ValueError)
#: The folder of shared memory files, where there is one (Linux): other processes can open
#: a file there by its name, where an anonymous memory file is this process's alone.
SHARED_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
    else None


def remove_abandoned(prefix: str) -> None:
    """Files and folders ``SHARED_DIR/{prefix}{pid}-*`` of processes that ended without
    removing them (killed, say): shared memory is only given back when they go."""
    import glob
    import shutil
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


def open_binary(path: str):
    """The file, decompressed if its name ends in ``.gz``."""
    if path.endswith(".gz"):
        try:  # ISA-L inflates about 1.5x faster than zlib
            from isal import igzip
            return igzip.open(path, "rb")
        except ImportError:
            import gzip
            return gzip.open(path, "rb")
    return open(path, "rb")


def complete_line_chunks(path: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file's text in chunks of complete lines (the last one may lack its newline).

    A read error (a corrupt gzip member, a cut file) is raised after every
    complete line before it has been yielded.
    """
    pending: List[bytes] = []  # blocks read since the last chunk handed over
    size = 0
    try:
        with open_binary(path) as f:
            while True:
                block = f.read(_BLOCK_BYTES)
                if not block:
                    break
                pending.append(block)
                size += len(block)
                if size >= chunk_bytes:
                    data = b"".join(pending)
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
    if size:
        yield b"".join(pending)


def _inflate_errors() -> tuple:
    import zlib
    try:
        from isal import isal_zlib
        return zlib.error, isal_zlib.error
    except ImportError:
        return (zlib.error,)


def _as_read_error(exc: Exception) -> Exception:
    """``exc`` itself if it is one of :data:`_READ_ERRORS`, else an OSError saying so.

    zlib's and ISA-L's own errors (a corrupt member) derive from none of them.
    """
    return exc if isinstance(exc, _READ_ERRORS) else OSError(f"corrupt gzip data: {exc}")


def line_chunks(path: str, chunk_bytes: int = CHUNK_BYTES, hold: int = 0
                ) -> Iterator[Union[bytes, "SharedChunk"]]:
    """:func:`complete_line_chunks`, read ahead by a child process or a thread.

    Args:
        hold: chunks the caller keeps at once, to be read in place by other
            processes; where the child process inflates into a file of
            :data:`SHARED_DIR`, chunks then come as :class:`SharedChunk`, each
            the caller's until it calls ``release()``. 0: bytes, always.
    """
    if path.endswith(".gz") and os.path.getsize(path) >= PROCESS_FROM_BYTES and \
            hasattr(os, "memfd_create") and hasattr(socket, "MSG_WAITALL"):
        return _from_process(path, chunk_bytes, hold if SHARED_DIR is not None else 0)
    return _from_thread(path, chunk_bytes)


def _from_thread(path: str, chunk_bytes: int) -> Iterator[bytes]:
    chunks: "queue.Queue" = queue.Queue(maxsize=2)  # bounds memory to ~3 chunks
    stop = threading.Event()

    def produce():
        try:
            for chunk in complete_line_chunks(path, chunk_bytes):
                chunks.put(chunk)
                if stop.is_set():
                    break
        except BaseException as exc:  # handed to the reader, raised there
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


#: Chunks the child may have inflated ahead of the reader (each in its own slot).
_SLOTS = 3


class _SharedMemory:
    """The child's slots, mapped here; closed (and the file removed) when the reader and
    every :class:`SharedChunk` of it are done."""

    def __init__(self, path: Optional[str], memory: mmap.mmap, channel: socket.socket):
        self.path, self.map, self.channel = path, memory, channel
        self.users = 1  # the reader
        self.reading = True

    def give_back(self, slot: int) -> None:
        """Tell the child the slot is free again."""
        if self.reading:
            try:
                self.channel.sendall(_MESSAGE.pack(b"F", slot, 0))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the child has sent its last message and gone

    def drop(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.map.close()
            if self.path is not None:
                os.remove(self.path)


class SharedChunk:
    """A chunk left in its slot of the inflating process's shared memory file.

    Another process reads it in place (``path``, ``offset``, ``length``); the
    slot is the reader's until :meth:`release`, after which the child may
    fill it again.
    """

    def __init__(self, memory: _SharedMemory, slot: int, offset: int, length: int):
        self._memory, self._slot = memory, slot
        self.path, self.offset, self.length = memory.path, offset, length
        self._bytes: Optional[bytes] = None
        self._held = True
        memory.users += 1

    def __len__(self) -> int:
        return self.length

    def tobytes(self) -> bytes:
        """The chunk's text, copied out (once)."""
        if not self._held:
            raise RuntimeError("a released chunk's slot may hold another chunk by now")
        if self._bytes is None:
            self._bytes = self._memory.map[self.offset:self.offset + self.length]
        return self._bytes

    def line_count(self) -> int:
        """Lines in the chunk (the last may lack its line end), counted in place."""
        find, end, stop = self._memory.map.find, self.offset + self.length, self.offset
        lines, at = 0, find(b"\n", self.offset, end)
        while at >= 0:
            lines, stop = lines + 1, at + 1
            at = find(b"\n", at + 1, end)
        return lines + (stop < end)

    def release(self) -> None:
        """Give the slot back to the inflating process."""
        if self._held:
            self._held, self._bytes = False, None
            self._memory.give_back(self._slot)
            self._memory.drop()

    def __del__(self) -> None:
        try:  # a chunk dropped unreleased (an error upstream) still gives its slot back
            self.release()
        except Exception:  # at interpreter exit the socket or os may be gone already
            pass


def _slot_bytes(chunk_bytes: int) -> int:
    return chunk_bytes + 2 * _BLOCK_BYTES  # a chunk, the line it cut, and one more block


def _from_process(path: str, chunk_bytes: int, hold: int = 0
                  ) -> Iterator[Union[bytes, SharedChunk]]:
    """Chunks inflated by a child process straight into shared memory.

    The child fills a slot of a memory file, then says so over a socket; the
    reader copies the chunk out and hands the slot back (or, with ``hold``,
    hands out the slot itself as a :class:`SharedChunk`, in a file of
    :data:`SHARED_DIR` others can open). Each chunk is copied once at most,
    and the reader waits for it without the GIL.
    """
    slot_bytes = _slot_bytes(chunk_bytes)
    name = None
    if hold:
        remove_abandoned("xpsvae-inflate-")
        memory, name = tempfile.mkstemp(prefix=f"xpsvae-inflate-{os.getpid()}-", dir=SHARED_DIR)
        try:  # the pages taken now: a full folder refuses here, not as a crash of the child
            os.posix_fallocate(memory, 0, (_SLOTS + hold) * slot_bytes)
        except OSError:  # e.g. Docker's 64 MB /dev/shm: chunks copied out as bytes
            os.close(memory)
            os.remove(name)
            name, hold = None, 0
    if not hold:
        memory = os.memfd_create("xpsvae-inflate")
    slots = _SLOTS + hold
    mine, theirs = socket.socketpair()
    shared = None
    try:
        os.ftruncate(memory, slots * slot_bytes)
        shared = _SharedMemory(name, mmap.mmap(memory, slots * slot_bytes), mine)
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), path, str(chunk_bytes),
             str(theirs.fileno()), str(memory), str(slots)],
            pass_fds=(theirs.fileno(), memory))
    except BaseException:
        mine.close()
        if shared is not None:
            shared.drop()
        elif name is not None:
            os.remove(name)
        raise
    finally:
        theirs.close()
        os.close(memory)  # the map, and the child's copy, keep the memory
    partial: List[bytes] = []  # the pieces of a line longer than a slot
    heard = False  # from the child: a child that never speaks could not start
    try:
        while True:
            try:
                message = _read_exactly(mine, _MESSAGE.size, path, child)
            except RuntimeError as exc:
                if heard:
                    raise
                # e.g. an embedding application whose sys.executable is no Python
                warnings.warn(f"{exc}; inflating in a thread instead")
                yield from _from_thread(path, chunk_bytes)
                return
            heard = True
            kind, slot, length = _MESSAGE.unpack(message)
            if kind in (b"C", b"P"):
                start = slot * slot_bytes
                if kind == b"C" and hold and not partial:
                    yield SharedChunk(shared, slot, start, length)
                    continue
                partial.append(shared.map[start:start + length])
                shared.give_back(slot)
                if kind == b"C":
                    yield partial[0] if len(partial) == 1 else b"".join(partial)
                    partial = []
                continue
            if kind == b"E":
                if partial:  # a last line without its line end
                    yield b"".join(partial)
                return
            # an error: like the thread, give up the start of a line the error cut
            error = json.loads(_read_exactly(mine, length, path, child))
            if kind == b"R":  # a read error, raised as the thread would raise it
                raise {e.__name__: e for e in _READ_ERRORS}[error["type"]](error["message"])
            raise RuntimeError(f"inflating {path} failed: {error['message']}")
    finally:
        shared.reading = False
        mine.close()
        if child.poll() is None:
            child.kill()
        child.wait()
        shared.drop()


def _read_exactly(sock: socket.socket, length: int, path: str,
                  child: subprocess.Popen) -> bytes:
    """``length`` bytes from the child, waited for without the GIL."""
    buffer = bytearray(length)
    view, got = memoryview(buffer), 0
    while got < length:  # MSG_WAITALL returns short only on a signal or the peer's end
        n = sock.recv_into(view[got:], length - got, socket.MSG_WAITALL)
        if n == 0:  # not the file's fault: the child died, which is a failure of ours
            raise RuntimeError(f"the process inflating {path} stopped "
                               f"(exit code {child.wait()})")
        got += n
    return bytes(buffer)


def _child(path: str, chunk_bytes: int, sock: socket.socket, shared: mmap.mmap,
           slots: int = _SLOTS) -> None:
    """The child process: fill slots with chunks of complete lines; say each over ``sock``.

    Messages: ``C`` (a chunk, in a slot), ``P`` (a full slot without a line
    end: part of a longer line), ``E`` (the end), ``R`` (a read error, after
    the complete lines before it) and ``X`` (anything else); the reader
    answers each slot with ``F`` (free).
    """
    slot_bytes = _slot_bytes(chunk_bytes)
    free = list(range(slots))

    def take_slot() -> int:
        while not free:
            kind, slot, _ = _MESSAGE.unpack(sock.recv(_MESSAGE.size, socket.MSG_WAITALL))
            free.append(slot)
        return free.pop(0)

    def say(kind: bytes, slot: int = 0, payload: bytes = b"", length: int = 0) -> None:
        sock.sendall(_MESSAGE.pack(kind, slot, length or len(payload)) + payload)

    def complete_lines(slot: int, size: int) -> int:
        """Bytes of the slot's first ``size`` up to its last line end (0: none)."""
        start = slot * slot_bytes
        return shared.rfind(b"\n", start, start + size) + 1 - start if size else 0

    tail = b""  # the start of a line, carried into the next slot
    slot = take_slot()
    size = 0
    try:
        with open_binary(path) as f:
            while True:
                start = slot * slot_bytes
                shared[start:start + len(tail)] = tail
                size, tail = len(tail), b""
                view = memoryview(shared)[start:start + slot_bytes]
                read = 1
                try:
                    while size < chunk_bytes and size < slot_bytes and read:
                        read = f.readinto(view[size:size + min(_BLOCK_BYTES, slot_bytes - size)])
                        size += read
                finally:
                    view.release()  # the map cannot close while a view of it lives
                if not read:  # the end of the file
                    if size:
                        say(b"C", slot, length=size)
                    say(b"E")
                    return
                cut = complete_lines(slot, size)
                if cut <= 0:  # no line end in a full slot
                    say(b"P", slot, length=size)
                else:
                    tail = shared[start + cut:start + size]
                    say(b"C", slot, length=cut)
                slot, size = take_slot(), 0
    except (*_READ_ERRORS, *_inflate_errors()) as exc:
        cut = complete_lines(slot, size)
        if cut > 0:
            say(b"C", slot, length=cut)
        error = _as_read_error(exc)
        kind = next(e for e in _READ_ERRORS if isinstance(error, e)).__name__
        say(b"R", payload=json.dumps({"type": kind, "message": str(error)}).encode())
    except Exception as exc:  # a bug, not the file: the reader raises it as such
        say(b"X", payload=json.dumps({"message": f"{type(exc).__name__}: {exc}"}).encode())


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the reader decides when to stop
    try:
        with socket.socket(fileno=int(sys.argv[3])) as channel, \
                mmap.mmap(int(sys.argv[4]), 0) as memory:
            _child(sys.argv[1], int(sys.argv[2]), channel, memory, int(sys.argv[5]))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the reader stopped early and closed its end
