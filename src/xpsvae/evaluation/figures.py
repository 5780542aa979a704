"""PNG figures of a trained model: learning curves, reconstructions, normalised errors."""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core.files import atomic_path  # noqa: E402


def _own_style(plot):
    """Draw with matplotlib's plain text rendering whatever other libraries set globally
    (GaiaXPy's import turns on LaTeX, which most machines lack)."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"text.usetex": False}):
            return plot(*args, **kwargs)
    return wrapper

TERM_LABELS = {"loss": "total loss", "chi2": r"$\chi^2$ term", "penalty": r"penalty $P$",
               "kl": "KL term"}


@_own_style
def plot_history(history: List[Dict[str, float]], path: str, title: str = "") -> str:
    """Train and validation loss per epoch, one panel per term of the paper's eqs 1-5."""
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


@_own_style
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


@_own_style
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


@_own_style
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


LABEL_AXES = {"teff": r"$T_\mathrm{eff}$ (K)", "logg": r"$\log g$ (dex)", "fe_h": "[Fe/H] (dex)"}
TAIL_STYLE = {"cool": ("teff", 4000.0, "tab:green", r"$T_\mathrm{eff}$ < 4000 K"),
              "low_logg": ("logg", 1.0, "gold", r"$\log g$ < 1")}


def _binned_mode(label: np.ndarray, r: np.ndarray, n_bins: int = 25):
    """Centre of each label bin and the mode of r in it (from a histogram of r)."""
    edges = np.nanpercentile(label, np.linspace(0.5, 99.5, n_bins + 1))
    centres, modes = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (label >= lo) & (label < hi) & np.isfinite(r)
        if sel.sum() < 20:
            continue
        counts, r_edges = np.histogram(np.clip(r[sel], -10, 10), bins=40)
        k = np.argmax(counts)
        centres.append(0.5 * (lo + hi))
        modes.append(0.5 * (r_edges[k] + r_edges[k + 1]))
    return np.array(centres), np.array(modes)


@_own_style
def plot_figure2(labels, input_name: str, r_svae: np.ndarray, r_cannon: np.ndarray,
                 scatter_svae: np.ndarray, scatter_cannon: float, path: str,
                 unit: str = "standardised units") -> str:
    """The paper's Figure 2 for one input: normalised errors and scatter against labels.

    Rows: sVAE normalised error, Cannon normalised error, sVAE per-star scatter
    (the Cannon's population scatter as a grey line). Columns: Teff, logg,
    [Fe/H]. The mode of the normalised error per label bin is drawn in purple;
    the cool and low-gravity tails are coloured.
    """
    names = [c for c in ("teff", "logg", "fe_h") if c in labels]
    fig, axes = plt.subplots(3, len(names), figsize=(4.6 * len(names), 9.5), sharex="col",
                             squeeze=False)
    for col, name in enumerate(names):
        x = np.asarray(labels[name], dtype=float)
        tails = {t: np.asarray(labels[c], dtype=float) < cut
                 for t, (c, cut, _, _) in TAIL_STYLE.items() if c in labels}
        rest = ~np.logical_or.reduce(list(tails.values())) if tails else np.ones(len(x), bool)
        for row, (values, title) in enumerate(((r_svae, "sVAE"), (r_cannon, "Cannon"),
                                               (scatter_svae, "sVAE scatter"))):
            ax = axes[row, col]
            ok = np.isfinite(values) & np.isfinite(x)
            ax.scatter(x[ok & rest], values[ok & rest], s=2, color="0.35", alpha=0.35,
                       rasterized=True)
            for t, mask in tails.items():
                ax.scatter(x[ok & mask], values[ok & mask], s=3, color=TAIL_STYLE[t][2],
                           alpha=0.6, label=TAIL_STYLE[t][3], rasterized=True)
            if row < 2:
                centres, modes = _binned_mode(x[ok], values[ok])
                ax.plot(centres, modes, color="purple", lw=1.5, label="mode per bin")
                for level in (-5, 5):
                    ax.axhline(level, color="k", lw=0.5, ls=":")
                ax.set_ylim(-15, 15)
                ax.set_ylabel(f"{title}: normalised error")
            else:
                ax.axhline(scatter_cannon, color="0.5", lw=2, label="Cannon population scatter")
                ax.set_yscale("log")
                ax.set_ylabel(f"scatter of {input_name} ({unit})")
            if row == 2:
                ax.set_xlabel(LABEL_AXES.get(name, name))
    axes[0, 0].legend(fontsize=7, markerscale=3, loc="lower left")
    axes[2, 0].legend(fontsize=7, markerscale=3, loc="lower left")
    fig.suptitle(f"Normalised errors and scatter of {input_name} against APOGEE labels "
                 "(held-out stars)")
    fig.tight_layout()
    return _save(fig, path)


@_own_style
def plot_figure3(latent_labelled: np.ndarray, latent_unlabelled: np.ndarray, path: str,
                 gain: Optional[dict] = None) -> str:
    """The paper's Figure 3: latent projections of labelled against unlabelled stars.

    A lower-triangle grid of every pair of latent dimensions.
    """
    d = latent_labelled.shape[1]
    fig, axes = plt.subplots(d - 1, d - 1, figsize=(2.6 * (d - 1), 2.6 * (d - 1)), squeeze=False)
    for i in range(1, d):
        for j in range(d - 1):
            ax = axes[i - 1, j]
            if j >= i:
                ax.axis("off")
                continue
            # labelled first: the (fewer) unlabelled stars are drawn on top, where they show
            ax.scatter(latent_labelled[:, j], latent_labelled[:, i], s=1, color="tab:orange",
                       alpha=0.15, rasterized=True, label="with APOGEE labels")
            ax.scatter(latent_unlabelled[:, j], latent_unlabelled[:, i], s=1, color="tab:blue",
                       alpha=0.4, rasterized=True, label="without [Fe/H] (unlabelled)")
            if i == d - 1:
                ax.set_xlabel(f"$z_{j}$")
            if j == 0:
                ax.set_ylabel(f"$z_{i}$")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    text = ""
    if gain is not None:
        lo, hi = gain["interval_16_84"]
        text = (f"\nlatent volume gain dV/V_sup = {gain['gain']:.1%} "
                f"(16-84%: {lo:.1%} to {hi:.1%})")
    fig.legend(handles, labels, loc="upper right", markerscale=8, fontsize=10)
    fig.suptitle("sVAE latent means (dimensionless), every pair of dimensions" + text)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)
