"""``xpsvae labels fit``, ``predict``, ``combine`` and ``pseudo`` (docs/labels.md)."""

from __future__ import annotations

import os
import sys

from ..conform import contract, read_for_model, read_path_for_model
from ..core.files import BUILTIN_LABEL_MODEL_DIR, atomic_path, model_folder
from ..io.read import read_spectra
from .checks import clear_old_run


def cmd_labels_fit(args) -> int:
    # PyTorch, imported only by the commands that use it:
    from ..labels import LabelHeadConfig, LabelModel
    from ..svae import SVAE
    # the recipe first: a bad option is refused before the sVAE and the table are read
    config = LabelHeadConfig(members=args.members, epochs=args.epochs, seed=args.seed,
                             threads=args.threads, high_alpha=args.high_alpha,
                             encoder_lr=args.tune_encoder)
    svae = SVAE.load(args.model)
    spectra = read_path_for_model(args.data, contract(svae.info, svae.config.input_dim))
    print(spectra.accounting.summary(), file=sys.stderr)
    spectra = with_label_table(spectra, args.label_table)
    labels = [name.strip() for name in args.labels.split(",") if name.strip()]
    extra = [name.strip() for name in args.extra.split(",") if name.strip()]
    model = LabelModel.fit(svae, spectra, labels, extra, config, device=args.device)
    clear_old_run(args)  # the old sVAE copy goes only now, when the new model is fitted
    model.save(args.out)
    scale = ", ".join(f"{n} {s:.2f}" for n, s in zip(labels, model.head.sigma_scale))
    classes = "" if model.classifier is None else \
        f"; high_alpha_prob learnt beside them ({100 * model.classifier.prior:.1f}% " \
        "high-alpha)"
    print(f"fitted a label model of {labels} on the labelled stars of {args.data} "
          f"(sigma scale on the validation share, median: {scale}{classes}); in {args.out}")
    return 0


def cmd_labels_predict(args) -> int:
    if os.path.isdir(args.data):  # a store: as xpsvae encode SVAE STORE --labels HEAD does it
        # PyTorch: only here
        from ..catalog import encode_store
        from ..labels.ensemble import label_svae_folder
        directory = model_folder(args.labels_model, BUILTIN_LABEL_MODEL_DIR)
        manifest = encode_store(label_svae_folder(directory), args.data,
                                args.out, scheduler=args.scheduler, workers=args.workers,
                                progress=not args.quiet, labels_dir=directory)
        print(f"labels of {manifest['rows']} stars, with their latents, in "
              f"{len(manifest['shards'])} shards to {args.out}"
              + ("" if manifest["complete"] else " (incomplete: run again)"))
        return 0
    # PyTorch: only here
    from ..labels.ensemble import load_labels
    from ..labels.model import EXTRAPOLATED
    model = load_labels(args.labels_model)  # a label model, or an ensemble of them
    svae = model.svae
    spectra = read_for_model(args.data, contract(svae.info, svae.config.input_dim))
    print(spectra.accounting.summary(), file=sys.stderr)
    table = model.predict(spectra, device=args.device)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    marked = {name: int(table[f"{name}{EXTRAPOLATED}"].sum()) for name in model.labels
              if f"{name}{EXTRAPOLATED}" in table and table[f"{name}{EXTRAPOLATED}"].any()}
    print(f"labels of {len(table)} stars ({int(table['labels_ood'].sum())} flagged as unlike "
          "the training stars" + ("; extrapolated: " + ", ".join(
              f"{name} {n}" for name, n in marked.items()) if marked else "")
          + f") to {args.out}")
    return 0


def cmd_labels_combine(args) -> int:
    from ..labels.ensemble import LabelEnsemble  # PyTorch: only here
    ensemble = LabelEnsemble.combine(args.label_models)
    calibrated = ""
    if args.calibrate:
        svae = ensemble.svae
        spectra = read_path_for_model(args.calibrate, contract(svae.info, svae.config.input_dim))
        print(spectra.accounting.summary(), file=sys.stderr)
        info = ensemble.calibrate(spectra, device=args.device)
        print(f"calibrated on the stars of {args.calibrate} that no member trained on "
              f"({info['stars']}; set aside as a member's training stars: "
              f"{info['trained_on']}). On them, std z and the share in the 68% interval, "
              "the members' calibration -> the ensemble's:", file=sys.stderr)
        for name, got in info["labels"].items():
            share = "" if got["in_interval"][0] is None else \
                ", in the interval {:.1%} -> {:.1%}".format(*got["in_interval"])
            print("  {}: std z {:.2f} -> {:.2f}".format(name, *got["std_z"]) + share,
                  file=sys.stderr)
        calibrated = f", calibrated on {args.calibrate}"
    clear_old_run(args)
    ensemble.save(args.out)
    print(f"a label ensemble of {len(ensemble.members)} label models of {ensemble.labels} "
          f"(a catalogue's latents from the first's sVAE{calibrated}) in {args.out}")
    return 0


def cmd_labels_pseudo(args) -> int:
    # PyTorch, imported only by the commands that use it:
    from ..labels import LabelHeadConfig
    from ..labels.pseudo import CALIBRATION_COLUMN, PSEUDO_SUFFIX, pseudo_labels
    spectra = read_spectra(args.data)
    print(spectra.accounting.summary(), file=sys.stderr)
    labels = [name.strip() for name in args.labels.split(",") if name.strip()]
    extra = [name.strip() for name in args.extra.split(",") if name.strip()]
    config = LabelHeadConfig(members=args.members, seed=args.seed, threads=args.threads)
    table = pseudo_labels(spectra, labels, extra, config, args.epochs)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    filled = {name: int(table[f"{name}{PSEUDO_SUFFIX}"].sum()) for name in labels}
    print(f"pseudo-labels {filled} of {len(table)} stars, and "
          f"{int(table[CALIBRATION_COLUMN].sum())} survey stars set aside to calibrate, to "
          f"{args.out}; train with --label-table {args.out}")
    return 0


def with_label_table(spectra, path):
    """``spectra`` with the label columns of ``path`` (``--label-table``), or as they are
    (``path`` None). ``train`` leaves the calibration stars' labels out, ``labels fit``
    holds them out (xpsvae.labels.pseudo)."""
    if path is None:
        return spectra
    import pandas as pd

    from ..labels.pseudo import with_labels  # PyTorch: only here
    return with_labels(spectra, pd.read_parquet(path), path)
