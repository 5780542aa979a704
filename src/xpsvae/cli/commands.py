"""The ``xpsvae`` subcommands, one function each: they wrap the Python API.

The model and the trainer (and so PyTorch) are imported by the commands that
use them, inside them: ``xpsvae ingest`` and ``xpsvae info`` start without it.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import TYPE_CHECKING, List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..conform import contract, read_for_model, read_path_for_model
from ..core import machine
from ..core.errors import SpectraError
from ..core.files import DATA_ACCOUNTING_FILE, METRICS_FILE, REPORT_FILE, atomic_path, write_json
from ..flux import write_store_flux
from ..ingestion.pipeline import default_parse_workers, ingest
from ..io.columns import column_to_1d
from ..io.read import read_spectra
from ..io.store import array_widths, open_store, read_shard, store_shards
from ..io.tables import read_table_columns
from .checks import clear_old_run, model_config, resuming
from .describe import counted, describe, format_description
from .label_commands import with_label_table

if TYPE_CHECKING:
    pass


def _write_parquet(table: pa.Table, path: str) -> None:
    """A command's Parquet output, written beside and renamed into place."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


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
    from ..svae import SVAE  # PyTorch: only here
    if args.streaming and args.resident:
        raise SpectraError("--streaming and --resident are two ways to train on a store: "
                           "give one")
    from_store = args.streaming or args.resident
    if from_store and args.labels:
        raise SpectraError("--labels learns labels from a table in memory; --streaming and "
                           "--resident read a store, which holds no labels")
    if from_store:
        if not os.path.isdir(args.data):
            option = "--streaming" if args.streaming else "--resident"
            raise SpectraError(f"{args.data}: {option} reads a store folder (xpsvae ingest)")
        n_inputs = read_shard(store_shards(args.data)[0]).n_inputs
    else:
        if os.path.isdir(args.data):
            _refuse_a_store_too_large_for_memory(args.data)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK") == "0":
                print("every rank reads the whole store and trains on every world-th star; "
                      "with --resident (or --streaming) each reads only its own shards",
                      file=sys.stderr)
        spectra = with_label_table(_read_and_report(args.data, progress=not args.quiet),
                                   args.label_table)
        n_inputs = spectra.n_inputs
    if resuming(args):
        model = SVAE(train_config=args.train_config)
    else:
        model = SVAE(model_config(args, n_inputs), args.train_config)
    clear_old_run(args)
    if from_store:
        model.fit_store(args.data, out_dir=args.out, resume=args.resume, progress=not args.quiet,
                        buffer_shards=args.buffer_shards, cache_dir=args.cache_dir,
                        resident=args.resident)
    else:
        model.fit(spectra, labels=args.labels.split(",") if args.labels else (), out_dir=args.out,
                  resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 writes the files and reports
    write_json(os.path.join(args.out, DATA_ACCOUNTING_FILE),
               model.info["data"]["accounting"] if from_store
               else spectra.accounting.to_dict())
    last, tc = model.history[-1], model.train_config
    phases = f" ({tc.epochs}, then {tc.calibrate_epochs} calibrating the scatter head)" \
        if tc.calibrate_epochs and last["epoch"] > tc.epochs else ""
    labels = f"; label term {last['train_label']:.3f}" if "train_label" in last else ""
    print(f"trained {last['epoch']} epochs{phases} in {last['seconds']:.1f} s; "
          f"validation loss {last.get('val_loss', float('nan')):.4f}{labels}; "
          f"model in {args.out}")
    return 0


def cmd_encode(args) -> int:
    # PyTorch, imported only by the commands that use it:
    from ..catalog import check_labels_fit, encode_store, encoded_table, model_metadata
    from ..labels import load_labels
    from ..svae import SVAE
    if os.path.isdir(args.data):  # a store: shard by shard, here or on Dask, restartable
        manifest = encode_store(args.model, args.data, args.out, scheduler=args.scheduler,
                                workers=args.workers, progress=not args.quiet,
                                labels_dir=args.labels)
        print(f"encoded {manifest['rows']} stars in {len(manifest['shards'])} shards to "
              f"{args.out}" + ("" if manifest["complete"] else " (incomplete: run again)"))
        return 0
    model = SVAE.load(args.model)
    label_model = load_labels(args.labels) if args.labels else None
    if label_model is not None:
        check_labels_fit(model, label_model, args.labels)
    spectra = read_for_model(args.data, contract(model.info, model.config.input_dim))
    print(spectra.accounting.summary(), file=sys.stderr)
    table = encoded_table(model, spectra, device=args.device, label_model=label_model)
    meta = {**model_metadata(args.model), "input": os.path.abspath(args.data),
            "accounting": spectra.accounting.to_dict(100)}
    _write_parquet(table.replace_schema_metadata({"xpsvae": json.dumps(meta)}), args.out)
    print(f"encoded {len(spectra)} stars to {args.out}")
    return 0


def cmd_generate(args) -> int:

    from ..svae import SVAE  # PyTorch: only here
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
    _write_parquet(table.replace_schema_metadata({"xpsvae": json.dumps(meta)}), args.out)
    print(f"generated {len(latent)} spectra to {args.out}")
    return 0


def _read_latent(path: str, latent_dim: int) -> np.ndarray:
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


def cmd_pretrained(args) -> int:
    from ..pretrained import build_pretrained, build_pretrained_labels  # PyTorch: only here
    clear_old_run(args)
    if args.labels:
        labels = build_pretrained_labels(args.out, threads=args.threads)
        print(f"label model of {labels.labels} in {args.out} (copy the folder whole to "
              "src/xpsvae/resources/builtin_labels/ to ship it)")
        return 0
    model = build_pretrained(args.out, progress=not args.quiet, threads=args.threads)
    print(f"trained {model.history[-1]['epoch']} epochs on {model.info['data']['n_stars']:,} "
          f"stars; model in {args.out} (copy its files into src/xpsvae/resources/builtin/ "
          "to ship it)")
    return 0


def cmd_demo(args) -> int:
    from ..evaluation.demo import run_demo  # PyTorch: only here
    run_demo(args.out, epochs=args.epochs, max_stars=args.max_stars, device=args.device,
             paper_recipe=not args.skip_paper_recipe, progress=not args.quiet,
             threads=args.threads, lanes=args.lanes, encoder_lr=args.tune_encoder)
    print(f"report: {os.path.join(args.out, REPORT_FILE)}")
    return 0


def cmd_cannon_fit(args) -> int:
    from ..cannon import Cannon  # PyTorch: only here
    spectra = _read_and_report(args.data, progress=not args.quiet)
    cannon = Cannon(args.labels.split(","), scatter_method=args.scatter_method).fit(spectra)
    cannon.save(args.out)
    info = cannon.fit_info
    print(f"fitted the Cannon on {info.n_stars_used} stars ({info.n_stars_without_labels} left "
          f"out for a missing label); model in {args.out}")
    return 0


def cmd_cannon_predict(args) -> int:

    from ..cannon import Cannon  # PyTorch: only here
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
    _write_parquet(pa.table(out), args.out)
    print(f"predicted {int(ok.sum())} spectra to {args.out}; {int((~ok).sum())} rows with a "
          "missing label left empty")
    return 0


def cmd_cannon_infer(args) -> int:

    from ..cannon import Cannon  # PyTorch: only here
    cannon = Cannon.load(args.cannon)
    spectra = _read_and_report(args.data, progress=not args.quiet)
    labels, chi2 = cannon.infer_labels(spectra)
    out = {"source_id": spectra.source_id, "input_row": spectra.input_row}
    out.update({c: labels[:, i] for i, c in enumerate(cannon.label_names)})
    out["chi2"] = chi2
    _write_parquet(pa.table(out), args.out)
    print(f"inferred labels of {len(spectra)} stars to {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    # PyTorch, imported only by the commands that use it:
    from ..cannon import Cannon
    from ..evaluation.assess import assess, held_out_stars
    from ..evaluation.report import write_report
    from ..svae import SVAE
    model = SVAE.load(args.model)
    spectra = read_path_for_model(args.data, contract(model.info, model.config.input_dim),
                                  progress=not args.quiet)
    print(spectra.accounting.summary(), file=sys.stderr)
    spectra, held_out = held_out_stars(model, spectra, args.include_training_stars)
    if held_out["training_stars_left_out"]:
        print(f"{held_out['training_stars_left_out']} of the stars are the model's own "
              f"training stars: left out, {len(spectra)} evaluated "
              "(--include-training-stars keeps them)", file=sys.stderr)
    elif not held_out["training_stars_recorded"]:
        print(f"{args.model} records no training stars: whether these stars are held out "
              "cannot be told", file=sys.stderr)
    cannon = Cannon.load(args.cannon) if args.cannon else None
    os.makedirs(os.path.join(args.out, "figures"), exist_ok=True)
    metrics = {"model_dir": args.model,
               "data": {"file": args.data, "accounting": spectra.accounting.to_dict(20),
                        "held_out": held_out}}
    metrics.update(assess(model, spectra, args.out, cannon=cannon, device=args.device))
    if args.labels:
        from ..evaluation.labels import score_label_model, write_label_figures
        from ..labels import load_labels
        label_model = load_labels(args.labels)  # a label model, or an ensemble of them
        metrics["labels"], predicted = score_label_model(label_model, spectra)
        write_label_figures(os.path.join(args.out, "figures"), predicted, spectra.labels,
                            label_model.labels)
    write_json(os.path.join(args.out, METRICS_FILE), metrics)
    print(f"report: {write_report(args.out, metrics)}")
    return 0


def _matches(patterns: List[str]) -> List[str]:
    """Files, folders or glob patterns (quoted, so that the shell leaves them) to paths."""
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{pattern}: no such file")
        paths += matches
    return paths


def cmd_ingest(args) -> int:
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
          f"{counted(total['rows_read'], 'row')}, kept {total['rows_kept']:,}"
          + (f" ({total['rows_partial']:,} partial: {total['partial_reasons']})"
             if total.get("rows_partial") else "")
          + f", set aside {total['rows_set_aside']:,} {total['reasons'] or ''}".rstrip())
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
    refused = {name: entry["refused"] for name, entry in manifest["files"].items()
               if "refused" in entry and name in given}
    for name, reason in refused.items():  # less than asked for: said, and not a success
        print(f"xpsvae ingest: error: {reason} (the store keeps what the other files "
              "gave; fix it and run the same command again to add it)", file=sys.stderr)
    return 2 if refused else 0


def cmd_info(args) -> int:
    description = describe(args.path)
    print(json.dumps(description, indent=1) if args.json else format_description(description))
    return 0


def cmd_flux(args) -> int:
    grid = None
    if args.grid:
        start, stop, step = (float(v) for v in args.grid.split(","))
        grid = np.arange(start, stop + step / 2, step)
    meta = write_store_flux(args.store, args.out, grid, normalise=args.normalise,
                            progress=not args.quiet)
    print(f"{args.out}: {meta['stars']} spectra on {len(meta['wavelength_nm'])} samples; "
          f"{meta['stars_without_both_bands']} stars lacking a band left out")
    return 0


