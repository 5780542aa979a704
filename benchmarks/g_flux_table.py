"""Memory and time of the G-flux table of ``--gaia-source``: read once, then mapped.

Writes ``--files`` gaia_source Parquet tables of ``--rows-per-file`` rows each
(``source_id``, ``phot_g_mean_flux``, ``phot_g_mean_mag``,
``has_xp_continuous``; the ids of neighbouring files overlap, so that some
stars are listed twice; 5% without a flux, 10% without XP spectra, as drawn
with a fixed seed). Then, each in a fresh process, with the package and its
libraries imported before the baseline:

* ``read``: ``g_flux_table(store, tables)`` in a new store: the tables read
  (``read_g_flux``) and the arrays kept in ``STORE/.g_flux/``;
* ``mapped``: the same call again, as a second ``xpsvae ingest`` into that
  store makes it: the kept arrays are mapped, no table is read.

With ``--csv`` the tables are gzip'd ECSV in the bulk ``GaiaSource_*.csv.gz``
layout (25 of its columns, a quoted ``designation`` among them), and a third
measurement reads them one table at a time (``read_g_flux(...,
tables_at_once=1)``) beside the default, several at once: ``at_once_ratio``.

Peak memory is ``/proc/self/status`` VmHWM less the memory held before the
call. The last line is a JSON object with ``rows``, ``stars``,
``read_seconds``, ``read_peak_mb``, ``read_bytes_per_star`` (the arrays
themselves are 17 bytes a star), ``mapped_seconds``, ``mapped_peak_mb`` and
``speed_ratio`` (read over mapped). Real bulk ``GaiaSource_*.csv.gz`` files
are gzip'd CSV of ~150 columns, far slower to read than these tables, so the
real ratio is larger.

    python benchmarks/g_flux_table.py --files 20 --rows-per-file 500000
    python benchmarks/g_flux_table.py --csv --files 6 --rows-per-file 100000
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from fresh_process import run_fresh, status_kb  # noqa: E402


def _measure(tables_dir: str, store: str) -> dict:
    """``store`` "one-at-a-time": read_g_flux one table at a time, nothing kept."""
    import numpy as np
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from xpsvae.ingestion.gflux import g_flux_table, read_g_flux
    tables = sorted(glob.glob(os.path.join(tables_dir, "*.parquet"))
                    + glob.glob(os.path.join(tables_dir, "*.csv.gz")))
    before = status_kb("VmRSS:")
    start = time.perf_counter()
    if store == "one-at-a-time":
        counts = {}
        arrays = read_g_flux(tables, counts, tables_at_once=1)
    else:
        os.makedirs(store, exist_ok=True)
        arrays, counts, _ = g_flux_table(store, tables)
    checksum = float(np.asarray(arrays[1]).sum())  # every page touched, as the joins would
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3),
            "peak_mb": round((status_kb("VmHWM:") - before) / 1024, 1),
            "rows": counts["rows_read"], "stars": counts["stars"], "checksum": checksum}



def _write_tables(folder: str, files: int, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(0)
    for k in range(files):
        flux = rng.random(rows) * 1e4
        flux[rng.random(rows) < 0.05] = np.nan
        ids = rng.permutation(rows).astype(np.int64) * 7 + k * rows * 5  # neighbours overlap
        pq.write_table(pa.table({"source_id": ids, "phot_g_mean_flux": flux,
                                 "phot_g_mean_mag": rng.random(rows) + 15,
                                 "has_xp_continuous": rng.random(rows) < 0.9}),
                       os.path.join(folder, f"GaiaSource_{k:06d}.parquet"))


_CSV_COLUMNS = ["solution_id", "designation", "source_id", "random_index", "ref_epoch", "ra",
                "ra_error", "dec", "dec_error", "parallax", "parallax_error", "pmra",
                "pmra_error", "pmdec", "pmdec_error", "phot_g_n_obs", "phot_g_mean_flux",
                "phot_g_mean_flux_error", "phot_g_mean_mag", "phot_bp_mean_mag",
                "phot_rp_mean_mag", "has_xp_continuous", "has_xp_sampled", "radial_velocity",
                "teff_gspphot"]


def _write_csv_tables(folder: str, files: int, rows: int) -> None:
    """The bulk GaiaSource layout: an ECSV header, then comma-separated rows, gzip'd."""
    import gzip

    import numpy as np
    rng = np.random.default_rng(0)
    for k in range(files):
        ids = rng.permutation(rows).astype(np.int64) * 7 + k * rows * 5
        numbers = rng.random((rows, len(_CSV_COLUMNS))) * 100
        flux = rng.random(rows) * 1e4
        has_xp = rng.random(rows) < 0.9
        lines = ["# %ECSV 1.0", "# ---", "# delimiter: ','", ",".join(_CSV_COLUMNS)]
        for i in range(rows):
            cells = [f"{v:.10g}" for v in numbers[i]]
            cells[1] = f'"Gaia DR3 {ids[i]}"'
            cells[2] = str(ids[i])
            cells[16] = "null" if flux[i] < 500 else f"{flux[i]:.10g}"  # 5% without a flux
            cells[21] = "True" if has_xp[i] else "False"
            lines.append(",".join(cells))
        with gzip.open(os.path.join(folder, f"GaiaSource_{k:06d}.csv.gz"), "wt",
                       compresslevel=6) as f:
            f.write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--rows-per-file", type=int, default=500_000)
    p.add_argument("--csv", action="store_true",
                   help="gzip'd ECSV tables in the bulk GaiaSource layout, and one table at a "
                        "time against several at once")
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory() as work:
        tables = os.path.join(work, "gaia_source")
        os.makedirs(tables)
        (_write_csv_tables if args.csv else _write_tables)(tables, args.files,
                                                            args.rows_per_file)
        store = os.path.join(work, "store")
        read = run_fresh(__file__, tables, store)
        mapped = run_fresh(__file__, tables, store)
        if read["checksum"] != mapped["checksum"]:
            raise SystemExit("the mapped table differs from the one read")
        extra = {}
        if args.csv:
            one = run_fresh(__file__, tables, "one-at-a-time")
            if one["checksum"] != read["checksum"]:
                raise SystemExit("one table at a time read other fluxes")
            extra = {"one_at_a_time_seconds": one["seconds"],
                     "at_once_ratio": round(one["seconds"] / read["seconds"], 2)}
        print(json.dumps({"rows": read["rows"], "stars": read["stars"], **extra,
                          "read_seconds": read["seconds"], "read_peak_mb": read["peak_mb"],
                          "read_bytes_per_star": round(read["peak_mb"] * 2**20 / read["stars"]),
                          "mapped_seconds": mapped["seconds"],
                          "mapped_peak_mb": mapped["peak_mb"],
                          "speed_ratio": round(read["seconds"] / mapped["seconds"], 1)}))


if __name__ == "__main__":
    main()
