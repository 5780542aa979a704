"""PNG figures of a label model: predicted against survey labels, coverage, a Kiel diagram."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pandas as pd

from ..labels.model import EXTRAPOLATED
from .figures import _own_style, _save, plt

#: Axis titles with units.
LABEL_TITLES = {"teff": "Teff (K)", "logg": "log g (dex)", "fe_h": "[Fe/H] (dex)",
                "alpha_m": "[α/M] (dex)"}


def _title(name: str) -> str:
    return LABEL_TITLES.get(name, name)


@_own_style
def plot_predicted_vs_survey(predicted: pd.DataFrame, truth: pd.DataFrame,
                             labels: Sequence[str], path: str) -> str:
    """Per label: predicted against the survey's value (top) and the residual (bottom)."""
    fig, axes = plt.subplots(2, len(labels), figsize=(4 * len(labels), 6.5),
                             gridspec_kw={"height_ratios": [2, 1]}, squeeze=False)
    for j, name in enumerate(labels):
        t = np.asarray(truth[name], np.float64)
        p = predicted[name].to_numpy()
        ok = np.isfinite(t) & np.isfinite(p)
        r = p[ok] - t[ok]
        lo, hi = np.percentile(t[ok], [0.5, 99.5])
        top, bottom = axes[0, j], axes[1, j]
        top.hexbin(t[ok], p[ok], gridsize=60, bins="log", extent=(lo, hi, lo, hi), cmap="viridis")
        top.plot([lo, hi], [lo, hi], color="black", lw=0.8, ls="--")
        top.set_xlim(lo, hi), top.set_ylim(lo, hi)
        top.set_ylabel(f"predicted {_title(name)}")
        robust = 1.4826 * np.median(np.abs(r - np.median(r)))
        top.set_title(f"{_title(name)}: robust σ {robust:.3g}, {ok.sum():,} stars")
        bottom.hexbin(t[ok], r, gridsize=(60, 20), bins="log", cmap="viridis",
                      extent=(lo, hi, -5 * robust, 5 * robust))
        bottom.axhline(0, color="black", lw=0.8, ls="--")
        bottom.set_xlim(lo, hi), bottom.set_ylim(-5 * robust, 5 * robust)
        bottom.set_xlabel(f"APOGEE {_title(name)}")
        bottom.set_ylabel("predicted − APOGEE")
    fig.suptitle("Label model on the held-out test stars")
    fig.tight_layout()
    return _save(fig, path)


@_own_style
def plot_coverage(z_by_label: Dict[str, np.ndarray], path: str) -> str:
    """Share of stars with |z| < k against the Gaussian share, k from 0 to 3, per label
    (``z``: NaN where a star lacks the label)."""
    from scipy.stats import norm
    k = np.linspace(0, 3, 61)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(k, 2 * norm.cdf(k) - 1, color="black", lw=2, label="Gaussian (ideal)")
    for name, z in z_by_label.items():
        z = np.abs(z[np.isfinite(z)])
        ax.plot(k, [(z < v).mean() for v in k], label=_title(name))
    ax.set_xlabel("k: |predicted − APOGEE| / √(σ² + σ_APOGEE²) below k")
    ax.set_ylabel("share of test stars")
    ax.set_title("Coverage of the predicted uncertainties")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


@_own_style
def plot_kiel(predicted: pd.DataFrame, path: str, title: str) -> str:
    """Predicted Teff against log g, coloured by predicted [Fe/H]; in grey the stars whose
    [Fe/H] is extrapolated (``fe_h_extrapolated``, where the table has it)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    keep = ~predicted["labels_ood"].to_numpy()
    column = f"fe_h{EXTRAPOLATED}"
    guessed = predicted[column].to_numpy() if column in predicted \
        else np.zeros(len(predicted), dtype=bool)
    grey = keep & guessed
    if grey.any():
        ax.scatter(predicted["teff"][grey], predicted["logg"][grey], s=3, c="0.6",
                   rasterized=True, label=f"[Fe/H] extrapolated ({int(grey.sum()):,} stars)")
        ax.legend(loc="lower left", markerscale=4)
    keep &= ~guessed
    sc = ax.scatter(predicted["teff"][keep], predicted["logg"][keep], c=predicted["fe_h"][keep],
                    s=3, cmap="plasma", vmin=-1.5, vmax=0.4, rasterized=True)
    ax.invert_xaxis(), ax.invert_yaxis()
    ax.set_xlabel("predicted Teff (K)")
    ax.set_ylabel("predicted log g (dex)")
    ax.set_title(title)
    fig.colorbar(sc, ax=ax, label="predicted [Fe/H] (dex)")
    return _save(fig, path)
