"""Quality figures of a model on held-out stars (metrics.json).

All figures are computed in standardised units, decoding the latent mean
(no sampling noise), with ``w = err^2 + scatter^2`` and the normalised error
``r = (x - x_hat) / sqrt(w)``.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from ..io.spectra import SpectraSet

#: Label cuts of the paper's tails (the paper's Section 3).
TAILS = {"cool": ("teff", "<", 4000.0), "low_logg": ("logg", "<", 1.0)}


def reconstruction_metrics(x: np.ndarray, err: np.ndarray, x_hat: np.ndarray,
                           scatter: np.ndarray) -> Dict[str, float]:
    """Per-star likelihood and normalised-error statistics.

    Args:
        x, err, x_hat, scatter: arrays (n_stars, n_inputs) in standardised
            units; ``scatter`` may be per star or broadcast (a population
            scatter of shape (n_inputs,)).

    Returns:
        ``n_stars``; ``mean_nll`` (mean over stars of sum_i r_i^2/2 + ln(w_i)/2,
        no 2*pi term, no KL; the sum over a star's measured inputs, where some
        are NaN); ``std_r``; ``mean_abs_r``; ``frac_abs_r_gt_5`` and
        ``frac_abs_r_gt_10`` (over all star-inputs); ``median_scatter_over_error``.
    """
    x, err, x_hat = (np.asarray(a, dtype=np.float64) for a in (x, err, x_hat))
    scatter = np.broadcast_to(np.asarray(scatter, dtype=np.float64), x.shape)
    if not (x.shape == err.shape == x_hat.shape) or x.ndim != 2:
        raise ValueError(f"x, err, x_hat must share a shape (n_stars, n_inputs); got "
                         f"{x.shape}, {err.shape}, {x_hat.shape}")
    if x.shape[0] == 0:
        return {"n_stars": 0}
    w = err ** 2 + scatter ** 2
    r = (x - x_hat) / np.sqrt(w)
    observed = np.isfinite(r)
    partial = not observed.all()  # an unmeasured input (NaN) is left out of every figure
    nll = 0.5 * np.where(observed, r ** 2 + np.log(w), 0.0).sum(axis=1) if partial else \
        0.5 * (r ** 2 + np.log(w)).sum(axis=1)
    if partial:
        r = r[observed]
    abs_r = np.abs(r)
    return {
        "n_stars": int(x.shape[0]),
        "mean_nll": float(nll.mean()),
        "median_nll": float(np.median(nll)),
        "std_r": float(r.std()),
        "mean_abs_r": float(abs_r.mean()),
        "frac_abs_r_gt_5": float((abs_r > 5).mean()),
        "frac_abs_r_gt_10": float((abs_r > 10).mean()),
        "median_scatter_over_error": float(np.median(scatter) / np.median(err)),
    }


def tail_masks(labels) -> Dict[str, np.ndarray]:
    """Boolean masks of the paper's label tails (cool: teff < 4000 K; low_logg: logg < 1)."""
    masks = {}
    for name, (column, _, cut) in TAILS.items():
        if labels is not None and column in labels:
            values = np.asarray(labels[column], dtype=np.float64)
            masks[name] = np.isfinite(values) & (values < cut)
    return masks


def evaluate_svae(model, spectra: SpectraSet, device: str = "cpu",
                  outputs: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, dict]:
    """``test``, ``cool`` and ``low_logg`` blocks of :func:`reconstruction_metrics` for an SVAE.

    Args:
        model: a trained :class:`xpsvae.SVAE`.
        spectra: held-out stars (labels used for the tails when present).
        device: where to run the model.
        outputs: :meth:`SVAE.standardised_outputs` if already computed.

    Returns:
        dict of blocks; the tails are present only where the labels are.
    """
    out = outputs if outputs is not None else model.standardised_outputs(spectra, device)
    blocks = {"test": reconstruction_metrics(out["x"], out["err"], out["x_hat"], out["scatter"])}
    for name, mask in tail_masks(spectra.labels).items():
        blocks[name] = reconstruction_metrics(out["x"][mask], out["err"][mask],
                                              out["x_hat"][mask], out["scatter"][mask])
    return blocks


def edge_inputs(n_inputs: int, kind: str) -> Dict[str, np.ndarray]:
    """Inputs of the paper's edge comparison.

    Coefficients: the first 10 BP and the first 10 RP coefficients. Sampled
    spectra: the bluest and the reddest 10% of the samples.
    """
    if kind == "coefficients":
        half = n_inputs // 2
        return {"blue": np.arange(min(10, half)), "red": half + np.arange(min(10, half))}
    width = max(1, int(round(0.1 * n_inputs)))
    return {"blue": np.arange(width), "red": np.arange(n_inputs - width, n_inputs)}


def normalised_errors(x, err, x_hat, scatter) -> np.ndarray:
    """r = (x - x_hat) / sqrt(err^2 + scatter^2), element-wise (scatter may broadcast)."""
    return (np.asarray(x, np.float64) - x_hat) / np.sqrt(np.asarray(err, np.float64) ** 2
                                                         + np.asarray(scatter, np.float64) ** 2)


def edge_comparison(r_svae: np.ndarray, r_cannon: np.ndarray, kind: str) -> Dict[str, dict]:
    """Mean |r| over the blue and red edge inputs for both models, on the same stars.

    Returns:
        ``{"blue": {"svae", "cannon", "ratio"}, "red": {...}}`` with ratio =
        svae / cannon (the paper: 1.02 for BP, 1.09 for RP).
    """
    out = {}
    for side, idx in edge_inputs(r_svae.shape[1], kind).items():
        a, b = float(np.abs(r_svae[:, idx]).mean()), float(np.abs(r_cannon[:, idx]).mean())
        out[side] = {"inputs": [int(idx[0]), int(idx[-1])], "svae": a, "cannon": b,
                     "ratio": a / b}
    return out


def occupied_cells(points: np.ndarray, origin: np.ndarray, width: float) -> np.ndarray:
    """Distinct grid cells (rows of integer cell indices) holding at least one point."""
    cells = np.floor((points - origin) / width).astype(np.int64)
    if len(cells) == 0:
        return cells
    low = cells.min(axis=0)
    shape = cells.max(axis=0) - low + 1
    if np.prod(shape.astype(np.float64)) >= 2.0 ** 62:  # too many cells for one int64 key
        return np.unique(cells, axis=0)
    # One integer per cell: unique over a flat array is ~20x faster than over rows.
    keys = np.unique(np.ravel_multi_index(tuple((cells - low).T), tuple(shape)))
    return np.column_stack(np.unravel_index(keys, tuple(shape))) + low


def _volume(points: np.ndarray, origin: np.ndarray, width: float) -> float:
    return len(occupied_cells(points, origin, width)) * width ** points.shape[1]


def latent_volume_gain(labelled: np.ndarray, unlabelled: np.ndarray, width: Optional[float] = None,
                       n_bootstrap: int = 100, seed: int = 0) -> dict:
    """Relative latent volume the unlabelled stars add to the labelled ones: dV / V_sup.

    Numerical integration on a grid: the volume a set occupies is the number of
    grid cells holding at least one of its points times the cell volume. With
    V_sup the labelled set's volume and V_all that of both sets together,
    ``gain = (V_all - V_sup) / V_sup``. Latents are first scaled by the
    labelled set's standard deviation per dimension. The cell width, unless
    given, follows the data: ``2 IQR n^(-1/(d+2))`` (a Freedman-Diaconis-type
    rule for d dimensions, median over dimensions, n = labelled stars). The
    interval comes from resampling both sets with replacement.

    Args:
        labelled, unlabelled: latent vectors (n, d) and (m, d).
        width: cell width in scaled units (None: the rule above).
        n_bootstrap: bootstrap resamples for the 16-84% interval.
        seed: the bootstrap's seed.

    Returns:
        dict with ``gain``, ``interval_16_84`` (basic bootstrap),
        ``bootstrap_percentiles_16_84``, ``bootstrap_bias``, ``cell_width``,
        ``v_sup``, ``v_all`` (in scaled units), the set sizes and the method.
    """
    labelled, unlabelled = np.asarray(labelled, float), np.asarray(unlabelled, float)
    if labelled.ndim != 2 or unlabelled.ndim != 2 or labelled.shape[1] != unlabelled.shape[1]:
        raise ValueError(f"need two arrays (n, d) with the same d, got {labelled.shape} and "
                         f"{unlabelled.shape}")
    if len(labelled) < 2:
        raise ValueError("need at least 2 labelled points")
    scale = labelled.std(axis=0)
    scale[scale == 0] = 1.0
    lab, unl = labelled / scale, unlabelled / scale
    d = lab.shape[1]
    if width is None:
        iqr = np.subtract(*np.percentile(lab, [75, 25], axis=0))
        width = float(np.median(2 * iqr * len(lab) ** (-1.0 / (d + 2))))
    origin = np.minimum(lab.min(axis=0), unl.min(axis=0) if len(unl) else lab.min(axis=0))

    def gain_of(a, b):
        v_sup = _volume(a, origin, width)
        v_all = _volume(np.vstack([a, b]), origin, width)
        return (v_all - v_sup) / v_sup, v_sup, v_all
    gain, v_sup, v_all = gain_of(lab, unl)
    rng = np.random.default_rng(seed)
    boot = [gain_of(lab[rng.integers(0, len(lab), len(lab))],
                    unl[rng.integers(0, len(unl), len(unl))])[0] for _ in range(n_bootstrap)]
    lo, hi = np.percentile(boot, [16, 84]) if boot else (np.nan, np.nan)
    return {"gain": float(gain), "interval_16_84": [float(2 * gain - hi), float(2 * gain - lo)],
            "bootstrap_percentiles_16_84": [float(lo), float(hi)],
            "bootstrap_bias": float(np.mean(boot) - gain) if boot else None,
            "cell_width": width, "v_sup": v_sup, "v_all": v_all,
            "n_labelled": len(lab), "n_unlabelled": len(unl),
            "method": "occupied cells of a grid in the latent space scaled by the labelled "
                      f"set's std; width 2 IQR n^(-1/(d+2)); basic bootstrap 16-84% from "
                      f"{n_bootstrap} resamples"}
