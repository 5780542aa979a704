"""Ingest throughput on a bulk-format file, against astropy's ECSV reader, in one run.

Builds a gzip'd ECSV in the layout of the bulk ``XpContinuousMeanSpectrum_*.csv.gz``
files (the real ECSV header and rows of ../shared/data, repeated with varying
source_id), ingests it into a store, then reads the same file with astropy.
The last line is a JSON object with ``rows``, ``rows_per_s``,
``astropy_rows_per_s``, ``ratio`` and ``peak_rss_mb`` (of our ingest, read
before astropy runs: the main process, plus ``workers`` times the largest
parsing process when there are any, ``worker_peak_rss_mb``). RSS counts the
pages of shared libraries once per process; ``peak_pss_mb`` (Linux), the peak
of the proportional set size summed over the main process and its workers,
counts them once in all: the memory the ingest really takes.
``main_cpu_us_per_row`` and ``workers_cpu_us_per_row`` are the CPU time per
row of this process (every thread: inflating, handing chunks out, writing
shards) and of the workers together: on a machine with more cores, they say
how far more workers can take one file.

    python benchmarks/ingest_throughput.py --rows 100000 --workers 2
    python benchmarks/ingest_throughput.py --rows 100000 --sampled
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

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gaia_dr3_xp")
SAMPLE = os.path.join(DATA, "XP_CONTINUOUS_RAW.ecsv")
SAMPLED_SAMPLE = os.path.join(DATA, "XP_SAMPLED_RAW_dr3int6.ecsv")


def build(path: str, rows: int, sample: str = SAMPLE) -> None:
    lines = open(sample).read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("\n".join(header + body[:1]) + "\n")
        for i in range(rows):
            source_id, rest = body[1 + i % (len(body) - 1)].split(",", 1)
            f.write(f"{int(source_id) + 1000 * i},{rest}\n")


class PssSampler:
    """Peak proportional set size of this process and its children, sampled every 0.2 s."""

    def __init__(self):
        import threading
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss_kb(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            return 0

    @staticmethod
    def _children(pid: int) -> list:
        found = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                found += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
            except OSError:
                pass
        return found

    def _run(self):
        me = os.getpid()
        while not self._stop.wait(0.2):
            total = sum(self._pss_kb(pid) for pid in [me, *self._children(me)])
            self.peak_mb = max(self.peak_mb, total / 1024)

    def __enter__(self):
        if os.path.exists("/proc/self/smaps_rollup"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--skip-astropy", action="store_true")
    p.add_argument("--sampled", action="store_true",
                   help="sampled spectra (the XpSampledMeanSpectrum layout: flux and flux_error, "
                        "343 samples) instead of coefficients")
    p.add_argument("--workers", type=int, default=0,
                   help="parsing processes (default: as xpsvae ingest, 4 from 4 cores up, else 1)")
    p.add_argument("--keep-store", metavar="DIR", help="copy the store written here (e.g. for "
                   "train_throughput.py --streaming)")
    args = p.parse_args()
    from xpsvae.ingest import default_workers, ingest
    workers = args.workers or default_workers()
    work = tempfile.mkdtemp()
    try:
        path = os.path.join(work, ("XpSampledMeanSpectrum" if args.sampled else
                                   "XpContinuousMeanSpectrum") + "_000000-000001.csv.gz")
        build(path, args.rows, SAMPLED_SAMPLE if args.sampled else SAMPLE)
        before = resource.getrusage(resource.RUSAGE_SELF)
        with PssSampler() as pss:
            start = time.perf_counter()
            manifest = ingest([path], os.path.join(work, "store"), progress=False,
                              workers=workers)
            ours = time.perf_counter() - start
        if args.keep_store:
            shutil.copytree(os.path.join(work, "store"), args.keep_store, dirs_exist_ok=True)
        after = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, once shut down
        main_mb = after.ru_maxrss / 1024
        worker_mb = children.ru_maxrss / 1024 if workers > 1 else 0.0
        main_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        assert manifest["total"]["rows_kept"] == args.rows, manifest["total"]
        result = {"rows": args.rows, "rows_per_s": round(args.rows / ours, 1),
                  "peak_rss_mb": round(main_mb + workers * worker_mb),
                  "main_peak_rss_mb": round(main_mb), "worker_peak_rss_mb": round(worker_mb),
                  "peak_pss_mb": round(pss.peak_mb),
                  # CPU per row: this process (all its threads), and the workers together
                  # (their start included); the slowest thread here bounds one file's rate
                  "main_cpu_us_per_row": round(main_cpu / args.rows * 1e6),
                  "workers_cpu_us_per_row": round((children.ru_utime + children.ru_stime)
                                                  / args.rows * 1e6),
                  "workers": workers, "cpus": os.cpu_count(), "sampled": args.sampled,
                  "file_mb": round(os.path.getsize(path) / 2**20)}
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
