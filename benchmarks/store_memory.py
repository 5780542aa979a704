"""Memory and time of reading a store whole, training on it, and converting it to flux.

Builds a store of ``--rows`` bulk-format rows: one bulk file of ``--distinct``
perturbed copies of the real sample rows (``ingest_throughput.build``) is
ingested, and its shards are linked again under new numbers until the store
holds ``--rows`` (so source_ids repeat; the readers note that, nothing more).
Each figure is then measured in a fresh process, its peak memory read from
``/proc/self/status`` (VmHWM) less the memory it held before the step, with
the package and its libraries already imported. One JSON line per figure:

* ``read``: ``read_spectra(store)``, shard by shard into its final arrays,
  against validating the whole store at once (``spectra_from_columns`` of
  ``read_store_columns``, how it was read before), in the same run:
  ``peak_mb``, ``seconds``, ``bytes_per_star`` and the ratios;
* ``fit``: what ``SVAE.fit`` adds on top of the read set (one epoch);
* ``flux``: ``write_store_flux`` of the whole store (needs GaiaXPy).

    python benchmarks/store_memory.py --rows 200000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from fresh_process import run_fresh, status_kb  # noqa: E402


def _measure(step: str, store: str) -> dict:
    """One step in this (fresh) process: its peak and held memory in MB, and its seconds."""
    import numpy as np  # noqa: F401  (imported before the baseline, as the steps' libraries)
    import pyarrow.dataset  # noqa: F401
    import torch  # noqa: F401

    import xpsvae.io.read  # noqa: F401
    from xpsvae import SVAE, TrainConfig, read_spectra
    from xpsvae.io.store import read_store_columns
    from xpsvae.io.tables import spectra_from_columns
    stars = read_spectra(store) if step == "fit" else None
    if step == "flux":
        from xpsvae.flux import XPSampler, write_store_flux
        XPSampler()  # GaiaXPy's matrices loaded before the baseline
    before = status_kb("VmRSS:")
    start = time.perf_counter()
    if step == "read":
        result = read_spectra(store)
    elif step == "read_whole":
        result = spectra_from_columns(read_store_columns(store, without_correlations=True),
                                      source=store)
    elif step == "fit":
        SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, threads=2)).fit(
            stars, progress=False)
        result = stars
    else:
        result = write_store_flux(store, os.path.join(os.path.dirname(store), "flux.parquet"),
                                  progress=False)
    seconds = time.perf_counter() - start
    rows = len(result) if step != "flux" else result["stars"]
    return {"peak_mb": round((status_kb("VmHWM:") - before) / 1024, 1),
            "seconds": round(seconds, 2),
            "rows": rows}



def _build_store(work: str, rows: int, distinct: int) -> str:
    from ingest_throughput import build

    from xpsvae.ingestion.pipeline import ingest
    path = os.path.join(work, "XpContinuousMeanSpectrum_000000-000001.csv.gz")
    build(path, distinct, distinct=distinct)
    store = os.path.join(work, "store")
    ingest([path], store, progress=False)
    manifest_path = os.path.join(store, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    base, shards = list(manifest["shards"]), list(manifest["shards"])
    copies = -(-rows // distinct)
    for k in range(1, copies):
        for name in base:
            new = f"part-{len(shards):05d}.parquet"
            os.link(os.path.join(store, name), os.path.join(store, new))
            shards.append(new)
    manifest["shards"] = shards
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--distinct", type=int, default=5_000)
    p.add_argument("--skip-flux", action="store_true", help="without GaiaXPy")
    p.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory() as work:
        store = _build_store(work, args.rows, args.distinct)
        shard_by_shard = run_fresh(__file__, "read", store)
        whole = run_fresh(__file__, "read_whole", store)
        n = shard_by_shard["rows"]
        print(json.dumps({"figure": "read", "rows": n, **shard_by_shard,
                          "bytes_per_star": round(shard_by_shard["peak_mb"] * 2**20 / n),
                          "whole_store_peak_mb": whole["peak_mb"],
                          "whole_store_seconds": whole["seconds"],
                          "memory_ratio": round(whole["peak_mb"] / shard_by_shard["peak_mb"], 2),
                          "speed_ratio": round(whole["seconds"] / shard_by_shard["seconds"], 2)}))
        fit = run_fresh(__file__, "fit", store)
        print(json.dumps({"figure": "fit", **fit,
                          "bytes_per_star": round(fit["peak_mb"] * 2**20 / fit["rows"])}))
        if not args.skip_flux:
            flux = run_fresh(__file__, "flux", store)
            print(json.dumps({"figure": "flux", **flux,
                              "bytes_per_star": round(flux["peak_mb"] * 2**20 / flux["rows"])}))


if __name__ == "__main__":
    main()
