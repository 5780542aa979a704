"""Inflating a bulk file by a thread or by a child process, alone and beside a GIL-holding parser.

The parser stand-in parses one chunk's worth of JSON arrays with simdjson
in a loop, as the ingest's fast path does; it holds the GIL while it parses.
Each reader reads the whole file (``xpsvae.ingestion.inflate``'s thread and child
process), once alone and once beside that loop. The last line is a JSON
object with each rate in MB of text per second and ``process_over_thread``,
the ratio of the two readers' rates beside the parser.

    python benchmarks/inflate_beside_parser.py --rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time

import numpy as np


def read_all(reader, path: str) -> int:
    from xpsvae.ingestion.inflate import CHUNK_BYTES
    return sum(len(chunk) for chunk in reader(path, CHUNK_BYTES))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=10_000)
    args = p.parse_args()
    import simdjson
    from ingest_throughput import build

    from xpsvae.ingestion import inflate
    work = tempfile.mkdtemp()
    path = os.path.join(work, "XpContinuousMeanSpectrum_000000-000001.csv.gz")
    build(path, args.rows, distinct=500)
    rng = np.random.default_rng(0)
    document = ("[" + ",".join("[" + ",".join(map(repr, row)) + "]"
                               for row in rng.standard_normal((400, 1485)).tolist()) + "]").encode()
    parser = simdjson.Parser()
    result = {"rows": args.rows, "cpus": os.cpu_count()}
    for name, reader in (("thread", inflate._from_thread), ("process", inflate._from_process)):
        start = time.perf_counter()
        text_bytes = read_all(reader, path)
        result[f"{name}_alone_mb_per_s"] = round(text_bytes / (time.perf_counter() - start) / 1e6)
        stop = threading.Event()

        def parse_loop():
            while not stop.is_set():
                arrays = parser.parse(document)
                arrays.as_buffer(of_type="d")
                arrays = None
        loop = threading.Thread(target=parse_loop)
        loop.start()
        start = time.perf_counter()
        read_all(reader, path)
        elapsed = time.perf_counter() - start
        stop.set()
        loop.join()
        result[f"{name}_beside_parser_mb_per_s"] = round(text_bytes / elapsed / 1e6)
    result["process_over_thread"] = round(result["process_beside_parser_mb_per_s"]
                                          / result["thread_beside_parser_mb_per_s"], 2)
    os.remove(path)
    os.rmdir(work)
    print(json.dumps(result))


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(__file__))  # ingest_throughput's file builder
    main()
