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
``<label>_extrapolated`` where any member marks it. Each member keeps its own
calibration, and nothing is fitted again, unless :meth:`LabelEnsemble.calibrate` is given
labelled stars that no member trained on (their validation share, or stars none saw):
then sigma's factor and the interval's k of :mod:`xpsvae.labels.calibration` are fitted
again for the ensemble, on those stars, on top of the mixture above. That matters for the
interval: the mean of several members is nearer the truth than each, which the members'
k cannot know (uncalibrated, the demo's three-seed ensemble's 68% interval holds 70-73% of
the test stars). How much better the labels and their sigma get: docs/labels.md, "Several
sVAEs together".

The folder holds ``ensemble.json`` (the members' folder names, the labels, and what the
calibration was fitted on), ``ensemble.safetensors`` (that calibration's weights, where
it has one) and each member's label model folder, ``member_0/``, ``member_1/``, ...
Latents and the flag's scores of a catalogue (``xpsvae encode --labels``) are the first
member's sVAE's.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from ..core.errors import ModelFileError, SpectraError
from ..core.files import BUILTIN_LABEL_MODEL_DIR, LABEL_SVAE_FOLDER, atomic_path, model_folder
from ..core.files import LABEL_ENSEMBLE_FILE as ENSEMBLE_FILE
from ..core.files import LABEL_ENSEMBLE_WEIGHTS as ENSEMBLE_WEIGHTS
from ..io.spectra import ROW_NUMBER_IDS_NOTE, SpectraSet
from ..model.supervision import label_columns
from .calibration import IntervalScale, SigmaScale, residuals, within_interval
from .classes import HIGH_ALPHA_COLUMN
from .model import EXTRAPOLATED, LabelModel
from .pseudo import surveyed
from .validation import learnt_by

#: ``format`` in the file that makes a folder a label ensemble.
ENSEMBLE_FORMAT = "xpsvae label ensemble"
#: Fewer stars with a label than this to calibrate an ensemble on: refused. The 68%
#: interval's share on n stars has a standard error of sqrt(0.68 x 0.32 / n): 4.7 points
#: at 100, about the over-cover it is there to remove; 1.4 points at 1,000.
MIN_CALIBRATION_STARS = 100


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
        self.names = names
        #: sigma's factor and k fitted for the ensemble (:meth:`calibrate`); None: the
        #: members' own
        self.calibration: Optional[EnsembleCalibration] = None
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
        table = self._mixture(spectra, device, scores)
        if self.calibration is not None:
            self.calibration.apply(table, self.labels)
        return table

    def _mixture(self, spectra: SpectraSet, device: str = "cpu",
                 scores: Optional[Dict[str, np.ndarray]] = None) -> pd.DataFrame:
        """The members' tables combined, each member's calibration its own."""
        tables = [m.predict(spectra, device, scores if i == 0 else None)
                  for i, m in enumerate(self.members)]
        return combine_tables(tables, self.labels, self.columns())

    def calibrate(self, spectra: SpectraSet, device: str = "cpu") -> Dict[str, object]:
        """Fit sigma's factor and the interval's k for the ensemble (module docstring) on
        the stars of ``spectra`` with a survey label (not a pseudo-label) that no member
        trained on: those a member was fitted on count only if it held them out to
        calibrate, and none whose labels a member's sVAE learnt
        (:func:`~xpsvae.labels.validation.learnt_by`). Members fitted on one table, on
        sVAEs trained on it with one ``split_seed``, hold out the same stars (on sVAEs
        that learnt no labels: with one ``seed`` of :class:`LabelHeadConfig`); other
        labelled stars that none of them saw serve as well. Returns what it was fitted on and, per
        label on those stars, std z and the share in the interval before and after."""
        source = spectra.accounting.source if spectra.accounting else "the stars given"
        table = spectra.labels if spectra.labels is not None else pd.DataFrame(index=range(0))
        missing = [name for name in self.labels if name not in table]
        if missing:
            raise SpectraError(f"{source}: no label column {missing[0]!r} to calibrate the "
                               f"ensemble on; columns present: {sorted(table.columns)[:20]}")
        y, y_err = label_columns(table, self.labels)
        usable = np.isfinite(y).any(axis=1) & spectra.observed.all(axis=1) & \
            surveyed(table, self.labels, len(y), source)
        info: Dict[str, object] = {"source": source, "stars_read": len(y),
                                   "with_survey_label": int(usable.sum()), "trained_on": {}}
        if spectra.accounting and ROW_NUMBER_IDS_NOTE in spectra.accounting.notes:
            warnings.warn(f"{source}: no source_id column, so its stars are told from the "
                          "members' training stars by row number alone: right only for the "
                          "table they were fitted on; give the table a source_id column",
                          stacklevel=2)
        trained_by_any = np.zeros(len(y), dtype=bool)
        for name, member in zip(self.names, self.members):
            learnt = learnt_by(member.svae, spectra)  # by its sVAE (None: not recorded)
            trained = np.zeros(len(y), dtype=bool) if learnt is None else learnt
            if member.fitted is None:
                warnings.warn(f"{name} does not record which stars it was fitted on (a "
                              f"label model from before): calibrate on stars it never saw",
                              stacklevel=2)
            else:
                ids, held_out = member.fitted
                trained = trained | np.isin(spectra.source_id, ids[~held_out])
            info["trained_on"][name] = int((usable & trained).sum())
            trained_by_any |= usable & trained
        usable &= ~trained_by_any
        counts = np.isfinite(y[usable]).sum(axis=0)
        if counts.min() < MIN_CALIBRATION_STARS:
            short = self.labels[int(np.argmin(counts))]
            raise SpectraError(
                f"{source}: {int(counts.min())} stars with {short} that no member trained on; "
                f"calibrating the ensemble takes {MIN_CALIBRATION_STARS} (set aside as a "
                f"member's training stars, or its sVAE's: {info['trained_on']}). Label "
                "models fitted on one table, on sVAEs trained on it with one --split-seed, "
                "hold out the same stars; or give labelled stars none of them learnt")
        before = self._mixture(spectra.subset(np.flatnonzero(usable)), device)
        calibration = EnsembleCalibration.fit(before, self.labels, y[usable], y_err[usable],
                                              self.columns())
        info["stars"] = {name: int(c) for name, c in zip(self.labels, counts)}
        after = before.copy()
        calibration.apply(after, self.labels)
        info["labels"] = {name: {"std_z": [_std_z(t, name, y[usable, j], y_err[usable, j])
                                           for t in (before, after)],
                                 "in_interval": [_inside(t, name, y[usable, j], y_err[usable, j])
                                                 for t in (before, after)]}
                          for j, name in enumerate(self.labels)}
        calibration.info = {k: info[k] for k in ("source", "stars", "trained_on")}
        self.calibration = calibration
        return info

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
            meta = {"format": ENSEMBLE_FORMAT, "members": names, "labels": self.labels}
            if self.calibration is not None:
                meta["calibration"] = self.calibration.meta()
                save_file(self.calibration.arrays(), os.path.join(tmp, ENSEMBLE_WEIGHTS))
            with open(os.path.join(tmp, ENSEMBLE_FILE), "w") as f:
                json.dump(meta, f, indent=1)

    @classmethod
    def load(cls, directory: str) -> "LabelEnsemble":
        """A folder :meth:`save` wrote."""
        meta = _ensemble_meta(directory)
        paths = [os.path.join(directory, n) for n in meta["members"]]
        out = cls([LabelModel.load(p) for p in paths], paths)
        if "calibration" in meta:
            out.calibration = EnsembleCalibration.load(directory, meta["calibration"],
                                                       out.labels)
        return out

    @classmethod
    def combine(cls, directories: Sequence[str]) -> "LabelEnsemble":
        """The label models (or ensembles: their members join) in ``directories``."""
        members, names = [], []
        for directory in directories:
            loaded = load_labels(directory)
            inner = loaded.members if isinstance(loaded, LabelEnsemble) else [loaded]
            if isinstance(loaded, LabelEnsemble) and loaded.calibration is not None:
                warnings.warn(f"{directory}: its calibration is not carried into the new "
                              "ensemble, whose members differ; calibrate it again (xpsvae "
                              "labels combine --calibrate)", stacklevel=2)
            members += inner
            names += [directory] * len(inner)
        return cls(members, names)


def _same_svae(members: Sequence[LabelModel]) -> List[Tuple[int, int]]:
    """Pairs of members whose sVAEs have the same weights."""
    return [(i, j) for i in range(len(members)) for j in range(i + 1, len(members))
            if members[i].svae.network.same_weights(members[j].svae.network)]


def _ensemble_meta(directory: str) -> dict:
    """An ensemble's ``ensemble.json``, its members' folder names checked to be folders
    inside ``directory``."""
    path = os.path.join(directory, ENSEMBLE_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
        meta["members"] = [str(n) for n in meta["members"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: not a label ensemble's file ({e}); write one with "
                             "xpsvae labels combine") from e
    for name in meta["members"]:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ModelFileError(f"{path}: member {name!r} is not a folder name inside "
                                 f"{directory}")
    if not meta["members"]:
        raise ModelFileError(f"{path}: no members; write one with xpsvae labels combine")
    return meta


def _member_names(directory: str) -> List[str]:
    return _ensemble_meta(directory)["members"]


class EnsembleCalibration:
    """Sigma's factor and the interval's k of :mod:`xpsvae.labels.calibration`, fitted on
    the ensemble's mixture (:meth:`LabelEnsemble.calibrate`), in label units standardised
    by ``label_mean`` and ``label_std`` (those of the stars it was fitted on)."""

    def __init__(self, label_mean: np.ndarray, label_std: np.ndarray, scale: SigmaScale,
                 interval: Optional[IntervalScale], info: Optional[dict] = None):
        self.label_mean, self.label_std = label_mean, label_std
        self.scale, self.interval = scale, interval
        self.info = info or {}

    @classmethod
    def fit(cls, table: pd.DataFrame, labels: Sequence[str], y: np.ndarray, y_err: np.ndarray,
            columns: Sequence[str]) -> "EnsembleCalibration":
        """From the mixture's ``table`` of stars with survey labels ``y`` and errors
        ``y_err`` ((n, L), NaN where a star lacks one); the interval where ``columns`` has
        one."""
        has = np.isfinite(y)
        mean_y, std_y = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
        std_y[~(std_y > 0)] = 1.0
        mean, sigma = cls._standardised(table, labels, mean_y, std_y)
        ys = np.where(has, (y - mean_y) / std_y, 0.0)
        es = np.nan_to_num(y_err / std_y, nan=0.0)
        scale = SigmaScale.fit(mean, sigma, ys, es, has)
        interval = IntervalScale.fit(mean, sigma * scale(mean, sigma), ys, es, has) \
            if f"{labels[0]}_lower" in columns else None
        return cls(mean_y, std_y, scale, interval)

    @staticmethod
    def _standardised(table, labels, mean_y, std_y) -> Tuple[np.ndarray, np.ndarray]:
        mean = np.column_stack([table[n].to_numpy(np.float64) for n in labels])
        sigma = np.column_stack([table[f"{n}_err"].to_numpy(np.float64) for n in labels])
        return (mean - mean_y) / std_y, sigma / std_y

    def apply(self, table: pd.DataFrame, labels: Sequence[str]) -> None:
        """The mixture's ``table`` (:func:`combine_tables`), calibrated in place: each
        ``<label>_err`` times its factor, the interval ``+- k`` times that."""
        mean, sigma = self._standardised(table, labels, self.label_mean, self.label_std)
        factor = self.scale(mean, sigma)
        k = self.interval(mean) if self.interval is not None else None
        for j, name in enumerate(labels):
            err = table[f"{name}_err"].to_numpy(np.float64) * factor[:, j]
            table[f"{name}_err"] = err
            if k is not None and f"{name}_lower" in table:
                centre = table[name].to_numpy(np.float64)
                table[f"{name}_lower"] = centre - k[:, j] * err
                table[f"{name}_upper"] = centre + k[:, j] * err

    def meta(self) -> dict:
        """What ``ensemble.json`` keeps of it."""
        return {**self.info, "interval": self.interval is not None,
                "label_mean": self.label_mean.tolist(), "label_std": self.label_std.tolist()}

    def arrays(self) -> Dict[str, np.ndarray]:
        """Its weights, for ``ensemble.safetensors``."""
        return {**self.scale.arrays("sigma_scale"),
                **(self.interval.arrays("interval_scale") if self.interval else {})}

    @classmethod
    def load(cls, directory: str, meta: dict, labels: Sequence[str]) -> "EnsembleCalibration":
        """The calibration of an ensemble's folder: ``meta``, ``calibration`` of its
        ``ensemble.json``, and its ``ensemble.safetensors``."""
        where = os.path.join(directory, ENSEMBLE_WEIGHTS)
        n = len(labels)
        try:
            arrays = load_file(where)
            stats = [np.asarray(meta[k], dtype=np.float64) for k in ("label_mean", "label_std")]
        except Exception as exc:  # safetensors' own error type, or a key or value missing
            raise ModelFileError(f"{where}: the ensemble's calibration is not readable ({exc});"
                                 " combine the members again (xpsvae labels combine "
                                 "--calibrate)") from None
        if any(a.shape != (n,) or not np.isfinite(a).all() for a in stats) or \
                not (stats[1] > 0).all():
            raise ModelFileError(f"{os.path.join(directory, ENSEMBLE_FILE)}: calibration's "
                                 f"label_mean and label_std must be {n} finite numbers, the "
                                 "second positive; combine the members again")
        scale = SigmaScale.from_arrays(arrays, "sigma_scale", n, n + 1, where)
        interval = IntervalScale.from_arrays(arrays, "interval_scale", n, n, where) \
            if meta.get("interval") else None
        info = {k: v for k, v in meta.items()
                if k not in ("interval", "label_mean", "label_std")}
        return cls(*stats, scale, interval, info)


def _std_z(table: pd.DataFrame, name: str, y: np.ndarray, err: np.ndarray) -> float:
    """std of z over the stars with the label (:func:`residuals`)."""
    z = residuals(table[name], y, table[f"{name}_err"], err)[1]
    return float(np.std(z[np.isfinite(z)]))


def _inside(table: pd.DataFrame, name: str, y: np.ndarray, err: np.ndarray
            ) -> Optional[float]:
    """The share of the stars with the label inside the central interval
    (:func:`within_interval`); None without an interval."""
    if f"{name}_lower" not in table:
        return None
    inside = within_interval(y, table[f"{name}_lower"], table[f"{name}_upper"], err)
    return float(inside[np.isfinite(y)].mean())


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
