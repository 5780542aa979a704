"""A model folder's files: ``config.json``, ``model.safetensors``, ``history.csv`` and the
training stars.

Only JSON and safetensors are read; nothing is unpickled. Each reader refuses a
missing, cut or mismatched file with a :class:`~xpsvae.core.errors.ModelFileError`
that names the file and the way out.

``training_stars.safetensors`` holds the sorted source_ids of the stars a model
was fitted on (training and validation), so that an evaluation can leave them
out: figures on a model's own training stars are not held-out figures.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from ..core.constants import VERSION
from ..core.errors import ModelFileError
from ..core.files import CONFIG_FILE, HISTORY_NAME, MODEL_FILE, TRAINING_STARS_FILE, atomic_path
from .network import SVAEConfig
from .preprocess import Standardizer
from .recipe import TrainConfig

#: The model folder's format; a reader refuses any other.
FORMAT_VERSION = 1
#: The most training stars recorded by their source_id (8 bytes each: 40 MB). A model
#: fitted on more records their count alone.
MAX_RECORDED_STARS = 5_000_000
#: training_stars.safetensors' array of the stars held out (folders from before: none)
_HELD_OUT = "held_out_source_id"


def check_resumable(directory: str, train_config, data_description: dict,
                    resumable: Sequence[str], labels: Sequence[str] = ()) -> dict:
    """The saved ``config.json`` of a run to resume, once it is shown to be the same run:
    the same recipe but for the ``resumable`` options, the same data and labels."""
    saved = read_config(directory)
    old = type(train_config).from_dict(saved["training"])
    changed = {k: (getattr(old, k), getattr(train_config, k)) for k in old.to_dict()
               if k not in resumable and getattr(old, k) != getattr(train_config, k)}
    if changed:
        raise ValueError(f"{directory}: cannot resume with a different recipe; changed options "
                         f"(saved, now): {changed}. Only {tuple(resumable)} may change.")
    old_data = saved["info"]["data"]
    if (old_data["n_stars"], old_data["checksum"]) != (data_description["n_stars"],
                                                       data_description["checksum"]):
        raise ValueError(f"{directory}: the run was started on other data "
                         f"({old_data['n_stars']} stars from {old_data['source']}); resume "
                         "needs the same data")
    saved_labels = tuple(saved["model"].get("labels", ()))
    if labels and tuple(labels) != saved_labels:
        raise ValueError(f"{directory}: the run was started with labels {list(saved_labels)}, "
                         f"not {list(labels)}; resume with the same labels")
    return saved


def read_config(directory: str) -> dict:
    """``config.json`` of a model folder, its format version checked."""
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: missing; is {directory!r} a model directory?")
    try:
        with open(path) as f:
            saved = json.load(f)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from exc
    version = saved.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path}: model format version {version!r}; this xpsvae "
                             f"({VERSION}) reads version {FORMAT_VERSION}")
    return saved


def read_parts(directory: str) -> Tuple[SVAEConfig, TrainConfig, Standardizer, dict]:
    """A model folder's architecture, training recipe, standardisation and ``info`` (the
    data description), read from ``config.json`` and checked against each other."""
    saved = read_config(directory)
    try:
        config = SVAEConfig.from_dict(saved["model"])
        standardizer = Standardizer.from_dict(saved["preprocessing"])
        train_config = TrainConfig.from_dict(saved.get("training", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{os.path.join(directory, CONFIG_FILE)}: invalid ({exc})") from exc
    if standardizer.n_inputs != config.input_dim:
        raise ModelFileError(f"{directory}: standardisation has {standardizer.n_inputs} inputs, "
                             f"the architecture {config.input_dim}")
    return config, train_config, standardizer, saved.get("info", {})


def write_history(directory: str, history: List[dict], keep: bool = False) -> None:
    """``history.csv``, one row per epoch (the first epoch's columns), written atomically;
    ``keep``: not where the folder has one already (the run wrote it)."""
    path = os.path.join(directory, HISTORY_NAME)
    if not history or (keep and os.path.exists(path)):
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0].keys()))
        writer.writeheader()
        writer.writerows(history)


def read_history(directory: str) -> List[dict]:
    """``history.csv`` as one dict per epoch ([] where the folder has none)."""
    path = os.path.join(directory, HISTORY_NAME)
    return pd.read_csv(path).to_dict("records") if os.path.exists(path) else []


def write_weights(directory: str, state: Dict[str, torch.Tensor]) -> None:
    """``model.safetensors``, written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(os.path.join(directory, MODEL_FILE)) as tmp:
        save_file(state, tmp, metadata={"format_version": str(FORMAT_VERSION)})


def read_weights(directory: str, expected: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``model.safetensors``, each tensor checked against ``expected``'s names and shapes."""
    path = os.path.join(directory, MODEL_FILE)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: missing")
    try:
        weights = load_file(path)
    except Exception as exc:  # safetensors' own error type: a cut or garbled file
        raise ModelFileError(f"{path}: not a readable safetensors file ({exc}); it was cut or "
                             "damaged: train the model again, or copy it whole") from None
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{path}: weights do not fit the architecture in {CONFIG_FILE}; "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise ModelFileError(f"{path}: tensor {name!r} has shape "
                                 f"{tuple(weights[name].shape)}, the architecture in "
                                 f"{CONFIG_FILE} needs {tuple(tensor.shape)}")
    return weights


def training_stars_record(source_id: Optional[np.ndarray], held_out: Optional[np.ndarray] = None
                          ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The sorted, unique source_ids to record for a fit on ``source_id``, and of those the
    ones it held out (``held_out``, bool per star: its validation share and any stars whose
    labels it did not learn; None: not known): a Gaia source with a copy among the
    training stars is not held out. (None, None) when there are none to record (no ids
    given, or more than :data:`MAX_RECORDED_STARS`)."""
    if source_id is None or len(source_id) > MAX_RECORDED_STARS:
        return None, None
    ids = np.asarray(source_id, dtype=np.int64)
    if held_out is None:
        return np.unique(ids), None
    held_out = np.asarray(held_out, dtype=bool)
    return np.unique(ids), np.setdiff1d(ids[held_out], ids[~held_out])


def write_training_stars(directory: str, source_id: np.ndarray,
                         held_out: Optional[np.ndarray] = None) -> None:
    """``training_stars.safetensors``, written atomically: the stars' source_ids, and those
    held out for validation where known."""
    arrays = {"source_id": np.ascontiguousarray(source_id, dtype=np.int64)}
    if held_out is not None:
        arrays[_HELD_OUT] = np.ascontiguousarray(held_out, dtype=np.int64)
    with atomic_path(os.path.join(directory, TRAINING_STARS_FILE)) as tmp:
        save_numpy(arrays, tmp)


def read_training_stars(directory: str) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """The recorded training stars' sorted source_ids and, of those, the ones held out for
    validation: None for either where the folder does not record it."""
    path = os.path.join(directory, TRAINING_STARS_FILE)
    if not os.path.exists(path):
        return None, None
    try:
        arrays = load_numpy(path)
        ids, held_out = arrays["source_id"], arrays.get(_HELD_OUT)
    except (SafetensorError, KeyError, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable record of the training stars ({exc}); "
                             "copy the model folder whole, or delete this file (evaluations "
                             "then cannot tell which stars it was trained on)") from None
    if held_out is not None and not np.isin(held_out, ids).all():
        raise ModelFileError(f"{path}: {_HELD_OUT} holds stars that source_id does not; copy "
                             "the model folder whole, or delete this file")
    return ids, held_out
