"""Evaluate an sVAE (and optionally a Cannon) on held-out stars: metrics, figures, claims.

Used by ``xpsvae evaluate`` and ``xpsvae demo``. Both models are scored in the
sVAE's standardised units, on the same stars where both apply.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from ..cannon import Cannon
from ..core.errors import SpectraError
from ..io.spectra import SpectraSet
from ..svae import SVAE
from .figures import (
    plot_figure2,
    plot_figure3,
    plot_normalised_errors,
    plot_reconstructions,
    plot_scatter_vs_error,
)
from .metrics import (
    edge_comparison,
    evaluate_svae,
    latent_volume_gain,
    normalised_errors,
    reconstruction_metrics,
    tail_masks,
)

#: Thresholds of the paper's three claims as this project tests them (the paper's Section 3).
CLAIM_LIMITS = {"max_edge_ratio": 1.10, "min_scatter_ratio": 30.0, "max_tail_fraction_ratio": 0.1}


def figure2_inputs(spectra: SpectraSet) -> list:
    """Inputs of Figure 2: the 3rd BP and 3rd RP coefficient, or samples near 450 and 750 nm."""
    if spectra.kind == "coefficients":
        return [2, spectra.n_inputs // 2 + 2]
    if spectra.wavelength_nm is not None:
        return [int(np.argmin(np.abs(spectra.wavelength_nm - w))) for w in (450.0, 750.0)]
    return [spectra.n_inputs // 4, 3 * spectra.n_inputs // 4]


def held_out_stars(model: SVAE, spectra: SpectraSet, include_training: bool = False
                   ) -> Tuple[SpectraSet, dict]:
    """``spectra`` less the model's own training stars, and a note of what was left out.

    A model records the source_ids it was fitted on (``training_stars.safetensors``);
    figures on those stars are not held-out figures. With ``include_training`` they are
    kept, and the note says how many there are.

    Raises:
        SpectraError: every star given is a training star (and ``include_training`` is off).
    """
    recorded = model.training_source_ids
    note = {"training_stars_recorded": recorded is not None, "training_stars_given": 0,
            "training_stars_left_out": 0}
    if recorded is None or spectra.source_id is None or not len(spectra):
        return spectra, note
    seen = np.isin(spectra.source_id, recorded)
    note["training_stars_given"] = int(seen.sum())
    if not seen.any() or include_training:
        return spectra, note
    source = spectra.accounting.source if spectra.accounting else "the stars given"
    if seen.all():
        raise SpectraError(f"{source}: all {len(spectra)} stars are among the model's own "
                           "training stars, so no figure would be held out: evaluate on stars "
                           "it was not fitted on, or add --include-training-stars to score "
                           "them anyway (the report then says they are training stars)")
    note["training_stars_left_out"] = int(seen.sum())
    return spectra.subset(np.flatnonzero(~seen)), note


def assess(model: SVAE, test: SpectraSet, out_dir: str, cannon: Optional[Cannon] = None,
           latent_stars: Optional[SpectraSet] = None, device: str = "cpu",
           figure_suffix: str = "", progress_title: str = "",
           outputs: Optional[dict] = None) -> dict:
    """Metrics and figures of ``model`` (and ``cannon``) on the held-out ``test`` stars.

    Args:
        model: trained sVAE.
        test: held-out stars (labels used for the tails, the Cannon and Figure 2).
            Partial stars (some inputs unmeasured) get a block of their own,
            ``svae.partial``, their NLL over their measured inputs; every other
            figure is on the complete stars.
        out_dir: where ``figures/`` go.
        cannon: a fitted Cannon to compare with, or None.
        latent_stars: stars for Figure 3 and the latent-volume gain (default:
            ``test``); those lacking [Fe/H] are the unlabelled set.
        device: where to run the sVAE.
        figure_suffix: appended to figure names (for a second model).
        progress_title: words for figure titles.
        outputs: ``model.standardised_outputs(test, device)``, if already computed.

    Returns:
        dict with ``svae`` blocks, and where a Cannon is given ``cannon``
        blocks, ``comparison``, ``latent_volume_gain`` and ``claims``.
    """
    fig_dir = os.path.join(out_dir, "figures")
    partial = None
    if outputs is None and not test.observed.all():  # the paper's figures: complete stars
        whole = test.observed.all(axis=1)
        partial = test.subset(np.flatnonzero(~whole))
        test = test.subset(np.flatnonzero(whole))
    out = outputs if outputs is not None else model.standardised_outputs(test, device)
    result = {"svae": evaluate_svae(model, test, outputs=out)}
    if partial is not None:
        p = model.standardised_outputs(partial, device)
        result["svae"]["partial"] = reconstruction_metrics(p["x"], p["err"], p["x_hat"],
                                                           p["scatter"])
        result["svae"]["partial"]["mean_observed_inputs"] = float(partial.observed.sum(1).mean())
    r_svae = normalised_errors(out["x"], out["err"], out["x_hat"], out["scatter"])
    plot_normalised_errors(r_svae, os.path.join(fig_dir, f"normalised_errors{figure_suffix}.png"),
                           f"held-out stars, all inputs {progress_title}".strip())
    plot_scatter_vs_error(test.wavelength_nm, out["err"], out["scatter"],
                          os.path.join(fig_dir, f"scatter_vs_error{figure_suffix}.png"))
    if figure_suffix:
        return result
    _reconstruction_figure(model, test, out, fig_dir)

    latent_stars = latent_stars if latent_stars is not None else test
    if latent_stars.labels is not None and "fe_h" in latent_stars.labels:
        latent, _ = model.encode(latent_stars, device)
        has = np.isfinite(np.asarray(latent_stars.labels["fe_h"], dtype=float))
        if has.any() and (~has).any():
            gain = latent_volume_gain(latent[has], latent[~has])
            result["latent_volume_gain"] = gain
            plot_figure3(latent[has], latent[~has], os.path.join(fig_dir, "figure3_latent.png"),
                         gain)

    if cannon is None:
        return result
    labelled, test_labels, (y, err, prediction, scatter), result["cannon"] = cannon_blocks(
        model, cannon, test, out)

    r_cannon = normalised_errors(y, err, prediction, scatter)
    edges = edge_comparison(r_svae[labelled], r_cannon, test.kind)
    scatter_ratio = (np.median(np.broadcast_to(scatter, y.shape))
                     / np.median(out["scatter"][labelled]))
    result["comparison"] = {"stars": int(labelled.sum()), "edges_mean_abs_r": edges,
                            "median_scatter_cannon_over_svae": float(scatter_ratio)}
    for index in figure2_inputs(test):
        name = test.input_names()[index]
        plot_figure2(test_labels, name, r_svae[labelled][:, index], r_cannon[:, index],
                     out["scatter"][labelled][:, index], float(scatter[index]),
                     os.path.join(fig_dir, f"figure2_{name}.png"))
    result["claims"] = _claims(result)
    return result


def cannon_blocks(model: SVAE, cannon: Cannon, test: SpectraSet, out: Optional[dict] = None
                  ) -> tuple:
    """Score a Cannon on the labelled ``test`` stars, in the sVAE's standardised units.

    Args:
        model: the sVAE whose standardisation sets the units.
        cannon: a fitted Cannon.
        test: held-out stars with the Cannon's labels.
        out: ``model.standardised_outputs(test)``, if already computed.

    Returns:
        (labelled, test_labels, (x, err, prediction, scatter), blocks): which test stars
        have every label, and their label table; their standardised spectra, errors, the
        Cannon's prediction and its population scatter; and the ``test``, ``cool``,
        ``low_logg`` and ``fit`` blocks.
    """
    out = out if out is not None else model.standardised_outputs(test)
    labels = cannon.labels_of(test)
    labelled = np.isfinite(labels).all(axis=1)
    y = out["x"][labelled]
    err = out["err"][labelled]
    # The Cannon's spectra, moved into the sVAE's standardised units.
    prediction = model.standardizer.transform(cannon.predict(labels[labelled]))
    scatter = cannon.population_scatter() / model.standardizer.std
    test_labels = test.labels.iloc[np.flatnonzero(labelled)].reset_index(drop=True)
    blocks = {"test": reconstruction_metrics(y, err, prediction, scatter)}
    for name, mask in tail_masks(test_labels).items():
        blocks[name] = reconstruction_metrics(y[mask], err[mask], prediction[mask], scatter)
    blocks["fit"] = {"labels": list(cannon.label_names), "scatter_method": cannon.scatter_method,
                     "n_train_stars_used": cannon.fit_info.n_stars_used if cannon.fit_info else None,
                     "n_train_stars_without_labels":
                         cannon.fit_info.n_stars_without_labels if cannon.fit_info else None,
                     "n_test_stars_without_labels": int((~labelled).sum())}
    return labelled, test_labels, (y, err, prediction, scatter), blocks


def _claims(result: dict) -> dict:
    edges = result["comparison"]["edges_mean_abs_r"]
    svae, cannon = result["svae"], result["cannon"]
    tails = {}
    for tail in ("cool", "low_logg"):
        if tail in svae and tail in cannon and cannon[tail].get("n_stars"):
            c = cannon[tail]["frac_abs_r_gt_5"]
            tails[tail] = {"svae_frac_abs_r_gt_5": svae[tail]["frac_abs_r_gt_5"],
                           "cannon_frac_abs_r_gt_5": c,
                           "ratio": svae[tail]["frac_abs_r_gt_5"] / c if c > 0 else None}
    gain = result.get("latent_volume_gain")
    return {
        "as_good_with_smaller_scatter": {
            "edge_ratios": {side: edges[side]["ratio"] for side in edges},
            "median_scatter_cannon_over_svae":
                result["comparison"]["median_scatter_cannon_over_svae"],
            "supported": bool(all(e["ratio"] <= CLAIM_LIMITS["max_edge_ratio"]
                                  for e in edges.values())
                              and result["comparison"]["median_scatter_cannon_over_svae"]
                              >= CLAIM_LIMITS["min_scatter_ratio"]),
        },
        "robust_in_the_tails": {
            "tails": tails,
            "supported": bool(tails) and all(t["ratio"] is not None and
                                             t["ratio"] <= CLAIM_LIMITS["max_tail_fraction_ratio"]
                                             for t in tails.values()),
        },
        "covers_more_latent_volume": {
            "gain": None if gain is None else gain["gain"],
            "interval_16_84": None if gain is None else gain["interval_16_84"],
            "supported": bool(gain is not None and gain["interval_16_84"][0] > 0),
        },
        "limits": CLAIM_LIMITS,
    }


def _reconstruction_figure(model: SVAE, test: SpectraSet, out: dict, fig_dir: str) -> None:
    picks = _example_stars(test)
    reconstruction = model.decode(out["latent_mean"][picks])
    scatter = model.scatter(out["latent_mean"][picks])
    titles = [f"Gaia DR3 {test.source_id[i]}" for i in picks]
    if test.labels is not None and {"teff", "logg"} <= set(test.labels):
        titles = [f"{t}\nTeff {test.labels['teff'][i]:.0f} K, logg {test.labels['logg'][i]:.2f}"
                  for t, i in zip(titles, picks)]
    unit = "flux / medflux" if "medflux" in (test.normalisation or "") else \
        ("coefficient / G flux" if test.kind == "coefficients" else "flux")
    plot_reconstructions(test.wavelength_nm, test.values[picks], test.errors[picks],
                         reconstruction, scatter, titles,
                         os.path.join(fig_dir, "reconstructions.png"), unit=unit)


def _example_stars(test: SpectraSet) -> list:
    """Stars nearest a cool giant, a red-clump giant, a Sun-like dwarf and a hot star
    (or the first four stars when there are no labels)."""
    if test.labels is None or not {"teff", "logg"} <= set(test.labels):
        return list(range(min(4, len(test))))
    teff = np.asarray(test.labels["teff"], dtype=float)
    logg = np.asarray(test.labels["logg"], dtype=float)
    picks = []
    for t, g in ((3600, 0.8), (4700, 2.5), (5800, 4.4), (9000, 4.0)):
        d = ((teff - t) / 500) ** 2 + (logg - g) ** 2
        picks.append(int(np.nanargmin(d)))
    return picks
