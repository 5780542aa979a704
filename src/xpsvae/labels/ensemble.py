"""Label models on several sVAEs, their predictions averaged: :class:`LabelEnsemble`.

A label model's ensemble of heads reads one sVAE: how far its labels would move on an
sVAE trained from another seed, its sigma does not know. Several label models, each on
its own sVAE (the same recipe and stars, another ``--seed``), give that spread. Per
star and label, with member ``i`` predicting ``mu_i`` and ``sigma_i``::

    mu      = mean_i mu_i
    sigma^2 = mean_i sigma_i^2 + mean_i (mu_i - mu)^2     (the members' mixture)
    k       = mean_i k_i,  interval mu -+ k sigma          (k_i: each member's own)

``high_alpha_prob`` is the members' mean, and ``high_alpha_prior`` (call a star high-alpha above
it) the mean of theirs. ``labels_ood`` is set where any member flags the star, and
``<label>_extrapolated`` where any member marks it. Nothing is fitted again: each
member keeps its own calibration. How much better the labels and their sigma get:
docs/labels.md, "Several sVAEs together".

The folder holds ``ensemble.json`` (the members' folder names, the labels) and each
member's label model folder, ``member_0/``, ``member_1/``, ... Latents and the flag's
scores of a catalogue (``xpsvae encode --labels``) are the first member's sVAE's.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from ..core.errors import ModelFileError
from ..core.files import BUILTIN_LABEL_MODEL_DIR, LABEL_SVAE_FOLDER, atomic_path, model_folder
from ..core.files import LABEL_ENSEMBLE_FILE as ENSEMBLE_FILE
from ..io.spectra import SpectraSet
from .classes import HIGH_ALPHA_COLUMN
from .model import EXTRAPOLATED, LabelModel

#: ``format`` in the file that makes a folder a label ensemble.
ENSEMBLE_FORMAT = "xpsvae label ensemble"


class LabelEnsemble:
    """Label models, each on its own sVAE, predicting together (module docstring).

    Example:
        >>> from xpsvae.labels import LabelEnsemble, LabelModel
        >>> ensemble = LabelEnsemble([LabelModel.load("labels_seed0"),
        ...                           LabelModel.load("labels_seed1")])
        >>> ensemble.save("labels_both")
        >>> table = ensemble.predict(stars)  # the columns of LabelModel.predict
    """

    def __init__(self, members: Sequence[LabelModel], names: Sequence[str] = ()):
        """``members``: two or more label models with the same labels, in the same order
        (``names``: where each came from, for messages)."""
        self.members = list(members)
        names = list(names) or [f"member {i}" for i in range(len(self.members))]
        if len(self.members) < 2:
            raise ValueError(f"a label ensemble needs two label models or more; got "
                             f"{len(self.members)}")
        first = self.members[0]
        for name, member in zip(names[1:], self.members[1:]):
            if member.labels != first.labels:
                raise ValueError(f"{name}: labels {member.labels}, where {names[0]} has "
                                 f"{first.labels}; an ensemble's members predict the same "
                                 "labels, in the same order")
            if (member.classifier is None) != (first.classifier is None):
                raise ValueError(f"{name}: {'no ' if member.classifier is None else ''}"
                                 f"high_alpha_prob, where {names[0]} has "
                                 f"{'none' if first.classifier is None else 'one'}; refit "
                                 "one of them with or without --no-high-alpha")
        self.labels = list(first.labels)
        for i, j in _same_svae(self.members):
            warnings.warn(f"{names[i]} and {names[j]} read the same sVAE: their spread holds "
                          "their heads' alone; an ensemble gains where each member has an "
                          "sVAE of its own seed", stacklevel=2)

    @property
    def svae(self):
        """The first member's sVAE: the latents of a catalogue with these labels."""
        return self.members[0].svae

    @property
    def high_alpha_prior(self) -> Optional[float]:
        """Call a star high-alpha where ``high_alpha_prob`` exceeds this: the mean of the
        members' priors (None without the class)."""
        if self.members[0].classifier is None:
            return None
        return float(np.mean([m.high_alpha_prior for m in self.members]))

    def columns(self) -> List[str]:
        """The columns :meth:`predict` adds to ``source_id`` and ``input_row``: those every
        member gives."""
        shared = set.intersection(*(set(m.columns()) for m in self.members))
        return [c for c in self.members[0].columns() if c in shared]

    def predict(self, spectra: SpectraSet, device: str = "cpu",
                scores: Optional[Dict[str, np.ndarray]] = None) -> pd.DataFrame:
        """:meth:`LabelModel.predict`'s columns, combined over the members (module
        docstring). ``scores``: the first member's sVAE's :meth:`SVAE.score` of the same
        stars, where the caller has it (a catalogue)."""
        tables = [m.predict(spectra, device, scores if i == 0 else None)
                  for i, m in enumerate(self.members)]
        return combine_tables(tables, self.labels, self.columns())

    def save(self, directory: str) -> None:
        """The folder (module docstring), written whole or not at all; ``directory``
        must not exist, or be empty."""
        if os.path.isdir(directory) and not os.listdir(directory):
            os.rmdir(directory)
        elif os.path.lexists(directory):
            raise FileExistsError(f"{directory}: exists; a label ensemble is written to a "
                                  "new folder (remove it, or --overwrite)")
        shutil.rmtree(directory + ".tmp", ignore_errors=True)  # a run that crashed
        names = [f"member_{i}" for i in range(len(self.members))]
        with atomic_path(directory) as tmp:
            os.makedirs(tmp)
            for name, member in zip(names, self.members):
                member.save(os.path.join(tmp, name))
            with open(os.path.join(tmp, ENSEMBLE_FILE), "w") as f:
                json.dump({"format": ENSEMBLE_FORMAT, "members": names,
                           "labels": self.labels}, f, indent=1)

    @classmethod
    def load(cls, directory: str) -> "LabelEnsemble":
        """A folder :meth:`save` wrote."""
        names = _member_names(directory)
        return cls([LabelModel.load(os.path.join(directory, n)) for n in names],
                   [os.path.join(directory, n) for n in names])

    @classmethod
    def combine(cls, directories: Sequence[str]) -> "LabelEnsemble":
        """The label models (or ensembles: their members join) in ``directories``."""
        members, names = [], []
        for directory in directories:
            loaded = load_labels(directory)
            inner = loaded.members if isinstance(loaded, LabelEnsemble) else [loaded]
            members += inner
            names += [directory] * len(inner)
        return cls(members, names)


def _same_svae(members: Sequence[LabelModel]) -> List[Tuple[int, int]]:
    """Pairs of members whose sVAEs have the same weights."""
    return [(i, j) for i in range(len(members)) for j in range(i + 1, len(members))
            if members[i].svae.network.same_weights(members[j].svae.network)]


def _member_names(directory: str) -> List[str]:
    """The members' folder names in an ensemble's ``ensemble.json``, each checked to be a
    folder inside ``directory``."""
    path = os.path.join(directory, ENSEMBLE_FILE)
    try:
        with open(path) as f:
            names = [str(n) for n in json.load(f)["members"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: not a label ensemble's file ({e}); write one with "
                             "xpsvae labels combine") from e
    for name in names:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ModelFileError(f"{path}: member {name!r} is not a folder name inside "
                                 f"{directory}")
    if not names:
        raise ModelFileError(f"{path}: no members; write one with xpsvae labels combine")
    return names


def load_labels(directory: str) -> Union[LabelModel, LabelEnsemble]:
    """A label model folder, a label ensemble folder, or ``builtin``."""
    directory = model_folder(directory, BUILTIN_LABEL_MODEL_DIR)
    if is_ensemble(directory):
        return LabelEnsemble.load(directory)
    return LabelModel.load(directory)


def is_ensemble(directory: str) -> bool:
    """Whether ``directory`` is a label ensemble's folder."""
    return os.path.exists(os.path.join(directory, ENSEMBLE_FILE))


def label_svae_folder(directory: str) -> str:
    """The sVAE folder of a label model's folder, or of an ensemble's first member: the
    sVAE whose latents a catalogue with its labels holds."""
    if is_ensemble(directory):
        return os.path.join(directory, _member_names(directory)[0], LABEL_SVAE_FOLDER)
    return os.path.join(directory, LABEL_SVAE_FOLDER)


def combine_tables(tables: Sequence[pd.DataFrame], labels: Sequence[str],
                   columns: Sequence[str]) -> pd.DataFrame:
    """The members' :meth:`LabelModel.predict` tables (same stars, same order) as one
    (module docstring); ``columns``: those to give."""
    first = tables[0]
    out = {"source_id": first["source_id"].to_numpy(),
           "input_row": first["input_row"].to_numpy()}
    for name in labels:
        mu = np.column_stack([t[name].to_numpy(np.float64) for t in tables])
        sigma = np.column_stack([t[f"{name}_err"].to_numpy(np.float64) for t in tables])
        mean = mu.mean(axis=1)
        err = np.sqrt((sigma ** 2).mean(axis=1) + ((mu - mean[:, None]) ** 2).mean(axis=1))
        out[name], out[f"{name}_err"] = mean, err
        if f"{name}_lower" in columns:
            k = np.column_stack([(t[f"{name}_upper"].to_numpy(np.float64) - t[name].to_numpy(
                np.float64)) / t[f"{name}_err"].to_numpy(np.float64) for t in tables])
            half = np.nanmean(k, axis=1) * err
            out[f"{name}_lower"], out[f"{name}_upper"] = mean - half, mean + half
        if f"{name}{EXTRAPOLATED}" in columns:
            out[f"{name}{EXTRAPOLATED}"] = np.any(
                [t[f"{name}{EXTRAPOLATED}"].to_numpy(bool) for t in tables], axis=0)
    if HIGH_ALPHA_COLUMN in columns:
        out[HIGH_ALPHA_COLUMN] = np.mean([t[HIGH_ALPHA_COLUMN].to_numpy(np.float64)
                                          for t in tables], axis=0)
    out["labels_ood"] = np.any([t["labels_ood"].to_numpy(bool) for t in tables], axis=0)
    return pd.DataFrame({c: out[c] for c in ["source_id", "input_row", *columns]})
