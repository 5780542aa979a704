"""Which inflater the ingest should use: our child process, or a library, side by side.

Ingests the same bulk-format ``*.csv.gz`` file (built as in
``ingest_throughput.py``) with each way of inflating it, in turn, each in a
fresh process, ``--repeats`` rounds in alternating order:

- ``child``: xpsvae's own child process inflating into shared memory
  (``xpsvae.ingestion.inflate``, what a large gzip'd file gets today);
- ``igzip_threaded``: ``isal.igzip_threaded.open(threads=1)``, ISA-L inflating in
  a thread that releases the GIL, read ahead by the reader thread;
- ``igzip_pipe``: ISA-L's own command (``python -m isal.igzip -d -c``) in a child
  process, its output read through a pipe;
- ``igzip``: ``isal.igzip.open`` in the reader thread (what a small file gets).

The last line is a JSON object: each way's median rows/s, and
``child_over_igzip_threaded``, the ratio the decision rests on (the child
process stays only if it wins by 1.2x or more).

    python benchmarks/inflate_library.py --rows 30000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

WAYS = ("child", "igzip_threaded", "igzip_pipe", "igzip")


def _ingest_with(way: str, path: str, store: str) -> float:
    """rows/s of one ingest of ``path``, the file inflated ``way`` (in a fresh process)."""
    from xpsvae import ingest
    from xpsvae.ingestion import inflate
    if way == "child":
        inflate.PROCESS_FROM_BYTES = 0
    else:
        inflate.PROCESS_FROM_BYTES = float("inf")
    if way == "igzip_threaded":
        from isal import igzip_threaded
        inflate.open_binary = lambda p: igzip_threaded.open(p, "rb", threads=1)
    if way == "igzip_pipe":
        import subprocess
        import sys
        inflate.open_binary = lambda p: subprocess.Popen(
            [sys.executable, "-m", "isal.igzip", "-d", "-c", p], stdout=subprocess.PIPE).stdout
    start = time.perf_counter()
    manifest = ingest([path], store, progress=False)
    elapsed = time.perf_counter() - start
    shutil.rmtree(store)
    return manifest["total"]["rows_read"] / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=30_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from ingest_throughput import SAMPLE, _build_in_a_child
    work = tempfile.mkdtemp()
    try:
        path = os.path.join(work, "XpContinuousMeanSpectrum_000000-000001.csv.gz")
        _build_in_a_child([path], args.rows, SAMPLE, 5_000)
        rates = {way: [] for way in WAYS}
        context = multiprocessing.get_context("spawn")
        for r in range(args.repeats):
            order = WAYS if r % 2 == 0 else WAYS[::-1]
            for way in order:
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    rate = pool.submit(_ingest_with, way, path,
                                       os.path.join(work, "store")).result()
                rates[way].append(rate)
                print(f"round {r + 1}: {way:15s} {rate:8.0f} rows/s", flush=True)
        median = {way: statistics.median(v) for way, v in rates.items()}
        print(json.dumps({"rows": args.rows, "repeats": args.repeats,
                          "file_mb": round(os.path.getsize(path) / 2**20),
                          "cpus": len(os.sched_getaffinity(0)),
                          **{f"{w}_rows_per_s": round(v, 1) for w, v in median.items()},
                          "child_over_igzip_threaded": round(
                              median["child"] / median["igzip_threaded"], 3),
                          "child_over_igzip_pipe": round(median["child"] / median["igzip_pipe"], 3),
                          "child_over_igzip": round(median["child"] / median["igzip"], 3)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
