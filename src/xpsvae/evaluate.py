"""Quality figures of a model on held-out stars (metrics.json).

All figures are computed in standardised units, decoding the latent mean
(no sampling noise), with ``w = err^2 + scatter^2`` and the normalised error
``r = (x - x_hat) / sqrt(w)``.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .data import SpectraSet

#: Label cuts of the paper's tails (SPEC §6).
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
        no 2*pi term, no KL); ``std_r``; ``mean_abs_r``; ``frac_abs_r_gt_5`` and
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
    nll = 0.5 * (r ** 2 + np.log(w)).sum(axis=1)
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
