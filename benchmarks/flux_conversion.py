"""Coefficients -> sampled flux with errors: xpsvae's batch conversion against GaiaXPy's calibrate.

Both run on the same N sources (the real DataLink rows repeated, varying
source_id) on GaiaXPy's default grid, in one run. The last line is a JSON
object with ``sources``, ``xpsvae_s``, ``gaiaxpy_s``, ``ratio`` and the
largest relative difference of flux and error.

    python benchmarks/flux_conversion.py --sources 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gaia_dr3_xp",
                      "XP_CONTINUOUS_RAW.csv")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sources", type=int, default=2000)
    args = p.parse_args()
    from gaiaxpy import calibrate

    from xpsvae.flux import XPSampler
    from xpsvae.ingestion.pipeline import ingest
    lines = open(SAMPLE).read().splitlines()
    work = tempfile.mkdtemp()
    try:
        path = os.path.join(work, "many.csv")
        with open(path, "w") as f:
            f.write(lines[0] + "\n")
            for i in range(args.sources):
                sid, rest = lines[1 + i % (len(lines) - 1)].split(",", 1)
                f.write(f"{int(sid) + 1000 * i},{rest}\n")
        ingest([path], os.path.join(work, "store"), progress=False)
        import pyarrow as pa

        from xpsvae.io.store import read_store_columns
        table = pa.table(read_store_columns(os.path.join(work, "store")))
        bands = [tuple(np.array(table.column(f"{b}_{c}").to_pylist()) for c in
                       ("coefficients", "coefficient_errors", "coefficient_correlations"))
                 for b in ("bp", "rp")]
        sampler = XPSampler()
        start = time.perf_counter()
        flux, error = sampler.flux_and_error(*bands)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        reference, _ = calibrate(path, save_file=False, disable_info=True) \
            if "disable_info" in calibrate.__code__.co_varnames else calibrate(path, save_file=False)
        theirs = time.perf_counter() - start
        ref_flux, ref_error = np.vstack(reference["flux"]), np.vstack(reference["flux_error"])
        print(json.dumps({"sources": args.sources, "xpsvae_s": round(ours, 3),
                          "gaiaxpy_s": round(theirs, 3), "ratio": round(theirs / ours, 1),
                          "max_rel_diff_flux": float(np.max(np.abs(flux - ref_flux)
                                                            / np.abs(ref_flux))),
                          "max_rel_diff_error": float(np.max(np.abs(error - ref_error)
                                                             / ref_error))}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
