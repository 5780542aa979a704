"""Training throughput of the sVAE on the embedded APOGEE library.

Runs xpsvae's own training loop (data resident on the device, batches drawn by
index) for a fixed time, then, in the same run, a loop that feeds the same
network batch by batch from numpy (what peer implementations do), and prints
the ratio. The last line is a JSON object.

    python benchmarks/train_throughput.py --seconds 30 --threads 2
    python benchmarks/train_throughput.py --device cuda --amp
    python benchmarks/train_throughput.py --device cuda --cuda-graph   # one launch per step
    python benchmarks/train_throughput.py --streaming STORE   # streamed vs resident, same stars

With ``--cuda-graph`` the run also trains without the graph, in the same run,
and reports ``eager_samples_per_s`` and ``cuda_graph_ratio``; on CUDA also
``replay_only_samples_per_s``, the captured step replayed back to back with no
loop around it (the GPU's own limit: far above ``samples_per_s``, the host is).

With ``--streaming STORE`` the stars are a store's (``xpsvae ingest``); the
run trains on them streamed shard by shard (from Parquet, then from the
float32 cache of ``--cache-dir``), resident in memory, and read from the store
once and resident (``--resident``), all in the same run, and reports the
ratios to resident (how close streaming gets; ``--resident`` should be 1).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from xpsvae import SVAE, TrainConfig, benchmark_split, load_apogee_library
from xpsvae.model.network import svae_loss


class _Stop(Exception):
    pass


def ours(stars, args, store=None, cache_dir=None, cuda_graph=None, report=None,
         store_resident=False) -> float:
    """Samples/s of xpsvae's loop: resident tensors, or streamed from ``store``
    (from its Parquet shards, or from a float32 cache in ``cache_dir``), or read from
    ``store`` once and resident (``store_resident``, ``--resident``). Where a step was
    captured on CUDA, ``report`` (a dict) gets ``replay_only_samples_per_s``."""
    config = TrainConfig(optimizer="sgd", lr=0.01, batch_size=args.batch_size, epochs=10**6,
                         lr_scaling="none",
                         calibrate_epochs=0,
                         val_fraction=0.0, device=args.device, amp=args.amp,
                         threads=args.threads, loss_form="paper", compile=args.compile,
                         cuda_graph=args.cuda_graph if cuda_graph is None else cuda_graph)
    model = SVAE(train_config=config, arch=args.arch)
    state = {}
    # Warm-up (compilation, a graph's capture after its eager steps) falls before the clock:
    # at least one epoch and at least 8 steps.
    warm_epochs = max(1, math.ceil(8 / max(1, len(stars) // args.batch_size)))

    def stop(trainer):
        if trainer.epoch < warm_epochs:
            return
        if trainer.epoch == warm_epochs:
            state["t0"], state["e0"] = time.perf_counter(), warm_epochs
        elif time.perf_counter() - state["t0"] > args.seconds:
            state["t1"], state["e1"] = time.perf_counter(), trainer.epoch
            state["trainer"] = trainer
            raise _Stop()
    try:
        if store:
            model.fit_store(store, progress=False, on_epoch_end=stop,
                            buffer_shards=args.buffer_shards, cache_dir=cache_dir,
                            resident=store_resident)
        else:
            model.fit(stars, progress=False, on_epoch_end=stop)
    except _Stop:
        pass
    per_epoch = (len(stars) // args.batch_size) * args.batch_size
    rate = (state["e1"] - state["e0"]) * per_epoch / (state["t1"] - state["t0"])
    graphed = state["trainer"].graphed.get(False)
    if report is not None and graphed is not None and graphed.graph is not None:
        report["replay_only_samples_per_s"] = round(replay_rate(graphed.graph, args.batch_size))
    return rate


def replay_rate(graph, batch_size: int, replays: int = 500) -> float:
    """Samples/s of the captured step replayed back to back, with no loop around it: the
    GPU's own time per step. Far above the loop's rate means the host is the limit."""
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize()
    return replays * batch_size / (time.perf_counter() - start)


def numpy_fed(stars, args) -> float:
    """The same network and loss, each batch sliced in numpy and converted to a tensor."""
    from xpsvae import ScatterVAE, SVAEConfig
    device = torch.device(args.device if args.device != "auto" else "cpu")
    net = ScatterVAE(SVAEConfig.preset(args.arch, stars.n_inputs)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = (stars.values - stars.values.mean(0)) / stars.values.std(0)
    e = stars.errors / stars.values.std(0)
    n, done, t0 = len(x), 0, None
    rng = np.random.default_rng(0)
    while True:
        perm = rng.permutation(n)
        for b in range(n // args.batch_size):
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            xb = torch.from_numpy(x[idx]).float().to(device)
            eb = torch.from_numpy(e[idx]).float().to(device)
            out = net(xb, torch.randn(len(idx), 6, device=device))
            loss = svae_loss(xb, eb, out["x_hat"], out["scatter"], out["latent_mean"],
                             out["latent_logvar"])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # peers log the loss every batch
            if t0 is not None:
                done += len(idx)
        if t0 is None:
            t0 = time.perf_counter()
        elif time.perf_counter() - t0 > args.seconds:
            return done / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--arch", default="paper", choices=("paper", "later"))
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="0: xpsvae's default")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the network "
                   "(compile time falls in the warm-up epoch, outside the clock)")
    p.add_argument("--cuda-graph", action="store_true", help="replay each step as a captured "
                   "CUDA graph (capture falls in the warm-up epoch; off CUDA: uncaptured)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--spectra", metavar="FILE", help="train on the stars of this file (any "
                   "that `xpsvae train` reads) instead of the library's training split")
    p.add_argument("--streaming", metavar="STORE", help="a store folder: streamed vs resident")
    p.add_argument("--buffer-shards", type=int, default=4)
    args = p.parse_args()
    if args.threads:  # 0: as xpsvae does by default (torch's count, lowered to a CPU quota)
        torch.set_num_threads(args.threads)
    if args.streaming:
        from xpsvae import read_spectra
        stars = read_spectra(args.streaming)
        import tempfile
        streamed = ours(stars, args, store=args.streaming)
        with tempfile.TemporaryDirectory() as cache:
            cached = ours(stars, args, store=args.streaming, cache_dir=cache)
        resident = ours(stars, args)
        store_resident = ours(stars, args, store=args.streaming, store_resident=True)
        print(json.dumps({"streamed_samples_per_s": round(streamed),
                          "streamed_cached_samples_per_s": round(cached),
                          "resident_samples_per_s": round(resident),
                          "store_resident_samples_per_s": round(store_resident),
                          "ratio": round(streamed / resident, 3),
                          "cached_ratio": round(cached / resident, 3),
                          "store_resident_ratio": round(store_resident / resident, 3),
                          "device": args.device,
                          "threads": torch.get_num_threads(), "rows": len(stars),
                          "buffer_shards": args.buffer_shards, "batch_size": args.batch_size}))
        return
    if args.spectra:
        from xpsvae import read_spectra
        stars = read_spectra(args.spectra)
    else:
        library = load_apogee_library()
        train_idx, _ = benchmark_split(len(library))
        stars = library.subset(train_idx)
    replay = {}
    rate = ours(stars, args, report=replay)
    result = {"samples_per_s": round(rate), "device": args.device,
              "threads": torch.get_num_threads(), "arch": args.arch,
              "batch_size": args.batch_size, "amp": args.amp, "compile": args.compile,
              "cuda_graph": args.cuda_graph,
              "seconds": args.seconds,
              "n_train": len(stars), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    if args.cuda_graph:  # the same loop without the graph, in the same run
        result.update(replay)
        eager = ours(stars, args, cuda_graph=False)
        result.update(eager_samples_per_s=round(eager), cuda_graph_ratio=round(rate / eager, 3))
    if not args.no_baseline:
        base = numpy_fed(stars, args)
        result.update(numpy_fed_samples_per_s=round(base), ratio=round(rate / base, 3))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
