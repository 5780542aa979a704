"""A piece of work run in a second process beside this one, its result or error brought back.

On a few cores, two trainings side by side at one thread each get more done
than one after the other at two threads: torch's threads share a small
network's layers poorly, and each sits idle while Python runs the optimiser
(docs/benchmarks.md, ``demo_lanes``). The demo runs its unsupervised and its
labelled work so (:mod:`xpsvae.evaluation.demo`).

The process is spawned, not forked: a forked child inherits the parent's
OpenMP threads half-started, and torch's thread pool is not fork-safe. It
reports its stages through a pipe; its result (any picklable object) and any
error it raises come back the same way, the error with the child's
traceback as its cause.
"""

from __future__ import annotations

import multiprocessing
import pickle
import traceback
from typing import Any, Callable, Optional

from ..core.errors import LaneError


class _Traceback(Exception):
    """The child's traceback, set as the cause of the error it raised."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _lane_main(conn, threads: int, target: Callable, args: tuple) -> None:
    """The child: ``target(*args, say)`` at ``threads`` torch threads, the result sent back."""
    import torch  # the lane runs torch work; this module itself is read without it
    if threads:
        torch.set_num_threads(threads)
    try:
        result = target(*args, lambda stage: conn.send(("stage", stage)))
        conn.send(("done", result))
    except BaseException as error:  # noqa: BLE001 (every error goes back to the parent)
        text = traceback.format_exc()
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 (an error that cannot travel goes as its text)
            error = LaneError(f"{type(error).__name__}: {error}")
        conn.send(("error", (error, text)))
    finally:
        conn.close()


class Lane:
    """``target(*args, say)`` started at once in a spawned process at ``threads`` torch
    threads (0: torch's default); ``say(stage)`` sends a word on its progress.

    ``target`` must be a function of a module (the child imports it by name), and
    ``args`` and its result picklable. Use as a context manager, so that the process is
    stopped when the work beside it fails::

        with Lane(work, (a, b), threads=1) as lane:
            ...                      # this process's share
            value = lane.result()    # the other's
    """

    def __init__(self, target: Callable, args: tuple = (), threads: int = 0):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self._process = context.Process(target=_lane_main, args=(child, threads, target, args),
                                        daemon=True, name=f"xpsvae-{target.__name__}")
        self._process.start()
        child.close()  # the child holds its own end: at its exit, recv() here sees EOF

    def result(self, on_stage: Optional[Callable[[Any], None]] = None) -> Any:
        """Wait for the result, passing each stage reported to ``on_stage``.

        Raises:
            The error the work raised, its traceback in the child as the cause.
            LaneError: the process ended without a result (killed: out of memory?).
        """
        while True:
            try:
                kind, value = self._conn.recv()
            except EOFError:
                self._process.join()
                raise LaneError(f"the process {self._process.name} ended without a result "
                                f"(exit code {self._process.exitcode}): killed, perhaps for "
                                "memory; run it in one process (--lanes 1) to see "
                                "where") from None
            if kind == "stage":
                if on_stage is not None:
                    on_stage(value)
                continue
            self._process.join()
            if kind == "error":
                error, text = value
                raise error from _Traceback(text)
            return value

    def stop(self) -> None:
        """End the process now if it still runs."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._conn.close()

    def __enter__(self) -> "Lane":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
