"""Encoding throughput of a store: one process against a 2-worker Dask LocalCluster, one run.

Ingests the 2,000 real DR3 sources of ../shared/data/xp_coefficients_2000 into a
store (synthetic G flux), copies its shards ``--copies`` times to make a larger
store, trains a small model for one epoch, then encodes the store in this
process and on a LocalCluster of single-threaded workers (warmed up: torch imported and
the model loaded before the clock starts). The last line is a JSON object with
spectra/s of both and the peak RSS of each worker.

    python benchmarks/encode_throughput.py --copies 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                    "xp_coefficients_2000", "xp_continuous_combined_chunk0.fits")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    from dask.distributed import Client, LocalCluster

    from xpsvae import SVAE, TrainConfig, read_spectra
    from xpsvae.catalog import encode_store
    from xpsvae.ingestion.pipeline import ingest
    work = tempfile.mkdtemp()
    try:
        base = os.path.join(work, "base")
        ingest([DATA], base, rows_per_shard=1000, progress=False)
        model = os.path.join(work, "model")
        SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0)).fit(
            read_spectra(base), out_dir=model, progress=False)
        store = os.path.join(work, "store")
        os.makedirs(store)
        base_manifest = json.load(open(os.path.join(base, "manifest.json")))
        shards = []
        for c in range(args.copies):
            for s in base_manifest["shards"]:
                name = f"part-{len(shards):05d}.parquet"
                shutil.copy(os.path.join(base, s), os.path.join(store, name))
                shards.append(name)
        json.dump({"shards": shards}, open(os.path.join(store, "manifest.json"), "w"))
        start = time.perf_counter()
        one = encode_store(model, store, os.path.join(work, "one"), progress=False)
        single = time.perf_counter() - start
        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            # warm-up: each worker imports torch and loads the model once, before the clock
            client.run(lambda: __import__("xpsvae.catalog").catalog._load_model(model))
            start = time.perf_counter()
            two = encode_store(model, store, os.path.join(work, "two"),
                               scheduler=cluster.scheduler_address, progress=False)
            parallel = time.perf_counter() - start
            worker_mb = sorted(client.run(_peak_mb).values())
        assert one["rows"] == two["rows"]
        print(json.dumps({"spectra": one["rows"], "shards": len(shards),
                          "single_process_spectra_per_s": round(one["rows"] / single),
                          "cluster_spectra_per_s": round(two["rows"] / parallel),
                          "workers": args.workers, "ratio": round(single / parallel, 2),
                          "peak_rss_mb_per_worker": [round(m) for m in worker_mb],
                          "cpu_count": os.cpu_count()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
