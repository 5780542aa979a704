"""A command's arguments checked before any data is read, and the recipe they give.

Every check raises the one-line error :func:`xpsvae.cli.app.main` prints: a
device that is not there, a bad training option, ``--resume`` with another
recipe, an output that exists without ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Optional

from safetensors import safe_open

from ..core.files import (
    CANNON_CONFIG_FILE,
    CANNON_WEIGHTS_FILE,
    CHECKPOINT_NAME,
    CONFIG_FILE,
    DATA_ACCOUNTING_FILE,
    HISTORY_NAME,
    LABEL_ENSEMBLE_FILE,
    LABEL_HEAD_CONFIG,
    LABEL_HEAD_WEIGHTS,
    LABEL_SVAE_FOLDER,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_FILE,
    TRAINING_STARS_FILE,
)
from ..model.recipe import TrainConfig
from .parser import TRAIN_OPTIONS

if TYPE_CHECKING:
    from ..model.network import SVAEConfig


def train_config(args) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    for flag in ("amp", "compile", "cuda_graph"):
        if getattr(args, flag):
            overrides[flag] = True
    return TrainConfig.preset(args.recipe, **overrides)


def model_config(args, input_dim: int) -> SVAEConfig:
    from ..model.network import SVAEConfig  # PyTorch: only here
    d = SVAEConfig.preset(args.arch, input_dim).to_dict()
    if args.hidden:
        d["hidden"] = [int(h) for h in args.hidden.split(",")]
    for key in ("latent_dim", "activation", "norm", "scatter_map"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    return SVAEConfig.from_dict(d)


def _resume_config(args, out_dir: str) -> TrainConfig:
    """On --resume, the saved recipe with only the options given now that may change; an
    option of the recipe given with another value than the run's is refused."""
    with open(os.path.join(out_dir, CONFIG_FILE)) as f:
        saved = TrainConfig.from_dict(json.load(f)["training"]).to_dict()
    for key in TRAIN_OPTIONS:
        given = getattr(args, key)
        if key not in ("epochs", "device", "threads") and given is not None \
                and given != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{out_dir}: --resume continues the run as it was started, with "
                             f"{flag} {saved[key]}, not {given}: leave {flag} out, or train "
                             "anew with --overwrite")
    done = _epochs_done(out_dir)
    if args.epochs is not None and args.epochs != saved["epochs"] and \
            done > saved["epochs"] and args.epochs <= done:
        raise ValueError(
            f"{out_dir}: the run has trained {saved['epochs']} epochs and calibrated the "
            f"scatter head for {done - saved['epochs']}; --epochs {args.epochs} would add "
            "calibration epochs only, not the training it says: give more than "
            f"{done} to train on after the calibration, or train anew with --overwrite "
            f"--epochs {args.epochs}")
    for key in ("epochs", "device", "threads"):
        if getattr(args, key) is not None:
            saved[key] = getattr(args, key)
    for flag in ("amp", "cuda_graph"):
        if getattr(args, flag):
            saved[flag] = True
    return TrainConfig.from_dict(saved)


def _epochs_done(out_dir: str) -> int:
    """Epochs a run's checkpoint holds (0 without one)."""
    path = os.path.join(out_dir, CHECKPOINT_NAME)
    if not os.path.exists(path):
        return 0
    try:
        with safe_open(path, framework="numpy") as f:
            return int(json.loads(f.metadata()["xpsvae_checkpoint"])["epoch"])
    except Exception:  # safetensors' own error type: a cut file, told when it is loaded
        return 0


# --------------------------------------------------------------------------- checks
# Run by main() before a command reads anything, so that a bad argument costs nothing.

#: Files or folders xpsvae writes that mark a model folder's own files.
_MODEL_FILES = (CONFIG_FILE, MODEL_FILE, CHECKPOINT_NAME, HISTORY_NAME, DATA_ACCOUNTING_FILE,
                TRAINING_STARS_FILE)


def check_arguments(args) -> None:
    """Refuse, before any data is read: a device that is not there, a training option out
    of range, a resume that would change the run, and an output that would replace one
    already there (unless --overwrite)."""
    if _encodes_a_store(args) and args.device not in ("cpu",):
        raise ValueError(f"--device {args.device}: a store is encoded on the CPU, shard by "
                         "shard, one thread each, so that every machine gives the same "
                         "numbers; use --scheduler local (or a Dask scheduler) for more "
                         "processes")
    _check_device(getattr(args, "device", None))
    _check_label_table(args)
    if args.func == "train":
        args.train_config = _resume_config(args, args.out) if resuming(args) \
            else train_config(args)  # its own checks raise here, before the data is read
        _check_device(args.train_config.device)
    _check_output(args)


def _check_label_table(args) -> None:
    path = getattr(args, "label_table", None)
    if path is None:
        return
    if args.func == "train" and not args.labels:
        raise ValueError(f"--label-table {path}: give --labels too, the columns to learn")
    if args.func == "train" and (args.streaming or args.resident):
        raise ValueError("--label-table joins labels to a table in memory; --streaming and "
                         "--resident read a store, which holds no labels")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--label-table {path}: no such file; make it with xpsvae "
                                "labels pseudo")


def _encodes_a_store(args) -> bool:
    """``encode`` or ``labels predict`` of a store folder: shard by shard, into a folder."""
    return args.func in ("encode", "labels_predict") and os.path.isdir(args.data)


def resuming(args) -> bool:
    return args.resume and os.path.exists(os.path.join(args.out, CONFIG_FILE))


def _check_device(name: Optional[str]) -> None:
    if name in (None, "cpu", "auto"):
        return
    import torch  # the commands that take a device run PyTorch anyway
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name}: not a device; give cpu, cuda, cuda:N or "
                         "auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: PyTorch sees no CUDA device on this machine; "
                         "use --device cpu (or auto, which takes a GPU where there is one)")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                         "CUDA devices")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: xpsvae runs on cpu or cuda")


def _check_output(args) -> None:
    out = getattr(args, "out", None)
    if out is None or args.func in ("ingest", "info"):
        return  # ingest adds to a store by design; info writes nothing
    if _encodes_a_store(args):
        return  # an encoded store's folder is picked up where it stopped
    shipped_labels = args.func == "pretrained" and args.labels  # a label model's folder
    if args.func in ("train", "pretrained") and not shipped_labels:
        taken = [n for n in _MODEL_FILES if os.path.exists(os.path.join(out, n))]
        if getattr(args, "resume", False):
            return
        way = "add --resume to continue its run, or --overwrite to train anew" \
            if args.func == "train" else "add --overwrite to train it anew"
    elif args.func in ("demo", "evaluate"):
        taken = [n for n in (METRICS_FILE, REPORT_FILE) if os.path.exists(os.path.join(out, n))]
        way = "add --overwrite to replace it, or give another --out"
    elif args.func == "labels_combine":
        if os.path.isfile(out):
            raise NotADirectoryError(f"{out}: a file; --out takes a folder for the ensemble")
        taken = [out] if os.path.isdir(out) and os.listdir(out) else []
        if taken and not os.path.exists(os.path.join(out, LABEL_ENSEMBLE_FILE)):
            raise FileExistsError(f"{out}: a folder that holds other files than a label "
                                  "ensemble; give a new --out")
        way = "add --overwrite to replace it, or give another --out"
    elif args.func in ("cannon_fit", "labels_fit") or shipped_labels:
        names = (CANNON_CONFIG_FILE, CANNON_WEIGHTS_FILE) if args.func == "cannon_fit" \
            else (LABEL_HEAD_CONFIG, LABEL_HEAD_WEIGHTS, LABEL_SVAE_FOLDER)
        taken = [n for n in names if os.path.exists(os.path.join(out, n))]
        way = "add --overwrite to replace it, or give another --out"
    else:
        taken = [out] if os.path.exists(out) else []
        way = "add --overwrite to replace it, or give another --out"
        if os.path.isdir(out):
            raise IsADirectoryError(f"{out}: a folder; --out takes a file here")
    if not taken:
        return
    if not args.overwrite:
        what = "a model" if args.func in ("train", "pretrained") else ", ".join(os.path.basename(t)
                                                                for t in taken)
        raise FileExistsError(f"{out}: holds {what} already; {way}")


def clear_old_run(args) -> None:
    """On --overwrite, the old run's files go just before the new run starts (not when the
    arguments are checked: a command that fails before then leaves the old model whole), so
    that nothing of it is kept or resumed from."""
    if not args.overwrite or getattr(args, "resume", False) or \
            int(os.environ.get("RANK", "0")) != 0:
        return
    if args.func == "labels_combine":  # a label ensemble's folder (_check_output)
        shutil.rmtree(args.out, ignore_errors=True)
        return
    if args.func == "labels_fit" or (args.func == "pretrained" and args.labels):
        shutil.rmtree(os.path.join(args.out, LABEL_SVAE_FOLDER), ignore_errors=True)
        return  # the head's two files are replaced whole when written
    for name in _MODEL_FILES:
        try:
            os.remove(os.path.join(args.out, name))
        except FileNotFoundError:
            pass


