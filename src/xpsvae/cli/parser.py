"""The ``xpsvae`` command's arguments: every subcommand and its options."""

from __future__ import annotations

import argparse

from ..core.constants import ACTIVATION_NAMES, LOSS_FORMS, NORMS, RECIPES, SCATTER_MAPS

#: TrainConfig fields settable from the command line (flag name = field name with dashes).
TRAIN_OPTIONS = {"optimizer": str, "lr": float, "batch_size": int, "epochs": int,
                 "weight_decay": float, "momentum": float, "lr_decay": float,
                 "loss_form": str, "seed": int, "split_seed": int, "val_fraction": float,
                 "device": str, "grad_clip": float, "spike_clip": float, "threads": int,
                 "calibrate_epochs": int,
                 "lr_scaling": str, "lr_reference_batch": int, "mask_fraction": float,
                 "label_weight": float}


def _add_store_options(p: argparse.ArgumentParser) -> None:
    """Where a store's shards are encoded (encode, labels predict)."""
    p.add_argument("--scheduler", help="for a store: 'local' (a Dask LocalCluster) or a Dask "
                                       "scheduler address; default: this process")
    p.add_argument("--workers", type=int, default=0,
                   help="processes of the local cluster (default: one per core, at most one "
                        "per shard and one per GB of memory)")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out already holds (refused without it)")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training recipe (defaults: the chosen --recipe)")
    g.add_argument("--recipe", choices=RECIPES, default=RECIPES[0],
                   help="fast: AdamW + cosine over 60 epochs, summed-ELBO loss (default); long: "
                        "the same over 1,000 epochs (15x the time, better labels and NLL); "
                        "paper: SGD with momentum, batch 1024, lr 0.1 decayed per epoch, paper "
                        "loss form")
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
    g.add_argument("--split-seed", type=int,
                   help="seed of the validation split alone (default: --seed); sVAEs of several "
                        "seeds with one --split-seed hold out the same stars (docs/labels.md)")
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--amp", action="store_true", default=None, help="bfloat16 autocast on GPU")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm (0: off)")
    g.add_argument("--spike-clip", type=float,
                   help="bound each step's gradient norm at this many times the running mean "
                        "(default 5; 0: off; docs/model.md)")
    g.add_argument("--threads", type=int, help="CPU threads for torch")
    g.add_argument("--compile", action="store_true", default=None,
                   help="run the network through torch.compile")
    g.add_argument("--cuda-graph", action="store_true", default=None,
                   help="replay each training step as one captured CUDA graph (GPU, one "
                        "process)")
    g.add_argument("--mask-fraction", type=float,
                   help="train on spectra with about this share of their inputs masked at "
                        "random or at one end, so that the encoder learns partial spectra "
                        "(0: off, the default; docs/model.md)")
    g.add_argument("--label-weight", type=float,
                   help="with --labels: weight of the labels' likelihood in the loss "
                        "(default 50; docs/labels.md)")
    g.add_argument("--calibrate-epochs", type=int,
                   help="final epochs training only the scatter head on latent-mean "
                        "reconstructions (0: off)")
    a = p.add_argument_group("architecture (defaults: the chosen --arch)")
    a.add_argument("--arch", choices=("paper", "later"), default="paper",
                   help="paper: 80-50-30 GELU (the paper's Section 2.2); later: 90-70-50-30-10, "
                        "BatchNorm, sigmoid scatter")
    a.add_argument("--hidden", help="encoder widths, comma separated, e.g. 80,50,30")
    a.add_argument("--latent-dim", type=int)
    a.add_argument("--activation", choices=sorted(ACTIVATION_NAMES))
    a.add_argument("--norm", choices=NORMS)
    a.add_argument("--scatter-map", choices=SCATTER_MAPS)




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
    d.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch in all (default: the usable cores)")
    d.add_argument("--lanes", type=int, choices=(1, 2), default=0,
                   help="2: the labelled work in a second process beside the rest (the "
                        "default on a CPU of 2 cores or more); 1: one after the other")
    d.add_argument("--skip-paper-recipe", action="store_true",
                   help="do not also train the paper's SGD recipe for comparison")
    d.add_argument("--tune-encoder", type=float, default=0.0, metavar="LR",
                   help="the label model, and the same head on the unsupervised sVAE, each "
                        "also train a copy of their sVAE's encoder at this peak rate (e.g. "
                        "2e-3; docs/labels.md): better labels, for about a minute more on 2 "
                        "cores; default 0: the sVAEs' features as they are")
    _add_overwrite(d)
    d.set_defaults(func="demo")

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
    t.add_argument("--labels", help="label columns of the table, comma separated (e.g. "
                                    "teff,logg,fe_h,alpha_m): the latent learns them too, "
                                    "semi-supervised (docs/labels.md)")
    t.add_argument("--label-table", help="with --labels: take the label columns from this "
                                         "table (xpsvae labels pseudo) in place of the data's; "
                                         "its calibration stars' labels are left out")
    _add_training_options(t)
    _add_overwrite(t)
    t.set_defaults(func="train")

    e = sub.add_parser("encode", help="latents, reconstruction chi2 and anomaly score per star")
    e.add_argument("model", help="model directory")
    e.add_argument("data", help="table of spectra, or a store folder (encoded shard by shard)")
    e.add_argument("--out", required=True,
                   help="output Parquet file (a table) or folder of shards (a store)")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    _add_store_options(e)
    e.add_argument("--labels", help="a label model (xpsvae labels fit; builtin: the shipped "
                                    "one): add its labels, their errors and labels_ood")
    _add_overwrite(e)
    e.set_defaults(func="encode")

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
    _add_overwrite(g)
    g.set_defaults(func="generate")

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
    i.set_defaults(func="ingest")

    fx = sub.add_parser("flux", help="calibrated sampled flux from a store's coefficients "
                                     "(GaiaXPy's calibration, vectorised)")
    fx.add_argument("store", help="store folder from xpsvae ingest")
    fx.add_argument("--out", required=True, help="output Parquet: source_id, flux, flux_error")
    fx.add_argument("--grid", help="start,stop,step in nm (default: GaiaXPy's 336,1020,2)")
    fx.add_argument("--normalise", action="store_true",
                    help="divide flux and errors by phot_g_mean_flux (ready for training)")
    _add_overwrite(fx)
    fx.set_defaults(func="flux")

    pt = sub.add_parser("pretrained", help="train the model shipped with the package again "
                                           "(the long recipe on the whole embedded library)")
    pt.add_argument("--out", required=True, help="model directory")
    pt.add_argument("--labels", action="store_true",
                    help="the shipped label model instead: a label head of Teff, log g, [Fe/H] "
                         "and [alpha/M] on the shipped sVAE (docs/pretrained.md)")
    pt.add_argument("--threads", type=int, default=0)
    _add_overwrite(pt)
    pt.set_defaults(func="pretrained")

    n = sub.add_parser("info", help="what a store, encoded catalogue, model, Cannon, report or "
                                    "Parquet table holds (reads no spectra)")
    n.add_argument("path")
    n.add_argument("--json", action="store_true", help="the description as JSON")
    n.set_defaults(func="info")

    v = sub.add_parser("evaluate", help="metrics, figures and report of a model on held-out stars")
    v.add_argument("model", help="sVAE model directory")
    v.add_argument("data", help="held-out stars (labels teff, logg, fe_h for the tails)")
    v.add_argument("--cannon", help="a Cannon directory to compare with")
    v.add_argument("--out", required=True, help="report directory")
    v.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    v.add_argument("--labels", help="a label model (xpsvae labels fit) to score on the stars' "
                                    "own label columns: the report's labels section")
    v.add_argument("--include-training-stars", action="store_true",
                   help="keep the model's own training stars (left out by default: figures on "
                        "them are not held-out figures)")
    _add_overwrite(v)
    v.set_defaults(func="evaluate")

    lb = sub.add_parser("labels", help="stellar labels with calibrated uncertainties from an "
                                       "sVAE (docs/labels.md)")
    lsub = lb.add_subparsers(dest="labels_command", required=True)
    lf = lsub.add_parser("fit", help="fit a label model on the stars of a table that have labels")
    lf.add_argument("model", help="sVAE model directory (or builtin)")
    lf.add_argument("data", help="table of spectra with label columns (and <label>_err)")
    lf.add_argument("--labels", default="teff,logg,fe_h,alpha_m",
                    help="label columns, comma separated (default: teff,logg,fe_h,alpha_m)")
    lf.add_argument("--extra", default="",
                    help="side columns, comma separated; a-b is a difference, e.g. j-h,j-k")
    lf.add_argument("--members", type=int, default=4, help="MLPs in the ensemble")
    lf.add_argument("--epochs", type=int, default=40)
    lf.add_argument("--no-high-alpha", dest="high_alpha", action="store_false",
                    help="no high_alpha_prob: the head does not learn the high/low-alpha class "
                         "(learnt by default where the labels include fe_h and alpha_m)")
    lf.add_argument("--tune-encoder", type=float, default=0.0, metavar="LR",
                    help="each member also trains a copy of the sVAE's encoder, at this peak "
                         "rate (e.g. 2e-3): log g, [Fe/H] and [alpha/M] a few per cent "
                         "better, for about twice the time (docs/labels.md); default 0: the "
                         "sVAE's features as they are")
    lf.add_argument("--seed", type=int, default=0,
                    help="the heads' seed; the validation share is drawn from it among the "
                         "stars whose labels the sVAE did not learn (on the sVAE's own table: "
                         "the stars it held out, whatever the seed)")
    lf.add_argument("--threads", type=int, default=0)
    lf.add_argument("--out", required=True, help="label model directory")
    lf.add_argument("--device", default="cpu", help="where the sVAE runs")
    lf.add_argument("--label-table", help="take the label columns from this table (xpsvae "
                                          "labels pseudo): its pseudo-labels only train, its "
                                          "calibration stars are the validation share")
    _add_overwrite(lf)
    lf.set_defaults(func="labels_fit")
    lc = lsub.add_parser("combine", help="label models on sVAEs of other seeds, predicting "
                                         "together: their mean, and sigma with their spread")
    lc.add_argument("label_models", nargs="+", metavar="LABELS",
                    help="label model (or ensemble) directories, two or more in all")
    lc.add_argument("--out", required=True, help="the ensemble's directory")
    lc.add_argument("--calibrate", metavar="TABLE",
                    help="fit sigma's factor and the 68%% interval again for the ensemble, on "
                         "the labelled stars of this table that no member trained on (the "
                         "members' validation share, where they were fitted on it with one "
                         "--seed)")
    lc.add_argument("--device", default="cpu", help="where the sVAEs run (--calibrate)")
    _add_overwrite(lc)
    lc.set_defaults(func="labels_combine")
    ls = lsub.add_parser("pseudo", help="labels for the stars without, from a supervised MLP "
                                        "on the labelled ones: to train with few labels")
    ls.add_argument("data", help="table of spectra with label columns (and <label>_err), "
                                 "most stars without")
    ls.add_argument("--labels", default="teff,logg,fe_h,alpha_m",
                    help="label columns, comma separated (default: teff,logg,fe_h,alpha_m)")
    ls.add_argument("--extra", default="",
                    help="side columns, comma separated; a-b is a difference, e.g. j-h,j-k")
    ls.add_argument("--members", type=int, default=4, help="MLPs in the teacher's ensemble")
    ls.add_argument("--epochs", type=int,
                    help="the teacher's (default: 40 x 16,000 / labelled stars, 40 to 400)")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--threads", type=int, default=0)
    ls.add_argument("--out", required=True, help="output Parquet table of the labels")
    _add_overwrite(ls)
    ls.set_defaults(func="labels_pseudo")
    lp = lsub.add_parser("predict", help="labels, errors and the out-of-distribution flag")
    lp.add_argument("labels_model", help="label model directory (xpsvae labels fit), or "
                                         "builtin: the one shipped with the package")
    lp.add_argument("data", help="table of spectra, a store's shard, or a store folder "
                                 "(shard by shard: its catalogue, latents and labels)")
    lp.add_argument("--out", required=True,
                    help="output Parquet file (a table) or folder of shards (a store)")
    lp.add_argument("--device", default="cpu", help="where the sVAE runs")
    _add_store_options(lp)
    _add_overwrite(lp)
    lp.set_defaults(func="labels_predict")

    c = sub.add_parser("cannon", help="The Cannon: the supervised baseline")
    csub = c.add_subparsers(dest="cannon_command", required=True)
    cf = csub.add_parser("fit", help="fit on a table of spectra with label columns")
    cf.add_argument("data", help="table of spectra with label columns")
    cf.add_argument("--labels", default="teff,logg,fe_h", help="label columns, comma separated")
    cf.add_argument("--out", required=True, help="Cannon directory")
    cf.add_argument("--scatter-method", choices=("ml", "thecannon"), default="ml",
                    help="ml: exact maximum likelihood; thecannon: TheCannon 0.7.3's grid search "
                         "(reproduces that package's scatters, a few per cent higher)")
    _add_overwrite(cf)
    cf.set_defaults(func="cannon_fit")
    cp = csub.add_parser("predict", help="spectra from labels")
    cp.add_argument("cannon", help="Cannon directory")
    cp.add_argument("labels_table", help="Parquet / FITS / HDF5 table with the label columns")
    cp.add_argument("--out", required=True, help="output Parquet file")
    _add_overwrite(cp)
    cp.set_defaults(func="cannon_predict")
    ci = csub.add_parser("infer", help="labels from spectra (the Cannon's test step)")
    ci.add_argument("cannon", help="Cannon directory")
    ci.add_argument("data", help="table of spectra")
    ci.add_argument("--out", required=True, help="output Parquet file")
    _add_overwrite(ci)
    ci.set_defaults(func="cannon_infer")
    return p


