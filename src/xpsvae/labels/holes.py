"""What a partial spectrum's holes may hide: the label variance its missing inputs add.

The sVAE fills a partial spectrum's holes before the label head reads it, and
the filling is confidently wrong rather than uncertain (drawing the holes
from the model widens sigma by 1-5% only; docs/labels.md). So the cost of a
hole is measured when a label model is fitted, on up to :data:`HOLE_STARS` of
its complete labelled spectra: the inputs are cut into :data:`HOLE_BLOCKS`
blocks of adjacent inputs, and each hole shape below is cut out of them.
These are validation stars, which the head was not trained on, so their
survey labels say how far off the holed labels are. The head's own sigma
already grows for a hole (its members disagree more on a spectrum so
filled); what it misses is kept, per label, as the variance ``c`` that makes
the holed residuals' ``z = (predicted - survey) / sqrt(sigma^2 + c + e^2)``
have a mean square of 1 (0 where they already do without it).

* **Each block alone**, for holes inside the spectrum.
* **The first k blocks, and the last k** (k = 1 .. HOLE_BLOCKS - 1), for a
  hole at either end. That is how Gaia's partial spectra look: a source
  without a BP spectrum lacks the blue end of the inputs (154 of the 343
  flux samples; the first 55 coefficients), one without RP the red end.
  Several blocks missing together cost more than the sum of each alone (the
  reddest half: std z up to 1.7 from the sum), so these runs are measured
  whole.

A star's added variance is, for the run of missing inputs at its blue end and
the one at its red end, the measured cost of a run that long (interpolated
linearly between whole blocks), plus, per block, the share of the block's
other inputs it misses times that block's cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
from scipy.optimize import brentq

from ..core.errors import ModelFileError
from ..io.spectra import SpectraSet

#: Blocks of adjacent inputs whose loss is measured, and the most labelled stars measured.
HOLE_BLOCKS = 10
HOLE_STARS = 300
#: Fewest stars with a label that a hole's cost is measured on (fewer: 0).
MIN_HOLE_STARS = 10


@dataclass
class HoleCost:
    """The variance the head misses (label units squared) for each hole shape measured.

    Attributes:
        blocks: (HOLE_BLOCKS, labels): one block missing.
        blue: (HOLE_BLOCKS - 1, labels): row k, the first k + 1 blocks missing
            (None: not measured; a label model from before these were, whose end
            runs count block by block).
        red: the same from the red end.
    """

    blocks: np.ndarray
    blue: Optional[np.ndarray] = None
    red: Optional[np.ndarray] = None

    @classmethod
    def measure(cls, labels_of: Callable[[SpectraSet], Tuple[np.ndarray, np.ndarray]],
                stars: SpectraSet, y: np.ndarray, y_err: np.ndarray) -> "HoleCost":
        """The costs on complete ``stars`` the head was not trained on, with their survey
        labels ``y`` and errors ``y_err`` ((n, labels), NaN where missing); ``labels_of``
        gives the head's labels and sigma (each (n, labels)). All the holed copies go to
        it in one call."""
        n, edges = stars.n_inputs, block_edges(stars.n_inputs)
        shapes = [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
        shapes += [(0, hi) for hi in edges[2:-1]] + [(lo, n) for lo in edges[-3:0:-1]]
        values = np.concatenate([stars.values] * len(shapes))
        errors = np.concatenate([stars.errors] * len(shapes))
        for k, (lo, hi) in enumerate(shapes):
            rows = slice(k * len(stars), (k + 1) * len(stars))
            values[rows, lo:hi], errors[rows, lo:hi] = np.nan, np.nan
        holed = stars.subset(np.tile(np.arange(len(stars)), len(shapes)))
        mean, sigma = (a.reshape(len(shapes), len(stars), -1) for a in
                       labels_of(dataclasses.replace(holed, values=values, errors=errors)))
        e2 = np.nan_to_num(np.asarray(y_err, dtype=np.float64)) ** 2
        cost = np.array([[_missed_variance(mean[k, :, j] - y[:, j], sigma[k, :, j] ** 2
                                           + e2[:, j]) for j in range(y.shape[1])]
                         for k in range(len(shapes))])
        b = HOLE_BLOCKS
        return cls(cost[:b], np.vstack([cost[:1], cost[b:2 * b - 2]]),
                   np.vstack([cost[b - 1:b], cost[2 * b - 2:]]))

    def variance(self, missing: np.ndarray) -> np.ndarray:
        """(n, labels): the variance added to stars whose inputs ``missing`` (n, inputs,
        bool) marks (module docstring)."""
        n = missing.shape[1]
        edges, index = block_edges(n), np.arange(n)
        blue = _end_run(missing) if self.blue is not None else np.zeros(len(missing), int)
        red = np.where(blue == n, 0, _end_run(missing[:, ::-1])) if self.red is not None \
            else np.zeros(len(missing), int)
        inner = missing & (index >= blue[:, None]) & (index < n - red[:, None])
        shares = np.stack([inner[:, lo:hi].mean(axis=1)
                           for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
        out = shares @ self.blocks
        for run, curve, lengths in ((blue, self.blue, edges[:-1]),
                                    (red, self.red, n - edges[:0:-1])):
            if curve is not None:
                table = np.vstack([np.zeros((1, curve.shape[1])), curve])
                out += np.column_stack([np.interp(run, lengths, table[:, j])
                                        for j in range(table.shape[1])])
        return out

    def to_json(self) -> dict:
        return {name: getattr(self, name).tolist() for name in ("blocks", "blue", "red")}

    @classmethod
    def from_json(cls, value, n_labels: int, source: str = "hole_variance") -> "HoleCost":
        """From :meth:`to_json`, or the list of block costs alone that label models wrote
        before the end runs were measured. ``n_labels``: the label model's labels;
        ``source`` names the file and key in the error a malformed value raises."""
        fix = "refit the label model (xpsvae labels fit) to write it again"
        if isinstance(value, list):
            value = {"blocks": value}
        elif not isinstance(value, dict) or "blocks" not in value:
            raise ModelFileError(f"{source}: expected {{'blocks': ..., 'blue': ..., 'red': "
                                 f"...}} or a list of block costs, got {str(value)[:80]}; {fix}")
        rows = {"blocks": HOLE_BLOCKS, "blue": HOLE_BLOCKS - 1, "red": HOLE_BLOCKS - 1}
        arrays = {}
        for name in ("blocks", "blue", "red"):
            if name not in value:
                continue
            try:
                array = np.asarray(value[name], dtype=np.float64)
            except (TypeError, ValueError):
                array = None
            if array is None or array.shape != (rows[name], n_labels) or \
                    not (np.isfinite(array) & (array >= 0)).all():
                raise ModelFileError(f"{source}: {name!r} must be {rows[name]} rows of "
                                     f"{n_labels} variances >= 0 (one per label); {fix}")
            arrays[name] = array
        return cls(**arrays)


def block_edges(n_inputs: int) -> np.ndarray:
    """The HOLE_BLOCKS + 1 edges of the blocks that cover ``n_inputs`` inputs."""
    return np.linspace(0, n_inputs, HOLE_BLOCKS + 1).astype(int)


def _missed_variance(residual: np.ndarray, variance: np.ndarray) -> float:
    """The c >= 0 with mean(residual^2 / (variance + c)) = 1 over the stars with a label
    (and a finite sigma)."""
    ok = np.isfinite(residual) & np.isfinite(variance)
    r2, v = residual[ok] ** 2, variance[ok]
    scale = float(np.mean(r2)) if len(r2) else 0.0
    if len(r2) < MIN_HOLE_STARS or scale == 0.0 or np.mean(r2 / v) <= 1.0:
        return 0.0
    # In units of mean(r^2) the left side falls from c = 0 on and is below 1 at c = 1
    # (each term r^2/(v + mean r^2) < r^2/mean r^2), so the root lies in (0, 1]. It is
    # sought in ln c, to 1e-12 of c wherever it lies: a few stars far off with sigma wider
    # still can put it at 1e-20 of mean(r^2), and a root sought in c itself, over a range
    # as wide as r^2, either stops short of it or takes more steps than brentq allows.
    r2, v = r2 / scale, v / scale
    lowest = 1e-250

    def excess(log_c: float) -> float:
        return float(np.mean(r2 / (v + np.exp(log_c)))) - 1.0
    if excess(np.log(lowest)) <= 0.0:
        return 0.0  # below 1e-250 of mean(r^2)
    return scale * float(np.exp(brentq(excess, np.log(lowest), 0.0, xtol=1e-12)))


def _end_run(missing: np.ndarray) -> np.ndarray:
    """Per row, how many inputs from the start are missing in a row."""
    return np.where(missing.all(axis=1), missing.shape[1], missing.argmin(axis=1))


__all__: List[str] = ["HOLE_BLOCKS", "HOLE_STARS", "MIN_HOLE_STARS", "HoleCost",
                       "block_edges"]
