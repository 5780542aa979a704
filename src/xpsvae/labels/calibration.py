"""How far the label head's sigma is to be trusted: fitted on the validation share.

Two things are fitted on the validation stars (never on test stars), in the
head's standardised label units, per label:

* **The sigma scale** (:class:`SigmaScale`). The head's sigma is multiplied by
  a factor ``s`` that depends on the star: its logarithm is linear in the
  star's predicted labels ``u`` (standardised) and in the head's own ``ln
  sigma``::

      ln s = w . (u, ln sigma, 1)

  with ``w`` the weights that make ``r / sqrt(s^2 sigma^2 + e^2)`` most likely
  to be standard normal over the validation stars (``r`` the residual, ``e``
  the survey's error), plus a small ridge penalty on all but the constant. The
  head learns its sigma under a Student t, which lets a few far-off stars go
  into the tails; a constant scale per label then answers for all stars at
  once, and the few far-off hot stars that set Teff's made giants' sigma 1.5x
  too wide and dwarfs' too narrow (docs/labels-measured.md, "Calibration"). A
  scale that follows the predicted labels answers for each kind of star.
  Covariates are clipped to the range the validation stars span, so a
  star unlike them gets the scale of the nearest kind that was fitted. With
  fewer than :data:`STARS_PER_WEIGHT` stars per weight the scale is one
  number per label; with fewer than :data:`MIN_SCALE_STARS`, 1. The same
  holds for ``k`` below.
* **The central 68% interval** (:class:`IntervalScale`): ``mu +- k sigma``,
  sigma the scaled one, with ``ln k`` linear in the star's predicted labels:
  the quantile regression that holds :data:`INTERVAL_SHARE` of the validation
  stars within it. The residuals are heavier-tailed than a Gaussian, so no
  sigma both has their spread and holds 68.3% within one sigma; the interval
  answers the second, and how heavy the tails are differs from one kind of
  star to another (metal-poor giants' Teff nearly Gaussian, dwarfs' not), so
  ``k`` follows the star too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
from scipy.optimize import minimize

from ..core.errors import ModelFileError

#: The share of stars the central interval holds: a Gaussian's within one sigma.
INTERVAL_SHARE = 0.6827
#: Fewer validation stars with a label than this: its sigma is not scaled, and its
#: interval is sigma itself.
MIN_SCALE_STARS = 10
#: Validation stars per weight below which a label's scale and interval are one number.
#: Drawn from the demo's 3,620 validation stars, 120-200 of them (20-33 per weight) gave
#: test stars' std z further from 1 than one number did; 400 about as near; 1,000 nearer
#: (docs/labels-measured.md).
STARS_PER_WEIGHT = 100
#: The ridge penalty on the sigma scale's weights but the constant: their sum of squares
#: times this, added to the mean negative log likelihood per star (covariates have unit
#: spread).
RIDGE = 0.01
#: Bound on |ln s| and |ln k|: within e^-3 to e^3 of the head's sigma.
LOG_BOUND = 3.0
#: A star whose residual the survey's error covers is inside at any k; its ln need is
#: taken as ln of this.
_NEED_FLOOR = 1e-6
#: Width over which the interval's pinball loss is smoothed, in ln k (a few per cent of k).
_PINBALL_WIDTH = 0.02


@dataclass
class LogLinear:
    """Per label, a positive factor whose logarithm is linear in a star's covariates:
    ``weights`` (L, C + 1), the last the constant; each covariate clipped to
    [``low``, ``high``] (L, C), the range of the stars it was fitted on."""

    weights: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def constant(cls, factor: np.ndarray, n_covariates: int) -> "LogLinear":
        """One factor per label, whatever the star."""
        factor = np.asarray(factor, dtype=np.float64)
        weights = np.zeros((len(factor), n_covariates + 1))
        weights[:, -1] = np.log(factor)
        shape = (len(factor), n_covariates)
        return cls(weights, np.full(shape, -np.inf), np.full(shape, np.inf))

    def factor(self, j: int, covariates: np.ndarray) -> np.ndarray:
        """(n,): label ``j``'s factor for stars of these (n, C) covariates."""
        log_f = np.clip(covariates, self.low[j], self.high[j]) @ self.weights[j, :-1] \
            + self.weights[j, -1]
        return np.exp(np.clip(log_f, -LOG_BOUND, LOG_BOUND))

    def _fit_label(self, j: int, covariates: np.ndarray, fit_weights) -> None:
        """Label ``j`` from its validation stars' covariates: on them where there are
        enough stars, else one number; ``fit_weights(design)`` gives the weights."""
        ones = np.ones((len(covariates), 1))
        if len(covariates) < STARS_PER_WEIGHT * self.weights.shape[1]:
            self.weights[j, -1] = fit_weights(ones)[0]
            return
        self.low[j], self.high[j] = covariates.min(axis=0), covariates.max(axis=0)
        self.weights[j] = fit_weights(np.hstack([covariates, ones]))

    @staticmethod
    def stored(arrays: Dict[str, np.ndarray], prefix: str) -> bool:
        """Whether a head file holds these weights (heads from before: one number per
        label, in an array of its own)."""
        return f"{prefix}_{_KEYS[0]}" in arrays

    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        """The arrays a head file keeps (:meth:`from_arrays` reads them back)."""
        return {f"{prefix}_{key}": getattr(self, key) for key in _KEYS}

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], prefix: str, n_labels: int,
                    n_covariates: int, where: str) -> "LogLinear":
        missing = [f"{prefix}_{key}" for key in _KEYS if f"{prefix}_{key}" not in arrays]
        if missing:
            raise ModelFileError(f"{where}: {missing[0]} is missing; refit the label model "
                                 "(xpsvae labels fit), or copy it whole")
        out = cls(*(np.asarray(arrays[f"{prefix}_{key}"], dtype=np.float64) for key in _KEYS))
        shapes = [(n_labels, n_covariates + 1)] + 2 * [(n_labels, n_covariates)]
        if [a.shape for a in (out.weights, out.low, out.high)] != shapes \
                or not np.isfinite(out.weights).all() or (out.low > out.high).any():
            raise ModelFileError(f"{where}: {prefix} must be finite weights of shape "
                                 f"{shapes[0]} and bounds of {shapes[1]}, low <= high; refit "
                                 "the label model (xpsvae labels fit)")
        return out


_KEYS = ("weights", "low", "high")


class SigmaScale(LogLinear):
    """The factor ``s`` on the head's sigma (module docstring); its covariates are the
    star's predicted labels and ln of the label's sigma, standardised units."""

    @classmethod
    def fit(cls, mean: np.ndarray, sigma: np.ndarray, y: np.ndarray, err: np.ndarray,
            has: np.ndarray) -> "SigmaScale":
        """Fit on the validation stars: the head's ``mean`` and ``sigma``, the labels ``y``
        and the survey's errors ``err`` (each (n, L), standardised units), ``has`` (n, L)
        where a star has the label."""
        n_labels = mean.shape[1]
        out = cls.constant(np.ones(n_labels), n_labels + 1)
        for j in range(n_labels):
            rows = np.flatnonzero(has[:, j])
            if len(rows) >= MIN_SCALE_STARS:
                squares = ((mean[rows, j] - y[rows, j]) ** 2, sigma[rows, j] ** 2,
                           err[rows, j] ** 2)
                out._fit_label(j, _covariates(mean[rows], sigma[rows, j]),
                               lambda design: _likeliest(design, *squares))
        return out

    def __call__(self, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """(n, L): each star's factor on each label's sigma (standardised ``mean`` and
        ``sigma`` of the head, (n, L))."""
        return np.column_stack([self.factor(j, _covariates(mean, sigma[:, j]))
                                for j in range(sigma.shape[1])])


class IntervalScale(LogLinear):
    """The factor ``k`` of the central 68% interval ``mu +- k sigma`` (module docstring),
    sigma the scaled one; its covariates are the star's predicted labels."""

    @classmethod
    def fit(cls, mean: np.ndarray, sigma: np.ndarray, y: np.ndarray, err: np.ndarray,
            has: np.ndarray) -> "IntervalScale":
        """As :meth:`SigmaScale.fit`, ``sigma`` the scaled one. A star is inside where
        r^2 <= k^2 sigma^2 + err^2, so ``ln k`` is the :data:`INTERVAL_SHARE` quantile
        regression of ln sqrt(max(r^2 - err^2, 0)) / sigma on the covariates."""
        n_labels = mean.shape[1]
        out = cls.constant(np.ones(n_labels), n_labels)
        for j in range(n_labels):
            rows = np.flatnonzero(has[:, j])
            if len(rows) < MIN_SCALE_STARS:
                continue
            need = np.sqrt(np.maximum((mean[rows, j] - y[rows, j]) ** 2 - err[rows, j] ** 2,
                                      0.0)) / sigma[rows, j]
            out._fit_label(j, mean[rows], lambda design: _quantile_weights(
                design, np.log(np.maximum(need, _NEED_FLOOR)), INTERVAL_SHARE))
        return out

    def __call__(self, mean: np.ndarray) -> np.ndarray:
        """(n, L): each star's k, from its predicted labels (standardised, (n, L))."""
        return np.column_stack([self.factor(j, mean) for j in range(mean.shape[1])])


def _covariates(mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(n, L + 1): a star's predicted labels and ln of one label's sigma."""
    return np.hstack([mean, np.log(sigma)[:, None]])


def _likeliest(design: np.ndarray, r2: np.ndarray, s2: np.ndarray,
               e2: np.ndarray) -> np.ndarray:
    """The weights of ``ln s = design @ w`` that minimise the Gaussian negative log
    likelihood of residuals ``r`` with variance ``s^2 sigma^2 + e^2``, plus the ridge."""
    penalised = np.ones(design.shape[1])
    penalised[-1] = 0.0

    def objective(w):
        log_s = design @ w
        inside = np.abs(log_s) < LOG_BOUND  # at the bound the scale no longer moves
        grow = np.exp(2 * np.clip(log_s, -LOG_BOUND, LOG_BOUND)) * s2
        v = grow + e2
        value = 0.5 * np.mean(r2 / v + np.log(v)) + RIDGE * np.sum(penalised * w ** 2)
        dv = (1 / v - r2 / v ** 2) * grow * inside  # d(value)/d(log_s) per star, times n
        return value, design.T @ dv / len(v) + 2 * RIDGE * penalised * w

    return minimize(objective, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x


def _quantile_weights(design: np.ndarray, target: np.ndarray, q: float) -> np.ndarray:
    """Linear quantile regression: weights w whose ``design @ w`` has a share ``q`` of
    ``target`` at or below it (the last column of ``design`` is the constant). The slopes
    minimise the pinball loss smoothed over :data:`_PINBALL_WIDTH` (L-BFGS, linear in the
    stars; an exact linear programme takes minutes at 20,000 stars); the constant then
    puts the share at ``q`` exactly."""
    h = _PINBALL_WIDTH

    def objective(w):
        r = target - design @ w
        # q r + h softplus(-r / h): the pinball loss r (q - [r < 0]) as h -> 0
        value = np.mean(q * r + h * np.logaddexp(0.0, -r / h))
        slope = q - 0.5 * (1 + np.tanh(-r / (2 * h)))  # q - sigmoid(-r / h), overflow-free
        return value, -design.T @ slope / len(r)

    w = minimize(objective, np.zeros(design.shape[1]), jac=True, method="L-BFGS-B").x
    w[-1] += np.quantile(target - design @ w, q)
    return w


def residuals(predicted: np.ndarray, truth: np.ndarray, sigma: Optional[np.ndarray] = None,
              truth_err: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(predicted - survey, z) per star, NaN where either label is missing; z only with a
    predicted ``sigma``, the survey's error (0 where it gives none) added in quadrature."""
    r = np.asarray(predicted, np.float64) - np.asarray(truth, np.float64)
    if sigma is None:
        return r, None
    err = 0.0 if truth_err is None else np.nan_to_num(np.asarray(truth_err, np.float64))
    return r, r / np.sqrt(np.asarray(sigma, np.float64) ** 2 + err ** 2)


def within_interval(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                    truth_err: Optional[np.ndarray] = None) -> np.ndarray:
    """Per star, whether ``truth`` lies in the central interval ``lower`` to ``upper``, the
    survey's error (0 where it gives none) added in quadrature to its half-width: the share
    :class:`IntervalScale` sets."""
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    err = 0.0 if truth_err is None else np.nan_to_num(np.asarray(truth_err, np.float64))
    centre, half = (upper + lower) / 2, (upper - lower) / 2
    return np.abs(np.asarray(truth, np.float64) - centre) <= np.sqrt(half ** 2 + err ** 2)


def interval_scale(value, n_labels: int, where: str) -> np.ndarray:
    """``interval_scale`` as head.json holds it: one positive finite number per label."""
    try:
        k = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        k = np.array([np.nan])
    if k.shape != (n_labels,) or not (np.isfinite(k) & (k > 0)).all():
        raise ModelFileError(f"{where}: interval_scale must be {n_labels} positive numbers, "
                             f"one per label, got {value!r}; refit the label model, or delete "
                             "the key (its labels then come without the 68% interval)")
    return k
