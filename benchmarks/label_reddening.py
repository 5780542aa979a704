"""A label head shown reddened copies of the hot training stars, against the head as it is.

Behind dust, a hot star's spectrum and colours look like a cooler star's: in the demo, two
test stars of 17,060 K and 12,930 K, targeted with A_K 0.22 and 0.31, were put near
6,300 K with a sigma of 350 K (docs/labels.md). The training stars hold few reddened hot
stars to learn the difference from. Here each labelled training star hotter than
``--hot`` K is copied ``--copies`` times (and, with ``--every-star-av``, every training
star once more), each copy behind its own extinction A_V, drawn uniformly from ``--av``
(from ``--every-star-av`` for the latter), through Gordon et al. (2023)'s average Milky Way curve at
R_V = 3.1 (``dust_extinction``, ``pip install dust_extinction``):

* its sampled spectrum times 10^(-0.4 A(lambda)), divided again by its median (the
  library's spectra are divided by each star's median flux), its errors alike;
* its J, H and K magnitudes plus A at 1.235, 1.662 and 2.159 microns; its BP and RP plus
  the extinction of the star's own spectrum over 336-680 nm and 640-1020 nm (photon
  counts through top-hat bands, a stand-in for Gaia's passbands);
* its labels unchanged.

With ``--extinction COLUMN`` (the library's ``ak_targ``: APOGEE's K-band extinction from
H - [4.5], which a star with 2MASS and WISE can have), the heads are also fitted with that
column as one more side column (values outside -0.2 to 5 mag taken as missing; a copy's
raised by its own A_K), which tells a reddened hot star from a cool one.

A label model (``--labels``: the demo's, ``DEMO_OUT/labels``) gives the sVAE, the side
columns and the head's recipe. For each seed of ``--seeds`` two heads are fitted as
``LabelModel.fit`` fits them, one on the training stars, one on them and the copies (the
validation share drawn from the training stars alone). Each is scored on the 3,963 test
stars, with the test stars hotter than 10,000 K apart, and the far-off stars of
``benchmarks/label_log_teff.py`` listed. The last line is a JSON object.

    python benchmarks/label_reddening.py --labels DEMO_OUT/labels   # ~5 min a seed, 2 cores
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

#: Effective wavelengths of 2MASS J, H and K_s, microns.
TWO_MASS = {"j": 1.235, "h": 1.662, "k": 2.159}
#: Top-hat stand-ins for Gaia's BP and RP passbands, nm.
BANDS = {"gaiaedr3_phot_bp_mean_mag": (336.0, 680.0), "gaiaedr3_phot_rp_mean_mag": (640.0, 1020.0)}


def redden(stars, a_v: np.ndarray, wavelength_nm: np.ndarray, extinction: str = ""):
    """Copies of ``stars`` behind extinction ``a_v`` (one per star): spectra, errors, the
    magnitudes of the side columns and the K-band ``extinction`` column (module docstring)."""
    import astropy.units as u
    from dust_extinction.parameter_averages import G23
    curve = G23(Rv=3.1)
    ratio = curve(wavelength_nm * u.nm)  # A(lambda) / A_V
    factor = 10 ** (-0.4 * a_v[:, None] * ratio[None, :])
    values = stars.values * factor
    scale = np.median(values, axis=1, keepdims=True)
    out = stars.subset(np.arange(len(stars)))
    out.values = (values / scale).astype(stars.values.dtype)
    out.errors = (stars.errors * factor / scale).astype(stars.errors.dtype)
    table = out.labels.copy()
    for band, microns in TWO_MASS.items():
        table[band] = table[band] + a_v * float(curve(microns * u.micron))
    if extinction:
        table[extinction] = table[extinction] + a_v * float(curve(TWO_MASS["k"] * u.micron))
    photons = stars.values * wavelength_nm[None, :]
    for column, (lo, hi) in BANDS.items():
        inside = (wavelength_nm >= lo) & (wavelength_nm <= hi)
        dimmed = (photons * factor)[:, inside].sum(1) / photons[:, inside].sum(1)
        table[column] = table[column] - 2.5 * np.log10(dimmed)
    out.labels = table.reset_index(drop=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", required=True, help="a label model fitted on the benchmark "
                                                   "split's training stars (DEMO_OUT/labels)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--hot", type=float, default=7000.0, help="copy stars hotter than this, K")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--av", default="0.5,4", help="A_V drawn uniformly from this range")
    p.add_argument("--every-star-av", default="",
                   help="also one copy of every training star, A_V drawn from this range")
    p.add_argument("--extinction", default="",
                   help="a K-band extinction column (ak_targ) to fit with as a side column too")
    p.add_argument("--worst", type=int, default=6, help="how many far-off stars to list")
    args = p.parse_args()
    import pandas as pd

    from xpsvae import benchmark_sets, load_apogee_library
    from xpsvae.evaluation.labels import label_blocks, residuals
    from xpsvae.labels import LabelHead, LabelModel, label_columns
    from xpsvae.labels.classes import high_alpha
    model = LabelModel.load(args.labels)
    labels = model.labels
    train, test = benchmark_sets(load_apogee_library())
    y_all = label_columns(train.labels, labels)[0]
    keep = np.isfinite(y_all).any(axis=1) & train.observed.all(axis=1)
    stars = train.subset(np.flatnonzero(keep))
    teff = np.asarray(stars.labels["teff"], np.float64)
    hot = np.flatnonzero(teff > args.hot)
    rng = np.random.default_rng(0)
    low, high = (float(v) for v in args.av.split(","))
    copies = [redden(stars.subset(hot), rng.uniform(low, high, len(hot)), stars.wavelength_nm,
                     args.extinction) for _ in range(args.copies)]
    if args.every_star_av:
        low, high = (float(v) for v in args.every_star_av.split(","))
        copies.append(redden(stars, rng.uniform(low, high, len(stars)), stars.wavelength_nm,
                             args.extinction))
    print(f"{len(stars)} training stars, {len(hot)} hotter than {args.hot:.0f} K, "
          f"{args.copies} reddened copies each", flush=True)

    def extinction(s):
        a_k = np.asarray(s.labels[args.extinction], np.float64)
        return np.where((a_k >= -0.2) & (a_k <= 5), a_k, np.nan)[:, None]

    def features(s, with_extinction):
        x = model.features(s)
        return np.hstack([x, extinction(s)]) if with_extinction else x

    def fit_set(parts, with_extinction=False):
        x = np.vstack([features(s, with_extinction) for s in parts])
        y, err = (np.vstack(a) for a in zip(*(label_columns(s.labels, labels) for s in parts)))
        return x, y, err, with_extinction

    sets = {"as_is": fit_set([stars])}
    if copies:
        sets["reddened_copies"] = fit_set([stars, *copies])
    if args.extinction:
        sets["extinction"] = fit_set([stars], True)
        if copies:
            sets["copies_extinction"] = fit_set([stars, *copies], True)
    last = list(sets)[-1]  # listed beside as_is among the far-off stars
    x_tests = {False: model.features(test)}
    if args.extinction:
        x_tests[True] = features(test, True)
    truth = test.labels
    hot_test = np.asarray(truth["teff"], np.float64) > 10000
    rows, results, worst = [], {}, {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name, (x, y, err, with_extinction) in sets.items():
            x_test = x_tests[with_extinction]
            classes = None
            if {"fe_h", "alpha_m"} <= set(labels) and model.head.class_prior is not None:
                fe_h, alpha_m = (y[:, labels.index(n)] for n in ("fe_h", "alpha_m"))
                classes = np.where(np.isfinite(fe_h) & np.isfinite(alpha_m),
                                   high_alpha(fe_h, alpha_m), np.nan)
            head = LabelHead(replace(model.head.config, seed=seed))
            original = np.zeros(len(y), dtype=bool)
            original[:len(stars)] = True
            head.fit(x, y, err, classes, validation=head.validation(len(y), original))
            mean, sigma = head.predict(x_test)
            k = head.interval_factor(mean)
            table = pd.DataFrame({**{n: mean[:, i] for i, n in enumerate(labels)},
                                  **{f"{n}_err": sigma[:, i] for i, n in enumerate(labels)},
                                  **{f"{n}_lower": mean[:, i] - k[:, i] * sigma[:, i]
                                     for i, n in enumerate(labels)},
                                  **{f"{n}_upper": mean[:, i] + k[:, i] * sigma[:, i]
                                     for i, n in enumerate(labels)}})
            blocks = label_blocks(table, truth, labels)
            hot_blocks = label_blocks(table[hot_test].reset_index(drop=True),
                                      truth[hot_test].reset_index(drop=True), ["teff", "logg"])
            results[f"{name}_seed{seed}"] = {"blocks": blocks, "hot_test_stars": hot_blocks}
            for label in labels:
                for subset, b in blocks[label].items():
                    rows.append(f"{name:17s} {seed}  {label:8s}{subset:11s} "
                                f"{b['robust_sigma']:9.4g} {b['rmse']:9.4g} "
                                f"{b['std_z']:6.3f} {b['coverage_1sigma']:6.3f}")
            for label, b in hot_blocks.items():
                rows.append(f"{name:17s} {seed}  {label:8s}{'>10,000 K':11s} "
                            f"{b['test']['robust_sigma']:9.4g} {b['test']['rmse']:9.4g} "
                            f"{b['test']['std_z']:6.3f} {b['test']['coverage_1sigma']:6.3f}")
            if seed == int(args.seeds.split(",")[0]):
                z = residuals(table["teff"], truth["teff"], table["teff_err"],
                              truth.get("teff_err"))[1]
                worst[name] = (table, z)
    print("head              seed label   subset      robust_sigma   rmse   std_z  in_1sigma")
    print("\n".join(rows))
    table, z = worst["as_is"]
    order = np.argsort(-np.nan_to_num(np.abs(z)))[:args.worst]
    listed = []
    for i in order:
        other, z_other = worst[last]
        listed.append({"apogee_teff": float(truth["teff"].iloc[i]),
                       "as_is": [float(table["teff"][i]), float(table["teff_err"][i]),
                                 float(z[i])],
                       last: [float(other["teff"][i]), float(other["teff_err"][i]),
                              float(z_other[i])]})
    print(f"farthest off in Teff as is (predicted, sigma, z), and {last}:")
    for w in listed:
        print(f"  {w['apogee_teff']:8.0f} K   as is {w['as_is'][0]:7.0f} ± {w['as_is'][1]:5.0f} "
              f"(z {w['as_is'][2]:6.1f})   {last} {w[last][0]:7.0f} ± "
              f"{w[last][1]:5.0f} (z {w[last][2]:6.1f})")
    print(json.dumps({"labels": args.labels, "seeds": args.seeds, "hot": args.hot,
                      "copies": args.copies, "av": args.av, "every_star_av": args.every_star_av,
                      "extinction": args.extinction, "n_hot": int(len(hot)),
                      "results": results, "worst_teff": listed}))


if __name__ == "__main__":
    main()
