"""A label head: features in, labels with calibrated uncertainties out.

An ensemble of small MLPs, each predicting per label a mean ``mu`` and a
scale ``sigma``, trained on the stars that have the label. The likelihood is a
Student t with ``nu`` degrees of freedom (``LabelHeadConfig.dof``), the
survey's own label error ``e`` added in quadrature to the scale, so the head
learns the spread the survey's errors do not explain. With ``v = sigma^2 +
e^2``, per label a star has (a missing label carries no weight)::

    NLL = (nu + 1)/2 ln(1 + (y - mu)^2 / (nu v)) + 1/2 ln v

(constants dropped), and as ``nu -> infinity`` (``dof=0``) the Gaussian
``1/2 [(y - mu)^2 / v + ln v]``. Survey labels have a few per cent of stars
far off any smooth relation (binaries, failed fits); a Gaussian lets them pull
the means and inflate every star's variance, the t's heavier tails let them go.
A member's variance is the t's, ``sigma^2 nu/(nu - 2)``.

A head may learn a class beside the labels (:mod:`xpsvae.labels.classes`:
high or low alpha): one more output per member, a logit, whose
cross-entropy over the stars of known class, divided by the number of
labels, joins the loss, so the class weighs as one label more. The members
share what they learn, and the classifier costs no training of its own. The
ensemble's probability is the members' mean. The ensemble's
prediction is the mixture's mean and variance (the members' variances
averaged, plus the spread of their means). How far that sigma is to be
trusted is fitted on the validation share, never on test stars
(:mod:`xpsvae.labels.calibration`): a factor on sigma that follows the star's
predicted labels, and the central 68% interval ``mu +- k sigma``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torch import nn

from ..core.errors import ModelFileError
from ..core.files import LABEL_HEAD_CONFIG as HEAD_CONFIG
from ..core.files import LABEL_HEAD_WEIGHTS as HEAD_WEIGHTS
from ..core.files import atomic_path, write_json
from ..model.network import label_nll
from ..model.runtime import torch_threads
from .calibration import IntervalScale, SigmaScale, interval_scale
from .members import LabelHeadConfig, load_members, member_arrays, train_members
from .tuned import Tuning


def _loss(out: torch.Tensor, y: torch.Tensor, var: torch.Tensor, has: torch.Tensor,
          dof: float = 0.0) -> torch.Tensor:
    """:func:`head_nll` of a member's output (means, then log squared scales)."""
    mean, log_var = out.chunk(2, dim=1)
    return head_nll(mean, log_var.clamp(-12, 6), y, var, has, dof)


def _loss_with_class(out: torch.Tensor, y: torch.Tensor, var: torch.Tensor, has: torch.Tensor,
                     truth: torch.Tensor, dof: float = 0.0) -> torch.Tensor:
    """:func:`_loss` of the label outputs, plus the last output's (a logit) cross-entropy
    averaged over the stars whose class is known (``truth`` 1 or 0; NaN: unknown) and
    divided by the number of labels (module docstring)."""
    known = torch.isfinite(truth)
    entropy = nn.functional.binary_cross_entropy_with_logits(
        out[:, -1], torch.nan_to_num(truth), reduction="none")
    n_labels = y.shape[1]
    return _loss(out[:, :-1], y, var, has, dof) + \
        (entropy * known).sum() / known.sum().clamp(min=1) / n_labels


def _class_probability(outputs: List[torch.Tensor]) -> np.ndarray:
    """(n,) float64: the members' mean probability of the class (their last output)."""
    return torch.stack([torch.sigmoid(o[:, -1]).double() for o in outputs]).mean(0).numpy()


def feature_statistics(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (1 where a column is constant), NaN ignored."""
    mean = np.nanmean(features, axis=0)
    std = np.nanstd(features, axis=0)
    std[~(std > 0)] = 1.0
    return mean, std


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 ``(features - mean) / std``; a missing value (NaN side column) becomes the
    training mean."""
    x = (np.asarray(features, dtype=np.float64) - mean) / std
    return np.nan_to_num(x, nan=0.0).astype(np.float32)


def head_nll(mean: torch.Tensor, log_var: torch.Tensor, y: torch.Tensor,
             y_var: torch.Tensor, has: torch.Tensor, dof: float = 0.0) -> torch.Tensor:
    """The head's loss (module docstring), averaged over the stars' labels that exist;
    ``log_var`` is ln sigma^2, ``dof`` the t's ``nu`` (0: Gaussian)."""
    return label_nll(mean, log_var, y, y_var, has, dof).sum() / has.sum().clamp(min=1)


@dataclass
class LabelHead:
    """An ensemble of MLPs from features to labels with calibrated variances.

    Everything is standardised inside: features and labels by their training
    mean and standard deviation, a missing feature (NaN side column) set to
    the mean.
    """

    config: LabelHeadConfig = field(default_factory=LabelHeadConfig)
    members: List[nn.Sequential] = field(default_factory=list)
    feature_mean: Optional[np.ndarray] = None
    feature_std: Optional[np.ndarray] = None
    label_mean: Optional[np.ndarray] = None
    label_std: Optional[np.ndarray] = None
    #: the factor on sigma, per star and label, fitted on the validation share
    calibration: Optional[SigmaScale] = None
    sigma_scale: Optional[np.ndarray] = None  # per label, that factor's median there
    #: k of the central 68% interval mu +- k sigma, per star and label (validation share;
    #: heads from before: None)
    interval: Optional[IntervalScale] = None
    interval_scale: Optional[np.ndarray] = None  # per label, k's median there
    class_prior: Optional[float] = None  # with a class output: the training share of the class
    history: List[dict] = field(default_factory=list)

    # ------------------------------------------------------------------ fitting
    def fit(self, features: np.ndarray, y: np.ndarray, y_err: Optional[np.ndarray] = None,
            classes: Optional[np.ndarray] = None, validation: Optional[np.ndarray] = None,
            encoder: Optional[nn.Sequential] = None) -> "LabelHead":
        """Fit on ``features`` (n, F) and labels ``y`` (n, L), NaN where a star lacks one,
        with the survey's errors ``y_err`` (n, L; None: taken as 0), and, given ``classes``
        (n,: 1, 0, or NaN where unknown), a class output beside them (module docstring).
        ``validation`` (n,) bool: the stars to hold out, on which the sigma scale and the
        interval are fitted (None: :meth:`validation` of all of them; with pseudo-labels,
        :mod:`xpsvae.labels.pseudo`, survey stars that nothing before it saw labelled).
        With ``config.encoder_lr`` above 0, ``features`` begin with the sVAE-standardised
        spectrum and ``encoder`` is the sVAE's encoder (:mod:`xpsvae.labels.tuned`)."""
        c = self.config
        y = np.asarray(y, dtype=np.float64)
        y_err = np.zeros_like(y) if y_err is None else np.nan_to_num(
            np.asarray(y_err, dtype=np.float64), nan=0.0)
        has = np.isfinite(y)
        if (has.sum(axis=0) < 10).any():
            raise ValueError(f"each label needs at least 10 stars that have it; got "
                             f"{has.sum(axis=0).tolist()}")
        self.feature_mean, self.feature_std = feature_statistics(features)
        self.label_mean = np.nanmean(y, axis=0)
        self.label_std = np.nanstd(y, axis=0)
        self.label_std[~(self.label_std > 0)] = 1.0
        x = self._standardised(features)
        ys = np.where(has, (y - self.label_mean) / self.label_std, 0.0)
        var = (y_err / self.label_std) ** 2
        val = self.validation(len(y)) if validation is None else \
            np.asarray(validation, dtype=bool)
        if val.shape != (len(y),):
            raise ValueError(f"validation must be {len(y)} bools, one per star; got shape "
                             f"{val.shape}")
        tensors = [torch.from_numpy(a.astype(np.float32)) for a in (x, ys, var)]
        targets = [t[~val] for t in tensors[1:]] + [torch.from_numpy(has[~val])]
        loss = partial(_loss, dof=c.dof)
        if classes is not None:
            classes = np.asarray(classes, dtype=np.float64)
            self.class_prior = float(np.nanmean(classes[~val]))
            targets.append(torch.from_numpy(classes[~val].astype(np.float32)))
            loss = partial(_loss_with_class, dof=c.dof)
        if c.tunes_encoder and encoder is None:
            raise ValueError("a head with encoder_lr > 0 tunes a copy of the sVAE's encoder: "
                             "pass encoder= (LabelModel.fit does)")
        build = Tuning(encoder, self.feature_mean, self.feature_std, tensors[0]) \
            if c.tunes_encoder else None
        with torch_threads(c.threads, idle=True):
            self.members = train_members(c, c.members, 2 * y.shape[1] + (classes is not None),
                                         loss, tensors[0][~val], *targets,
                                         history=self.history, build=build)
            mean, sigma = self._mixture(self._outputs(tensors[0][val]))
        truth = (ys[val], np.sqrt(var[val]), has[val])
        self.calibration = SigmaScale.fit(mean, sigma, *truth)
        factor = self.calibration(mean, sigma)
        self.interval = IntervalScale.fit(mean, sigma * factor, *truth)
        self.sigma_scale = np.median(factor, axis=0)
        self.interval_scale = np.median(self.interval(mean), axis=0)
        return self

    def validation(self, n: int, surveyed: Optional[np.ndarray] = None,
                   count: Optional[int] = None) -> np.ndarray:
        """Which of the ``n`` stars given to :meth:`fit` it holds out (bool): ``count`` stars
        (default: the validation share of the pool) drawn from the seed among those
        ``surveyed`` (all, where None); all of them where they are fewer."""
        val = np.zeros(n, dtype=bool)
        pool = np.arange(n) if surveyed is None else np.flatnonzero(surveyed)
        c = self.config
        count = int(c.val_fraction * len(pool)) if count is None else count
        val[np.random.default_rng(c.seed).permutation(pool)[:count]] = True
        return val

    # ------------------------------------------------------------------ predicting
    def _standardised(self, features: np.ndarray) -> np.ndarray:
        return standardise(features, self.feature_mean, self.feature_std)

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Each member's outputs: per label a mean and a log variance, then the class logit
        where the head learnt one."""
        return [member(x) for member in self.members]

    def _mixture(self, outputs: List[torch.Tensor]) -> Tuple[np.ndarray, np.ndarray]:
        """The ensemble's mean and standard deviation, standardised label units."""
        means, variances = [], []
        for out in outputs:
            mean, log_var = out[:, :2 * len(self.label_mean)].chunk(2, dim=1)
            means.append(mean.double())
            variances.append(log_var.clamp(-12, 6).double().exp() * self._t_variance)
        means_t = torch.stack(means)
        var = torch.stack(variances).mean(0) + means_t.var(0, unbiased=False)
        return means_t.mean(0).numpy(), var.sqrt().numpy()

    @property
    def _t_variance(self) -> float:
        """A member's variance over its squared scale: nu/(nu - 2) for the t, 1 Gaussian."""
        nu = self.config.dof
        return nu / (nu - 2) if nu else 1.0

    def predict(self, features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(labels, sigma), each (n, L), in the labels' units; sigma is the head's own
        calibrated uncertainty (add the survey's error in quadrature to compare with it)."""
        labels, sigma, _ = self.predict_with_class(features, with_class=False)
        return labels, sigma

    def interval_factor(self, labels: np.ndarray) -> Optional[np.ndarray]:
        """(n, L): k of each star's central 68% interval ``labels +- k sigma``, from its
        predicted ``labels`` (n, L; the labels' units); None for a head from before it."""
        if self.interval is None:
            return None
        return self.interval((labels - self.label_mean) / self.label_std)

    def class_probability(self, features: np.ndarray) -> np.ndarray:
        """(n,) float64: the probability of the class a head learnt beside its labels."""
        if self.class_prior is None:
            raise RuntimeError("this head learnt no class: fit it with classes=")
        if not self.members:
            raise RuntimeError("the label head is not fitted: call fit() or load() first")
        x = torch.from_numpy(self._standardised(features))
        with torch_threads(self.config.threads):
            return _class_probability(self._outputs(x))

    def predict_with_class(self, features: np.ndarray, with_class: bool = True
                           ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        """:meth:`predict` and :meth:`class_probability` from one pass of the ensemble
        (the probability None where the head learnt no class, or ``with_class`` is off)."""
        if not self.members:
            raise RuntimeError("the label head is not fitted: call fit() or load() first")
        x = torch.from_numpy(self._standardised(features))
        with torch_threads(self.config.threads):
            outputs = self._outputs(x)
            mean, sigma = self._mixture(outputs)
            p = None if self.class_prior is None or not with_class else \
                _class_probability(outputs)
        return (mean * self.label_std + self.label_mean,
                sigma * self.calibration(mean, sigma) * self.label_std, p)

    # ------------------------------------------------------------------ files
    def save(self, directory: str, meta: Optional[dict] = None,
             extra: Optional[Dict[str, np.ndarray]] = None) -> None:
        """``head.safetensors`` (weights and statistics, and the ``extra`` arrays) and
        ``head.json`` (config, ``meta``)."""
        os.makedirs(directory, exist_ok=True)
        arrays = {**member_arrays(self.members, ""), **self.calibration.arrays("sigma_scale"),
                  **(self.interval.arrays("interval_scale") if self.interval else {}),
                  **(extra or {})}
        for name in ("feature_mean", "feature_std", "label_mean", "label_std", "sigma_scale"):
            arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        with atomic_path(os.path.join(directory, HEAD_WEIGHTS)) as tmp:
            save_file(arrays, tmp)
        own = {} if self.class_prior is None else {"class_prior": self.class_prior}
        if self.interval_scale is not None:
            own["interval_scale"] = [float(k) for k in self.interval_scale]
        write_json(os.path.join(directory, HEAD_CONFIG),
                   {"format_version": 1, "config": asdict(self.config), **own, **(meta or {})})

    @classmethod
    def load(cls, directory: str, encoder: Optional[nn.Sequential] = None
             ) -> Tuple["LabelHead", dict, Dict[str, np.ndarray]]:
        """(head, the ``meta`` saved with it, every array of its file); ``encoder``: the
        sVAE's, the template of a tuned head's members (:mod:`xpsvae.labels.tuned`)."""
        config_path, weights_path = head_files(directory)
        with open(config_path) as f:
            meta = json.load(f)
        if meta.get("format_version") != 1:
            raise ModelFileError(f"{config_path}: label head format {meta.get('format_version')!r}"
                                 "; this xpsvae reads 1")
        try:
            arrays = load_file(weights_path)
        except Exception as exc:  # safetensors' own error type: a cut or garbled file
            raise ModelFileError(f"{weights_path}: not a readable safetensors file ({exc}); "
                                 "fit the label model again, or copy it whole") from None
        head = cls(config_from_json(meta.pop("config")),
                   class_prior=meta.pop("class_prior", None))
        for name in ("feature_mean", "feature_std", "label_mean", "label_std", "sigma_scale"):
            setattr(head, name, arrays[name])
        n = len(head.label_mean)
        if "interval_scale" in meta:
            head.interval_scale = interval_scale(meta.pop("interval_scale"), n, config_path)
        # heads from before the scale and k followed the star: one number per label
        head.calibration = SigmaScale.from_arrays(arrays, "sigma_scale", n, n + 1, weights_path) \
            if SigmaScale.stored(arrays, "sigma_scale") else \
            SigmaScale.constant(head.sigma_scale, n + 1)
        if head.interval_scale is not None:  # without the key, no interval
            head.interval = IntervalScale.from_arrays(
                arrays, "interval_scale", n, n, weights_path) \
                if IntervalScale.stored(arrays, "interval_scale") else \
                IntervalScale.constant(head.interval_scale, n)
        if head.config.tunes_encoder and encoder is None:
            raise ModelFileError(f"{config_path}: this head tuned the sVAE's encoder; load it "
                                 "with its label model (LabelModel.load)")
        head.members = load_members(arrays, "", head.config.members, len(head.feature_mean),
                                    head.config.hidden,
                                    2 * len(head.label_mean) + (head.class_prior is not None),
                                    encoder if head.config.tunes_encoder else None)
        return head, meta, arrays


def head_files(directory: str) -> Tuple[str, str]:
    """The paths of a head's ``head.json`` and ``head.safetensors``, refused where either
    is missing."""
    paths = os.path.join(directory, HEAD_CONFIG), os.path.join(directory, HEAD_WEIGHTS)
    for path in paths:
        if not os.path.exists(path):
            raise ModelFileError(f"{path}: missing; is {directory!r} a label model "
                                 "(xpsvae labels fit)?")
    return paths


def config_from_json(config: dict) -> LabelHeadConfig:
    """The recipe a ``head.json`` holds, as it was meant when written: heads from before
    the t likelihood were Gaussian, and their classifier (``high_alpha_members``) was an
    ensemble of its own (:class:`~xpsvae.labels.classes.ClassHead` reads that)."""
    config = {"dof": 0.0, **config}
    config.pop("high_alpha_members", None)
    return LabelHeadConfig(**config)
