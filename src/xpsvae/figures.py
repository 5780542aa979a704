"""PNG figures of a trained model: learning curves, reconstructions, normalised errors."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TERM_LABELS = {"loss": "total loss", "chi2": r"$\chi^2$ term", "penalty": r"penalty $P$",
               "kl": "KL term"}


def plot_history(history: List[Dict[str, float]], path: str, title: str = "") -> str:
    """Train and validation loss per epoch, one panel per term of SPEC §4."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, term in zip(axes, TERM_LABELS):
        ax.plot(epochs, [h[f"train_{term}"] for h in history], label="train")
        if f"val_{term}" in history[0]:
            ax.plot(epochs, [h[f"val_{term}"] for h in history], label="validation (latent mean)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{TERM_LABELS[term]} (per star)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title or "sVAE learning curves")
    fig.tight_layout()
    return _save(fig, path)


def plot_reconstructions(wavelength_nm: Optional[np.ndarray], values: np.ndarray,
                         errors: np.ndarray, reconstruction: np.ndarray, scatter: np.ndarray,
                         titles: Sequence[str], path: str,
                         unit: str = "flux / medflux") -> str:
    """Observed spectra with errors, the reconstruction and its intrinsic scatter, and residuals."""
    n = len(values)
    x = wavelength_nm if wavelength_nm is not None else np.arange(values.shape[1])
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 5.6), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.3]}, squeeze=False)
    for k in range(n):
        top, bottom = axes[0, k], axes[1, k]
        top.fill_between(x, values[k] - errors[k], values[k] + errors[k], color="0.7",
                         label="observed $\\pm\\sigma_x$")
        top.plot(x, values[k], color="k", lw=0.8)
        top.plot(x, reconstruction[k], color="C3", lw=1.0, label="sVAE reconstruction")
        top.fill_between(x, reconstruction[k] - scatter[k], reconstruction[k] + scatter[k],
                         color="C3", alpha=0.3, label="$\\pm$ intrinsic scatter")
        top.set_title(titles[k], fontsize=9)
        top.set_ylabel(unit)
        w = np.sqrt(errors[k] ** 2 + scatter[k] ** 2)
        bottom.plot(x, (values[k] - reconstruction[k]) / w, color="C0", lw=0.7)
        bottom.axhline(0, color="k", lw=0.5)
        bottom.set_ylabel("normalised error")
        bottom.set_xlabel("wavelength (nm)" if wavelength_nm is not None else "input index")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_normalised_errors(r: np.ndarray, path: str, title: str = "") -> str:
    """Histogram of all normalised errors against the unit normal they should follow."""
    r = np.asarray(r).ravel()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(-8, 8, 161)
    ax.hist(np.clip(r, -8, 8), bins=bins, density=True, histtype="step", color="C0",
            label=f"sVAE, std = {r.std():.3f}")
    grid = np.linspace(-8, 8, 400)
    ax.plot(grid, np.exp(-grid ** 2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="N(0, 1)")
    ax.set_yscale("log")
    ax.set_ylim(1e-7, 1)
    ax.set_xlabel(r"normalised error $(x-\hat{x})/\sqrt{\sigma_x^2+\sigma_s^2}$ (clipped to $\pm$8)")
    ax.set_ylabel("density")
    ax.set_title(title or "held-out stars, all inputs")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_scatter_vs_error(wavelength_nm: Optional[np.ndarray], errors: np.ndarray,
                          scatter: np.ndarray, path: str, unit: str = "standardised units") -> str:
    """Median observational error and median intrinsic scatter per input, 16-84% bands."""
    x = wavelength_nm if wavelength_nm is not None else np.arange(errors.shape[1])
    fig, ax = plt.subplots(figsize=(7, 4))
    for data, label, color in ((errors, r"observational error $\sigma_x$", "0.3"),
                               (scatter, r"sVAE intrinsic scatter $\sigma_s$", "C3")):
        lo, med, hi = np.percentile(data, [16, 50, 84], axis=0)
        ax.plot(x, med, color=color, label=label)
        ax.fill_between(x, lo, hi, color=color, alpha=0.25)
    ax.set_yscale("log")
    ax.set_xlabel("wavelength (nm)" if wavelength_nm is not None else "input index")
    ax.set_ylabel(f"per-star value ({unit})")
    ax.set_title("median and 16-84% range over held-out stars")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
