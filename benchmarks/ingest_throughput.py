"""Ingest throughput on a bulk-format file, against astropy's ECSV reader, in one run.

Builds a gzip'd ECSV in the layout of the bulk ``XpContinuousMeanSpectrum_*.csv.gz``
files (the real ECSV header and rows of ../shared/data, repeated with varying
source_id), ingests it into a store, then reads the same file with astropy.
The last line is a JSON object with ``rows``, ``rows_per_s``,
``astropy_rows_per_s``, ``ratio`` and ``peak_rss_mb`` (of our ingest, read
before astropy runs).

    python benchmarks/ingest_throughput.py --rows 100000
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import tempfile
import time

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gaia_dr3_xp",
                      "XP_CONTINUOUS_RAW.ecsv")


def build(path: str, rows: int) -> None:
    lines = open(SAMPLE).read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("\n".join(header + body[:1]) + "\n")
        for i in range(rows):
            source_id, rest = body[1 + i % (len(body) - 1)].split(",", 1)
            f.write(f"{int(source_id) + 1000 * i},{rest}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--skip-astropy", action="store_true")
    p.add_argument("--keep-store", metavar="DIR", help="copy the store written here (e.g. for "
                   "train_throughput.py --streaming)")
    args = p.parse_args()
    from xpsvae.ingest import ingest
    work = tempfile.mkdtemp()
    try:
        path = os.path.join(work, "XpContinuousMeanSpectrum_000000-000001.csv.gz")
        build(path, args.rows)
        start = time.perf_counter()
        manifest = ingest([path], os.path.join(work, "store"), progress=False)
        ours = time.perf_counter() - start
        if args.keep_store:
            shutil.copytree(os.path.join(work, "store"), args.keep_store, dirs_exist_ok=True)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert manifest["total"]["rows_kept"] == args.rows, manifest["total"]
        result = {"rows": args.rows, "rows_per_s": round(args.rows / ours, 1),
                  "peak_rss_mb": round(peak_mb), "file_mb": round(os.path.getsize(path) / 2**20)}
        if not args.skip_astropy:
            from astropy.table import Table
            start = time.perf_counter()
            table = Table.read(path, format="ascii.ecsv")
            theirs = time.perf_counter() - start
            assert len(table) == args.rows
            result.update(astropy_rows_per_s=round(args.rows / theirs, 1),
                          ratio=round(theirs / ours, 3))
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
