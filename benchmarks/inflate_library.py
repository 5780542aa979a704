"""Which inflater the ingest should use: each way of inflating, side by side in one run.

Ingests the same bulk-format ``*.csv.gz`` file (built as in
``ingest_throughput.py``) with each way of inflating it, each in a fresh
process, ``--repeats`` rounds in alternating order:

- ``ingest``: xpsvae as it is: ``isal.igzip_threaded`` (ISA-L inflating in a
  thread that releases the GIL) in blocks of a chunk (16 MB), cut into chunks
  of lines by the parsing thread;
- ``igzip_threaded_1mb``: the same in 1 MB blocks;
- ``igzip``: ``isal.igzip.open``, read by the parsing thread 1 MB at a time;
- ``igzip_16mb``: the same, 16 MB at a time;
- ``igzip_pipe``: ISA-L's own command (``python -m isal.igzip -d -c``) in a
  child process, read through a pipe;
- ``child``: the child process that inflated into shared memory, xpsvae's own
  before it was replaced: only where the xpsvae imported still has it (a
  checkout of an earlier commit on ``PYTHONPATH``).

The last line is a JSON object: each way's median rows/s and its ratio to
``ingest``'s.

    python benchmarks/inflate_library.py --rows 20000 --repeats 4
    PYTHONPATH=OLD_CHECKOUT/src python benchmarks/inflate_library.py --ways child,ingest
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

WAYS = ("ingest", "igzip_threaded_1mb", "igzip", "igzip_16mb", "igzip_pipe", "child")


def _ingest_with(way: str, path: str, store: str) -> float:
    """rows/s of one ingest of ``path``, the file inflated ``way`` (in a fresh process)."""
    from xpsvae import ingest
    from xpsvae.ingestion import inflate
    own_child = hasattr(inflate, "PROCESS_FROM_BYTES")  # xpsvae before the library
    if own_child:
        inflate.PROCESS_FROM_BYTES = 0 if way == "child" else float("inf")
    elif way == "child":
        raise SystemExit("this xpsvae has no child-process inflater: run an earlier checkout")
    if way in ("ingest", "igzip_threaded_1mb") and (own_child or way != "ingest"):
        from isal import igzip_threaded
        block = 1 << 20 if way == "igzip_threaded_1mb" else 16 << 20
        inflate.open_binary = lambda p: igzip_threaded.open(p, "rb", threads=1, block_size=block)
        inflate._BLOCK_BYTES = block
    if way in ("igzip", "igzip_16mb"):
        from isal import igzip
        inflate.open_binary = lambda p: igzip.open(p, "rb")
        inflate._BLOCK_BYTES = 16 << 20 if way == "igzip_16mb" else 1 << 20
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
    p.add_argument("--ways", default=",".join(WAYS[:4]),
                   help="comma separated, of " + ", ".join(WAYS))
    args = p.parse_args()
    from ingest_throughput import SAMPLE, _build_in_a_child
    work = tempfile.mkdtemp()
    try:
        path = os.path.join(work, "XpContinuousMeanSpectrum_000000-000001.csv.gz")
        _build_in_a_child([path], args.rows, SAMPLE, 5_000)
        ways = tuple(args.ways.split(","))
        rates = {way: [] for way in ways}
        context = multiprocessing.get_context("spawn")
        for r in range(args.repeats):
            order = ways if r % 2 == 0 else ways[::-1]
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
                          **{f"{w}_over_ingest": round(median[w] / median["ingest"], 3)
                             for w in ways if w != "ingest" and "ingest" in ways}}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
