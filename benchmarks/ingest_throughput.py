"""Ingest throughput on a bulk-format file, against astropy's ECSV reader, in one run.

Builds a gzip'd ECSV in the layout of the bulk ``XpContinuousMeanSpectrum_*.csv.gz``
files (the real ECSV header and rows of ../shared/data, with varying
source_id), ingests it into a store, then reads the same file with astropy.
The last line is a JSON object with ``rows``, ``rows_per_s``,
``astropy_rows_per_s``, ``ratio`` and ``peak_rss_mb`` (of our ingest, read
before astropy runs: the main process, plus, per child process, the largest
child's peak, ``child_peak_rss_mb``: the parsing workers, if any, and the
process that inflates a large file). RSS counts the pages of shared
libraries once per process; ``peak_pss_mb`` (Linux), the peak of the
proportional set size summed over the main process and its children, counts
them once in all: the memory the ingest really takes. ``main_cpu_us_per_row``
and ``children_cpu_us_per_row`` are the CPU time per row of this process
(every thread: parsing unless there are workers, handing chunks out,
writing shards) and of its children together (inflating, and the workers'
parsing): on a machine with more cores, they say how far more workers can
take one file.

With ``--files K --jobs N``, K files of ``--rows`` rows each are ingested
with N files at once (``xpsvae ingest --jobs``) and, in the same run, one
at a time: ``jobs_speedup`` is their ratio, and astropy reads all K files.

The file's rows are ``--distinct`` (default 5,000, a shard) perturbed copies
of the real rows, so that the store writer meets numbers as unique as a real
file's; ``--distinct 0`` repeats the real rows as they are.

    python benchmarks/ingest_throughput.py --rows 100000 --workers 2
    python benchmarks/ingest_throughput.py --rows 100000 --sampled
    python benchmarks/ingest_throughput.py --rows 25000 --files 8 --jobs 8
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


def build(path: str, rows: int, sample: str = SAMPLE, distinct: int = 5_000,
          first_row: int = 0) -> None:
    """Write ``rows`` bulk-format rows made from the sample's real rows.

    Rows are numbered from ``first_row`` (source_ids follow from the number,
    so files built with their own ranges share none).

    With ``distinct`` > 0, that many variants of the real rows are written in
    turn, each with every array element perturbed (coefficients and fluxes by
    2%, errors by 5%, correlations by 0.02, rounded as Gaia prints them), so
    that a shard's numbers are as unique as a real file's: the store writer
    then does the work it does on real data, where repeated rows would let
    Parquet's dictionary encoding make it almost free. 0 repeats the real rows
    as they are, varying only source_id.
    """
    lines = open(sample).read().splitlines()
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    columns, real = body[0].split(","), body[1:]
    variants = [row.split(",", 1)[1] for row in real] if distinct <= 0 else \
        _perturbed(columns, real, distinct)
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("\n".join(header + body[:1]) + "\n")
        for i in range(first_row, first_row + rows):
            source_id = real[i % len(real)].split(",", 1)[0]
            f.write(f"{int(source_id) + 1000 * i},{variants[i % len(variants)]}\n")


def _perturbed(columns: list, real: list, distinct: int) -> list:
    """``distinct`` perturbed copies of the real rows (all but source_id), as text."""
    import csv

    import numpy as np
    rng = np.random.default_rng(0)
    parsed = list(csv.reader(real))
    variants = [[] for _ in range(distinct)]
    for column, name in enumerate(columns[1:], start=1):
        for first, row in enumerate(parsed):
            mine = range(first, distinct, len(parsed))
            field = row[column]
            if not field.startswith("["):
                for v in mine:
                    variants[v].append(f'"{field}"' if "," in field else field)
                continue
            values = np.array(field[1:-1].split(","), dtype=np.float64)
            noise = rng.standard_normal((len(mine), len(values)))
            # float32 columns to 8 significant digits, as Gaia prints them; coefficients in full
            short = not name.endswith("_coefficients")
            if "correlations" in name:
                values = np.clip(values + 0.02 * noise, -0.999, 0.999)
            elif "error" in name:
                values = values * np.exp(0.05 * noise)
            else:
                values = values * (1 + 0.02 * noise)
            for v, numbers in zip(mine, values.tolist()):
                text = ",".join(f"{x:.8g}" for x in numbers) if short else \
                    ",".join(map(repr, numbers))
                variants[v].append(f'"[{text}]"')
    return [",".join(v) for v in variants]


def _build_in_a_child(paths: list, rows: int, sample: str, distinct: int) -> None:
    """:func:`build` the files in another process, so that the memory measured here holds
    nothing of the building (Python keeps what the text of 5,000 rows took: ~50-150 MB)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for k, path in enumerate(paths):
            pool.submit(build, path, rows, sample, distinct, k * rows).result()


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


def _measure(args, paths: list, work: str, workers: int) -> dict:
    """Our ingest of ``paths`` (and, in the same run, one at a time with ``--jobs``, and
    astropy's reader): the result's figures."""
    from xpsvae.ingestion.pipeline import ingest
    rows = args.rows * args.files
    before = resource.getrusage(resource.RUSAGE_SELF)
    with PssSampler() as pss:
        start = time.perf_counter()
        manifest = ingest(paths, os.path.join(work, "store"), progress=False,
                          workers=workers, jobs=args.jobs)
        ours = time.perf_counter() - start
    if args.keep_store:
        shutil.copytree(os.path.join(work, "store"), args.keep_store, dirs_exist_ok=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, jobs, inflaters
    main_mb = after.ru_maxrss / 1024
    # the largest child's peak: a parsing worker, a job, or the process inflating a file
    child_mb = children.ru_maxrss / 1024
    processes = (2 * args.jobs if args.jobs > 1 else workers if workers > 1 else 0) + \
        (child_mb > 0 and args.jobs == 1)
    main_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert manifest["total"]["rows_kept"] == rows, manifest["total"]
    result = {"rows": rows, "rows_per_s": round(rows / ours, 1),
              "peak_rss_mb": round(main_mb + processes * child_mb),
              "main_peak_rss_mb": round(main_mb), "child_peak_rss_mb": round(child_mb),
              "peak_pss_mb": round(pss.peak_mb),
              # CPU per row: this process (all its threads), and its children together
              # (their start included); the slowest thread here bounds one file's rate
              "main_cpu_us_per_row": round(main_cpu / rows * 1e6),
              "children_cpu_us_per_row": round((children.ru_utime + children.ru_stime)
                                              / rows * 1e6),
              "workers": workers if args.jobs == 1 else 1, "files": args.files,
              "jobs": args.jobs, "cpus": os.cpu_count(), "sampled": args.sampled,
              "distinct_rows": args.distinct,
              "file_mb": round(sum(map(os.path.getsize, paths)) / 2**20)}
    if args.jobs > 1:
        start = time.perf_counter()
        ingest(paths, os.path.join(work, "store_one_at_a_time"), progress=False,
               workers=workers)
        one = time.perf_counter() - start
        result.update(one_at_a_time_rows_per_s=round(rows / one, 1),
                      jobs_speedup=round(one / ours, 3))
    if not args.skip_astropy:
        from astropy.table import Table
        start = time.perf_counter()
        read = sum(len(Table.read(path, format="ascii.ecsv")) for path in paths)
        theirs = time.perf_counter() - start
        assert read == rows
        result.update(astropy_rows_per_s=round(rows / theirs, 1),
                      ratio=round(theirs / ours, 3))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--skip-astropy", action="store_true")
    p.add_argument("--sampled", action="store_true",
                   help="sampled spectra (the XpSampledMeanSpectrum layout: flux and flux_error, "
                        "343 samples) instead of coefficients")
    p.add_argument("--workers", type=int, default=0,
                   help="parsing processes (default: as xpsvae ingest, 4 from 4 cores up, else 1)")
    p.add_argument("--distinct", type=int, default=5_000,
                   help="distinct rows in the file: perturbed copies of the real ones, so that "
                        "the store writer sees numbers as unique as a real file's (default: "
                        "5000, a shard); 0: the real rows repeated, varying only source_id")
    p.add_argument("--files", type=int, default=1, help="files of --rows rows each")
    p.add_argument("--jobs", type=int, default=1,
                   help="files ingested at once (xpsvae ingest --jobs); above 1, the files "
                        "are also ingested one at a time in the same run")
    p.add_argument("--keep-store", metavar="DIR", help="copy the store written here (e.g. for "
                   "train_throughput.py --streaming)")
    args = p.parse_args()
    from xpsvae.ingestion.pipeline import default_parse_workers
    workers = args.workers or default_parse_workers()
    work = tempfile.mkdtemp()
    try:
        kind = "XpSampledMeanSpectrum" if args.sampled else "XpContinuousMeanSpectrum"
        paths = [os.path.join(work, f"{kind}_{k:06d}-{k + 1:06d}.csv.gz")
                 for k in range(args.files)]
        _build_in_a_child(paths, args.rows, SAMPLED_SAMPLE if args.sampled else SAMPLE,
                          args.distinct)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        # Measured in a fresh process: its memory and its children's CPU are the ingest's alone.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = pool.submit(_measure, args, paths, work, workers).result()
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
