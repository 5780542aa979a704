"""The ``xpsvae`` command: each subcommand wraps the Python API."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from typing import TYPE_CHECKING, List, Optional

import numpy as np

from ..core.constants import ACTIVATION_NAMES, LOSS_FORMS, NORMS, SCATTER_MAPS
from ..core.errors import SpectraError
from ..core.files import write_json
from ..io.read import read_spectra

if TYPE_CHECKING:
    from ..model.network import SVAEConfig
    from ..model.trainer import TrainConfig

# The model and the trainer (and so PyTorch) are imported by the commands that use them:
# `xpsvae ingest` starts without them.

#: TrainConfig fields settable from the command line (flag name = field name with dashes).
TRAIN_OPTIONS = {"optimizer": str, "lr": float, "batch_size": int, "epochs": int,
                 "weight_decay": float, "momentum": float, "lr_decay": float,
                 "loss_form": str, "seed": int, "val_fraction": float, "device": str,
                 "grad_clip": float, "threads": int, "calibrate_epochs": int,
                 "lr_scaling": str, "lr_reference_batch": int}


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training recipe (defaults: the chosen --recipe)")
    g.add_argument("--recipe", choices=("fast", "paper"), default="fast",
                   help="fast: AdamW + cosine, summed-ELBO loss (default); paper: SGD with "
                        "momentum, batch 1024, lr 0.1 decayed per epoch, paper loss form")
    g.add_argument("--optimizer", choices=("adamw", "sgd"))
    g.add_argument("--lr", type=float, help="peak (adamw) or initial (sgd) learning rate")
    g.add_argument("--batch-size", type=int, help="stars per step; the rate follows it "
                                                  "(--lr-scaling)")
    g.add_argument("--lr-scaling", choices=("auto", "sqrt", "linear", "none"),
                   help="rate at another batch size: --lr is meant for --lr-reference-batch "
                        "(the recipe's batch); a batch k times larger runs at lr*sqrt(k) (sqrt, "
                        "auto for adamw) or lr*k (linear, auto for sgd); none (default): --lr "
                        "as given")
    g.add_argument("--lr-reference-batch", type=int)
    g.add_argument("--epochs", type=int)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--lr-decay", type=float, help="SGD: lr * lr_decay**epoch")
    g.add_argument("--loss-form", choices=LOSS_FORMS,
                   help="paper: the means of the paper's eqs 1-5 (KL weighed N/n_Z); elbo: sums")
    g.add_argument("--seed", type=int)
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast on GPU")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm (0: off)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--compile", action="store_true", default=None,
                   help="run the network through torch.compile")
    g.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay each training step as one captured CUDA graph (GPU, one "
                        "process)")
    g.add_argument("--calibrate-epochs", type=int,
                   help="final epochs training only the scatter head on latent-mean "
                        "reconstructions (0: off)")
    a = p.add_argument_group("architecture (defaults: the chosen --arch)")
    a.add_argument("--arch", choices=("paper", "later"), default="paper",
                   help="paper: 80-50-30 GELU (the paper's Section 2.2); later: 90-70-50-30-10, BatchNorm, "
                        "sigmoid scatter")
    a.add_argument("--hidden", help="encoder widths, comma separated, e.g. 80,50,30")
    a.add_argument("--latent-dim", type=int)
    a.add_argument("--activation", choices=sorted(ACTIVATION_NAMES))
    a.add_argument("--norm", choices=NORMS)
    a.add_argument("--scatter-map", choices=SCATTER_MAPS)


def _train_config(args) -> TrainConfig:
    from ..model.trainer import TrainConfig
    overrides = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    for flag in ("amp", "compile", "cuda_graph"):
        if getattr(args, flag):
            overrides[flag] = True
    return TrainConfig.preset(args.recipe, **overrides)


def _model_config(args, input_dim: int) -> SVAEConfig:
    from ..model.network import SVAEConfig
    d = SVAEConfig.preset(args.arch, input_dim).to_dict()
    if args.hidden:
        d["hidden"] = [int(h) for h in args.hidden.split(",")]
    for key in ("latent_dim", "activation", "norm", "scatter_map"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    return SVAEConfig.from_dict(d)


def _resume_config(args, out_dir: str) -> TrainConfig:
    """On --resume, the saved recipe with only the options given now that may change."""
    from ..core.files import CONFIG_FILE
    from ..model.trainer import TrainConfig
    with open(os.path.join(out_dir, CONFIG_FILE)) as f:
        saved = TrainConfig.from_dict(json.load(f)["training"]).to_dict()
    for key in ("epochs", "device", "threads"):
        if getattr(args, key) is not None:
            saved[key] = getattr(args, key)
    for flag in ("amp", "cuda_graph"):
        if getattr(args, flag):
            saved[flag] = True
    return TrainConfig.from_dict(saved)


# --------------------------------------------------------------------------- commands

def _read_and_report(path: str, progress: bool = False):
    """Read a table of spectra and say on stderr what was read, kept and set aside."""
    spectra = read_spectra(path, progress=progress)
    print(spectra.accounting.summary(), file=sys.stderr)
    return spectra


def _refuse_a_store_too_large_for_memory(store: str) -> None:
    """Refuse, before reading it, a store whose stars would not fit in memory for training,
    with the way round, rather than be killed for memory after a long read.

    Training in memory holds each star's values and errors as float32 twice (as read, and
    standardised): 16 bytes an input, plus ~200 bytes of labels and ids.
    """
    from ..core import machine
    from ..io.store import array_widths, open_store
    memory = machine.usable_memory()
    if memory is None:
        return
    dataset = open_store(store)
    stars = dataset.count_rows()
    widths = array_widths(dataset.files)  # the first shard with an array says
    n_inputs = widths.get("flux") or (widths.get("bp_coefficients", 0)
                                      + widths.get("rp_coefficients", 0))
    need = stars * (16 * n_inputs + 200)
    if need > 0.8 * memory:
        raise SpectraError(
            f"{store}: {stars:,} stars of {n_inputs} inputs need ~{need / 2**30:.1f} GB of "
            f"memory to train on in memory, more than the {memory / 2**30:.1f} GB this "
            "process may use; train streamed from the store instead (add --streaming), or "
            "over several processes that each hold a part (torchrun ... --resident)")


def cmd_train(args) -> int:
    from ..core.files import CONFIG_FILE
    from ..svae import SVAE
    if args.streaming and args.resident:
        raise SpectraError("--streaming and --resident are two ways to train on a store: "
                           "give one")
    from_store = args.streaming or args.resident
    if from_store:
        if not os.path.isdir(args.data):
            option = "--streaming" if args.streaming else "--resident"
            raise SpectraError(f"{args.data}: {option} reads a store folder (xpsvae ingest)")
        from ..io.store import read_shard, store_shards
        n_inputs = read_shard(store_shards(args.data)[0]).n_inputs
    else:
        if os.path.isdir(args.data):
            _refuse_a_store_too_large_for_memory(args.data)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK") == "0":
                print("every rank reads the whole store and trains on every world-th star; "
                      "with --resident (or --streaming) each reads only its own shards",
                      file=sys.stderr)
        spectra = _read_and_report(args.data, progress=not args.quiet)
        n_inputs = spectra.n_inputs
    if args.resume and os.path.exists(os.path.join(args.out, CONFIG_FILE)):
        model = SVAE(train_config=_resume_config(args, args.out))
    else:
        model = SVAE(_model_config(args, n_inputs), _train_config(args))
    if from_store:
        model.fit_store(args.data, out_dir=args.out, resume=args.resume, progress=not args.quiet,
                        buffer_shards=args.buffer_shards, cache_dir=args.cache_dir,
                        resident=args.resident)
    else:
        model.fit(spectra, out_dir=args.out, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 writes the files and reports
    write_json(os.path.join(args.out, "data_accounting.json"),
               model.info["data"]["accounting"] if from_store
               else spectra.accounting.to_dict())
    last, tc = model.history[-1], model.train_config
    phases = f" ({tc.epochs}, then {tc.calibrate_epochs} calibrating the scatter head)" \
        if tc.calibrate_epochs and last["epoch"] > tc.epochs else ""
    print(f"trained {last['epoch']} epochs{phases} in {last['seconds']:.1f} s; "
          f"validation loss {last.get('val_loss', float('nan')):.4f}; model in {args.out}")
    return 0


def cmd_encode(args) -> int:
    import pyarrow.parquet as pq

    from ..catalog import encode_store, encoded_table, model_metadata
    from ..svae import SVAE
    if os.path.isdir(args.data):  # a store: shard by shard, here or on Dask, restartable
        manifest = encode_store(args.model, args.data, args.out, scheduler=args.scheduler,
                                workers=args.workers, progress=not args.quiet)
        print(f"encoded {manifest['rows']} stars in {len(manifest['shards'])} shards to "
              f"{args.out}" + ("" if manifest["complete"] else " (incomplete: run again)"))
        return 0
    model = SVAE.load(args.model)
    spectra = _read_and_report(args.data, progress=not args.quiet)
    table = encoded_table(model, spectra, device=args.device)
    meta = {**model_metadata(args.model), "input": os.path.abspath(args.data),
            "accounting": spectra.accounting.to_dict(100)}
    pq.write_table(table.replace_schema_metadata({"xpsvae": json.dumps(meta)}), args.out)
    print(f"encoded {len(spectra)} stars to {args.out}")
    return 0


def cmd_generate(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..svae import SVAE
    model = SVAE.load(args.model)
    if args.latent:
        latent = _read_latent(args.latent, model.config.latent_dim)
        spectra, scatter = model.decode(latent, args.device), model.scatter(latent, args.device)
    else:
        latent, spectra, scatter = model.generate(args.n, seed=args.seed, device=args.device)
    names = model.info.get("input_names") or [f"input_{i}" for i in range(spectra.shape[1])]
    table = pa.table({"latent": [z.tolist() for z in latent],
                      "flux" if model.info.get("kind") == "sampled" else "coefficients":
                          [s.tolist() for s in spectra],
                      "intrinsic_scatter": [s.tolist() for s in scatter]})
    meta = {"inputs": names, "units": model.info.get("normalisation"),
            "kind": model.info.get("kind"), "wavelength_nm": model.info.get("wavelength_nm")}
    pq.write_table(table.replace_schema_metadata({"xpsvae": json.dumps(meta)}), args.out)
    print(f"generated {len(latent)} spectra to {args.out}")
    return 0


def _read_latent(path: str, latent_dim: int) -> np.ndarray:
    import pyarrow.parquet as pq
    if path.endswith((".npy",)):
        latent = np.load(path, allow_pickle=False)
    else:
        table = pq.read_table(path)
        if "latent_mean" in table.column_names:
            latent = np.array(table.column("latent_mean").to_pylist(), dtype=np.float32)
        elif "latent" in table.column_names:
            latent = np.array(table.column("latent").to_pylist(), dtype=np.float32)
        else:
            raise SpectraError(f"{path}: needs a 'latent_mean' or 'latent' column "
                               f"(lists of {latent_dim} numbers)")
    if latent.ndim != 2 or latent.shape[1] != latent_dim or not np.isfinite(latent).all():
        raise SpectraError(f"{path}: latent vectors must be finite, shape (n, {latent_dim}); "
                           f"got {latent.shape}")
    return latent


def cmd_demo(args) -> int:
    from ..evaluation.demo import run_demo
    run_demo(args.out, epochs=args.epochs, max_stars=args.max_stars, device=args.device,
             paper_recipe=not args.skip_paper_recipe, progress=not args.quiet,
             threads=args.threads)
    print(f"report: {os.path.join(args.out, 'report.md')}")
    return 0


def cmd_cannon_fit(args) -> int:
    from ..cannon import Cannon
    spectra = _read_and_report(args.data, progress=not args.quiet)
    cannon = Cannon(args.labels.split(","), scatter_method=args.scatter_method).fit(spectra)
    cannon.save(args.out)
    info = cannon.fit_info
    print(f"fitted the Cannon on {info.n_stars_used} stars ({info.n_stars_without_labels} left "
          f"out for a missing label); model in {args.out}")
    return 0


def cmd_cannon_predict(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..cannon import Cannon
    from ..io.columns import column_to_1d
    from ..io.tables import read_table_columns
    cannon = Cannon.load(args.cannon)
    columns = read_table_columns(args.labels_table)
    missing = [c for c in cannon.label_names if c not in columns]
    if missing:
        raise SpectraError(f"{args.labels_table}: label columns {missing} not found")
    labels = np.column_stack([column_to_1d(columns[c]).astype(np.float64)
                              for c in cannon.label_names])
    ok = np.isfinite(labels).all(axis=1)
    flux = np.full((len(labels), cannon.theta.shape[0]), np.nan)
    flux[ok] = cannon.predict(labels[ok])
    out = {c: labels[:, i] for i, c in enumerate(cannon.label_names)}
    out["flux" if cannon.kind == "sampled" else "coefficients"] = [
        row.tolist() if good else None for row, good in zip(flux, ok)]
    out["population_scatter"] = [cannon.population_scatter().tolist() if good else None
                                 for good in ok]
    pq.write_table(pa.table(out), args.out)
    print(f"predicted {int(ok.sum())} spectra to {args.out}; {int((~ok).sum())} rows with a "
          "missing label left empty")
    return 0


def cmd_cannon_infer(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..cannon import Cannon
    cannon = Cannon.load(args.cannon)
    spectra = _read_and_report(args.data, progress=not args.quiet)
    labels, chi2 = cannon.infer_labels(spectra)
    out = {"source_id": spectra.source_id, "input_row": spectra.input_row}
    out.update({c: labels[:, i] for i, c in enumerate(cannon.label_names)})
    out["chi2"] = chi2
    pq.write_table(pa.table(out), args.out)
    print(f"inferred labels of {len(spectra)} stars to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from ..cannon import Cannon
    from ..evaluation.assess import assess
    from ..evaluation.report import write_report
    from ..svae import SVAE
    model = SVAE.load(args.model)
    spectra = _read_and_report(args.data, progress=not args.quiet)
    cannon = Cannon.load(args.cannon) if args.cannon else None
    os.makedirs(os.path.join(args.out, "figures"), exist_ok=True)
    metrics = {"model_dir": args.model,
               "data": {"file": args.data, "accounting": spectra.accounting.to_dict(20)}}
    metrics.update(assess(model, spectra, args.out, cannon=cannon, device=args.device))
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"report: {write_report(args.out, metrics)}")
    return 0


def _matches(patterns: List[str]) -> List[str]:
    """Files, folders or glob patterns (quoted, so that the shell leaves them) to paths."""
    import glob
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{pattern}: no such file")
        paths += matches
    return paths


def cmd_ingest(args) -> int:
    from ..ingestion.pipeline import default_parse_workers, ingest
    from .describe import counted
    paths = _matches(args.inputs)
    gaia_source = _matches(args.gaia_source or [])
    wavelength = None
    if args.wavelength:
        start, stop, step = (float(v) for v in args.wavelength.split(","))
        wavelength = np.arange(start, stop + step / 2, step)
    manifest = ingest(paths, args.out, gaia_source=gaia_source,
                      rows_per_shard=args.rows_per_shard, progress=not args.quiet,
                      wavelength=wavelength, workers=args.workers or default_parse_workers(),
                      jobs=args.jobs)  # 0: ingest's default for the files the folders hold
    total = manifest["total"]
    print(f"{args.out}: {counted(total['files'], 'file')}, read "
          f"{counted(total['rows_read'], 'row')}, kept {total['rows_kept']:,}, set aside "
          f"{total['rows_set_aside']:,} {total['reasons'] or ''}".rstrip())
    given = [os.path.abspath(p) for p in paths]
    skipped = [k for k in manifest.get("same_content", {})
               if any(k == g or k.startswith(g.rstrip(os.sep) + os.sep) for g in given)]
    if skipped:
        print(f"{counted(len(skipped), 'file')} given "
              + ("is" if len(skipped) == 1 else "are")
              + " already in the store under another path and not read again (the "
              "manifest's same_content says which)")
    if manifest.get("not_read"):
        n = len(manifest["not_read"])
        print(f"{counted(n, 'file')} of the folders given "
              + ("is not a table and was" if n == 1 else "are not tables and were")
              + " not read (the manifest's not_read lists them)")
    return 0


def cmd_info(args) -> int:
    from .describe import describe, format_description
    description = describe(args.path)
    print(json.dumps(description, indent=1) if args.json else format_description(description))
    return 0


def cmd_flux(args) -> int:
    from ..flux import write_store_flux
    grid = None
    if args.grid:
        start, stop, step = (float(v) for v in args.grid.split(","))
        grid = np.arange(start, stop + step / 2, step)
    meta = write_store_flux(args.store, args.out, grid, normalise=args.normalise,
                            progress=not args.quiet)
    print(f"{args.out}: {meta['stars']} spectra on {len(meta['wavelength_nm'])} samples; "
          f"{meta['stars_without_both_bands']} stars lacking a band left out")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xpsvae", description="The scatter VAE of Laroche & Speagle (2023) for Gaia DR3 "
        "BP/RP spectra: read archive files, train, encode, generate, compare with The Cannon. "
        "'xpsvae COMMAND --help' for each command.")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="train on the embedded APOGEE library, evaluate, report")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--epochs", type=int, help="override the default recipe's epochs")
    d.add_argument("--max-stars", type=int, help="use only the first N stars (quick look)")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--skip-paper-recipe", action="store_true",
                   help="do not also train the paper's SGD recipe for comparison")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train an sVAE on a table of spectra")
    t.add_argument("data", help="Parquet / FITS / HDF5 table of spectra, or a store folder")
    t.add_argument("--out", required=True, help="model directory")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--streaming", action="store_true",
                   help="stream a store shard by shard (for stores larger than memory)")
    t.add_argument("--resident", action="store_true",
                   help="read a store's training stars once and keep them on the training "
                        "device, each rank only its own shards under torchrun (a store too "
                        "large for one GPU, spread over several)")
    t.add_argument("--buffer-shards", type=int, default=4,
                   help="with --streaming: shards shuffled together in memory")
    t.add_argument("--cache-dir", help="with --streaming (or --resident): keep the checked "
                                       "training rows there as float32 .npy files and read "
                                       "epochs from them")
    _add_training_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="latents, reconstruction chi2 and anomaly score per star")
    e.add_argument("model", help="model directory")
    e.add_argument("data", help="table of spectra, or a store folder (encoded shard by shard)")
    e.add_argument("--out", required=True,
                   help="output Parquet file (a table) or folder of shards (a store)")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    e.add_argument("--scheduler", help="for a store: 'local' (a Dask LocalCluster) or a Dask "
                                       "scheduler address; default: this process")
    e.add_argument("--workers", type=int, default=0,
                   help="processes of the local cluster (default: one per core, at most one "
                        "per shard and one per GB of memory)")
    e.set_defaults(func=cmd_encode)

    g = sub.add_parser("generate", help="spectra and intrinsic scatter from latent vectors")
    g.add_argument("model", help="model directory")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--n", type=int, help="draw N latent vectors from the prior")
    src.add_argument("--latent", help="Parquet with 'latent_mean' (from encode: a file, or "
                                      "the folder of an encoded store) or 'latent', or a .npy "
                                      "array (n, latent_dim)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output Parquet file")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("ingest", help="read Gaia XP files (any archive format) into one store")
    i.add_argument("inputs", nargs="+", help="files, folders of them, or glob patterns")
    i.add_argument("--out", required=True, help="store folder")
    i.add_argument("--gaia-source", action="append",
                   help="gaia_source table with phot_g_mean_flux or phot_g_mean_mag, a "
                        "folder of them (the bulk GaiaSource files) or a quoted glob "
                        "pattern; repeat for several. Read once per store (kept in "
                        "STORE/.g_flux/ for the next run); stars whose has_xp_continuous "
                        "is false are left out")
    i.add_argument("--rows-per-shard", type=int, default=5_000,
                   help="rows per shard, also the most rows held in memory")
    i.add_argument("--wavelength", metavar="START,STOP,STEP",
                   help="grid (nm) of sampled spectra whose files do not give one "
                        "(default: a 'wavelength' column, GaiaXPy's <name>_sampling.csv, or "
                        "GaiaXPy's 336-1020 nm in 2 nm for 343 samples)")
    i.add_argument("--workers", type=int, default=0,
                   help="processes parsing CSV-family files (default: 4 from 4 cores up; else "
                        "1: parse in this process); the store is the same whatever the number")
    i.add_argument("--jobs", type=int, default=0,
                   help="files read at once, one process each (each parses its own file, so "
                        "--workers is then not used); the store is the same whatever the "
                        "number (default: with several files and 4 cores or more, one per "
                        "two cores, one per file and one per 2 GB of memory at most; else 1)")
    i.set_defaults(func=cmd_ingest)

    fx = sub.add_parser("flux", help="calibrated sampled flux from a store's coefficients "
                                     "(GaiaXPy's calibration, vectorised)")
    fx.add_argument("store", help="store folder from xpsvae ingest")
    fx.add_argument("--out", required=True, help="output Parquet: source_id, flux, flux_error")
    fx.add_argument("--grid", help="start,stop,step in nm (default: GaiaXPy's 336,1020,2)")
    fx.add_argument("--normalise", action="store_true",
                    help="divide flux and errors by phot_g_mean_flux (ready for training)")
    fx.set_defaults(func=cmd_flux)

    n = sub.add_parser("info", help="what a store, encoded catalogue, model, Cannon, report or "
                                    "Parquet table holds (reads no spectra)")
    n.add_argument("path")
    n.add_argument("--json", action="store_true", help="the description as JSON")
    n.set_defaults(func=cmd_info)

    v = sub.add_parser("evaluate", help="metrics, figures and report of a model on held-out stars")
    v.add_argument("model", help="sVAE model directory")
    v.add_argument("data", help="held-out stars (labels teff, logg, fe_h for the tails)")
    v.add_argument("--cannon", help="a Cannon directory to compare with")
    v.add_argument("--out", required=True, help="report directory")
    v.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    v.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("cannon", help="The Cannon: the supervised baseline")
    csub = c.add_subparsers(dest="cannon_command", required=True)
    cf = csub.add_parser("fit", help="fit on a table of spectra with label columns")
    cf.add_argument("data", help="table of spectra with label columns")
    cf.add_argument("--labels", default="teff,logg,fe_h", help="label columns, comma separated")
    cf.add_argument("--out", required=True, help="Cannon directory")
    cf.add_argument("--scatter-method", choices=("ml", "thecannon"), default="ml",
                    help="ml: exact maximum likelihood; thecannon: TheCannon 0.7.3's grid search "
                         "(reproduces that package's scatters, a few per cent higher)")
    cf.set_defaults(func=cmd_cannon_fit)
    cp = csub.add_parser("predict", help="spectra from labels")
    cp.add_argument("cannon", help="Cannon directory")
    cp.add_argument("labels_table", help="Parquet / FITS / HDF5 table with the label columns")
    cp.add_argument("--out", required=True, help="output Parquet file")
    cp.set_defaults(func=cmd_cannon_predict)
    ci = csub.add_parser("infer", help="labels from spectra (the Cannon's test step)")
    ci.add_argument("cannon", help="Cannon directory")
    ci.add_argument("data", help="table of spectra")
    ci.add_argument("--out", required=True, help="output Parquet file")
    ci.set_defaults(func=cmd_cannon_infer)
    return p


def _init_distributed(args) -> None:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    import torch
    import torch.distributed as dist
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    device = getattr(args, "device", None) or "auto"
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if device in ("auto", "cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    dist.init_process_group("nccl" if use_cuda else "gloo")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        _init_distributed(args)
        if int(os.environ.get("RANK", "0")) != 0:
            args.quiet = True  # one progress bar, from rank 0
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"xpsvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"xpsvae {args.command}: error: {exc} (free some space and run it again: "
              f"{_AGAIN})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xpsvae {args.command}: interrupted ({_AGAIN})", file=sys.stderr)
        return 130  # the shell's code for a run stopped by Ctrl-C


_AGAIN = "ingest and encode pick up where they stopped, train with --resume"


def _user_errors() -> tuple:
    """Errors told as a one-line message, not a traceback.

    SpectraError and ModelFileError are ValueErrors; TrainingDiverged can only
    come from a command that imported the trainer. The operating system's
    errors about a path the user gave (an ``--out`` that is a file, a folder
    not writable) name the path themselves; a full disk is told in :func:`main`.
    """
    trainer = sys.modules.get(f"{__package__}.trainer")
    return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError) \
        + ((trainer.TrainingDiverged,) if trainer else ())


if __name__ == "__main__":
    raise SystemExit(main())
