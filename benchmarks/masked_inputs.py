"""Partial spectra: how far the latent, the anomaly score and the reconstruction move as
inputs go missing, for models trained with and without random masks, side by side.

On the benchmark split of the embedded APOGEE library (the demo's), one model is trained
on the training stars per ``--mask-fractions`` value (the default recipe; 0 is the
default model). Each of the 3,963 test stars is then scored complete, and again with

* ``random_10`` and ``random_30``: 10% and 30% of its samples masked at random;
* ``blue_15`` and ``red_15``: the bluest or the reddest 15% of its samples masked;
* ``no_bp``: every sample below 640 nm masked, where the flux is BP's alone, as when
  a star's BP spectrum is missing (the library is sampled flux; for a model of
  coefficients a band missing is half of its inputs).

For each case and model, against the same model's scores of the complete spectra:

* ``latent_shift``: per star, |change of the latent mean| in units of the complete
  spectrum's latent standard deviation (the encoder's, for that star), as the root
  mean square over the latent dimensions; its median and 90th percentile over the
  stars; ``latent_shift_own``, the same in units of the partial spectrum's own
  latent standard deviation, which its holes widen (multiple imputation,
  ``model.partial.imputation_variance``): is the complete spectrum's latent within
  what the partial one says it knows? And ``latent_shift_population``, the same in
  units of the spread of the test stars' latent means (one per dimension);
* ``anomaly_spearman``: the rank correlation of the anomaly scores (per measured
  input) with the complete spectra's, and the median absolute change of the score;
* ``nll_per_input``: the reconstruction NLL per input, on every input (the masked ones
  too, reconstructed from the partial spectrum's latent), against the complete
  spectrum's: how well the hidden part is recovered.

The goal: with 10% masked at random, a median latent shift below 1; with 30%, below 2;
the anomaly ranking's Spearman correlation at least 0.9. For scale, ``renoised``: the
complete spectra with their noise drawn again from their errors (nothing masked), the
shift in units of the encoder's latent standard deviation.

    python benchmarks/masked_inputs.py                       # the default model only
    python benchmarks/masked_inputs.py --mask-fractions 0,0.1  # and one trained with masks
    python benchmarks/masked_inputs.py --models DEMO_OUT/model,DEMO_OUT/labels/svae
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.stats import spearmanr

from xpsvae import SVAE, TrainConfig, load_apogee_library
from xpsvae.conform import MEDIAN_NAMES
from xpsvae.io.library import benchmark_sets

#: Where the flux is BP's alone (nm): below the overlap of the two bands.
BP_ONLY_NM = 640.0


def masks(test, rng: np.random.Generator) -> dict:
    """The masked cases: name -> (n_stars, n_inputs) bool, True where an input is hidden."""
    n, d = test.values.shape
    position = np.arange(d)
    edge = int(round(0.15 * d))
    cases = {"random_10": rng.random((n, d)) < 0.10, "random_30": rng.random((n, d)) < 0.30,
             "blue_15": np.broadcast_to(position < edge, (n, d)),
             "red_15": np.broadcast_to(position >= d - edge, (n, d))}
    if test.wavelength_nm is not None:
        cases["no_bp"] = np.broadcast_to(test.wavelength_nm < BP_ONLY_NM, (n, d))
    return cases


def nll_per_input(model: SVAE, test, latent: np.ndarray) -> np.ndarray:
    """Per star, the mean over all its inputs of r^2/2 + ln(w)/2, decoded from ``latent``."""
    x, err = model.standardizer.transform(test.values, test.errors)
    x_hat = (model.decode(latent) - model.standardizer.mean) / model.standardizer.std
    scatter = model.scatter(latent) / model.standardizer.std
    w = err.astype(np.float64) ** 2 + scatter ** 2
    return 0.5 * ((x - x_hat) ** 2 / w + np.log(w)).mean(axis=1)


def measure(model: SVAE, test, cases: dict) -> dict:
    full = model.score(test)
    full_nll = nll_per_input(model, test, full["latent_mean"])
    out = {"complete": {"nll_per_input": float(np.mean(full_nll))}}
    noisy = test.values + test.errors * np.random.default_rng(2).standard_normal(
        test.values.shape)
    renoised = model.score(noisy, test.errors)["latent_mean"]
    out["renoised"] = {"latent_shift_median": float(np.median(np.sqrt(
        (((renoised - full["latent_mean"]) / full["latent_std"]) ** 2).mean(axis=1))))}
    for name, hidden in cases.items():
        start = time.perf_counter()
        values = np.where(hidden, np.nan, test.values)
        errors = np.where(hidden, np.nan, test.errors)
        if model.info.get("normalisation") in MEDIAN_NAMES:
            # as a partial spectrum is read (xpsvae.conform): divided by the median of its
            # measured samples, which the model then refines (model.partial.median_scale)
            median = np.nanmedian(values, axis=1)[:, None]
            values, errors = values / median, errors / median
        partial = model.score(values, errors)
        seconds = time.perf_counter() - start
        shift = np.sqrt((((partial["latent_mean"] - full["latent_mean"])
                          / full["latent_std"]) ** 2).mean(axis=1))
        own = np.sqrt((((partial["latent_mean"] - full["latent_mean"])
                        / partial["latent_std"]) ** 2).mean(axis=1))
        population = np.sqrt((((partial["latent_mean"] - full["latent_mean"])
                               / full["latent_mean"].std(axis=0)) ** 2).mean(axis=1))
        nll = nll_per_input(model, test, partial["latent_mean"])
        out[name] = {
            "masked_share": float(hidden.mean()),
            "latent_shift_median": float(np.median(shift)),
            "latent_shift_p90": float(np.percentile(shift, 90)),
            "latent_shift_own_median": float(np.median(own)),
            "latent_shift_population_median": float(np.median(population)),
            "anomaly_spearman": float(spearmanr(partial["anomaly_score"],
                                                full["anomaly_score"])[0]),
            "anomaly_change_median_abs": float(np.median(np.abs(
                partial["anomaly_score"] - full["anomaly_score"]))),
            "nll_per_input": float(np.mean(nll)),
            "nll_per_input_change": float(np.mean(nll - full_nll)),
            "seconds": round(seconds, 2),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mask-fractions", default="0",
                   help="comma-separated TrainConfig.mask_fraction values, one model each")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (quick looks)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--models", help="comma-separated model folders trained on the benchmark "
                                    "split's training stars (e.g. the demo's model and "
                                    "labels/svae) to measure instead of training any")
    args = p.parse_args()
    library = load_apogee_library()
    train, test = benchmark_sets(library)
    cases = masks(test, np.random.default_rng(1))
    result = {"benchmark": "masked_inputs", "n_test": len(test), "models": {}}
    runs = [(folder, None) for folder in args.models.split(",")] if args.models else \
        [(None, float(f)) for f in args.mask_fractions.split(",")]
    for folder, fraction in runs:
        start = time.perf_counter()
        if folder:
            model, name = SVAE.load(folder), folder
        else:
            overrides = {"threads": args.threads, "mask_fraction": fraction}
            if args.epochs:
                overrides["epochs"] = args.epochs
            model = SVAE(train_config=TrainConfig.preset("fast", **overrides)).fit(
                train, progress=False)
            name = f"mask_fraction_{fraction:g}"
        trained = time.perf_counter() - start
        figures = measure(model, test, cases)
        figures["training_seconds"] = None if folder else round(trained, 1)
        result["models"][name] = figures
        print(f"{name}: " + "; ".join(
            f"{k} shift {v['latent_shift_median']:.2f} (own sigma "
            f"{v.get('latent_shift_own_median', float('nan')):.2f}) rho "
            f"{v.get('anomaly_spearman', float('nan')):.3f}"
            for k, v in figures.items() if isinstance(v, dict) and "latent_shift_median" in v),
            flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
