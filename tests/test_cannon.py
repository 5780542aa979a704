"""The Cannon baseline: recovery of a known model, NaN labels, label inference, files."""
import numpy as np
import pandas as pd
import pytest

from xpsvae import SpectraSet
from xpsvae.cannon import Cannon, design_matrix


def _synthetic(n=4000, d=40, seed=0, nan_rows=0):
    """Spectra drawn from a known quadratic-in-labels model with a known scatter per input."""
    rng = np.random.default_rng(seed)
    labels = np.column_stack([rng.uniform(4000, 6000, n), rng.uniform(1, 5, n),
                              rng.uniform(-1, 0.5, n)])
    scaled = (labels - labels.mean(0)) / labels.std(0)
    theta = rng.normal(0, 1, (d, 10))
    scatter = rng.uniform(0.05, 0.3, d)
    scatter[:3] = 0.0  # inputs with no scatter at all
    errors = rng.uniform(0.02, 0.1, (n, d))
    values = design_matrix(scaled) @ theta.T + rng.normal(0, 1, (n, d)) * np.sqrt(
        errors ** 2 + scatter ** 2)
    table = pd.DataFrame({"teff": labels[:, 0], "logg": labels[:, 1], "fe_h": labels[:, 2]})
    if nan_rows:
        table.loc[:nan_rows - 1, "fe_h"] = np.nan
    stars = SpectraSet.from_arrays(values, errors, labels=table)
    return stars, labels, scaled, theta, scatter


def _identity(stars):
    from xpsvae import Standardizer
    d = stars.n_inputs
    return Standardizer(np.zeros(d), np.ones(d))


def test_recovers_a_known_quadratic_model_and_its_scatter():
    stars, labels, scaled, theta, scatter = _synthetic()
    cannon = Cannon().fit(stars, standardizer=_identity(stars))
    # the fit's label scaling is its own, so compare predicted (noise-free) spectra
    truth = design_matrix(scaled) @ theta.T
    error = np.abs(cannon.predict(labels) - truth)  # the noise per value is ~0.14 here
    assert error.mean() < 0.01 and error.max() < 0.1
    # a scatter estimated from n noisy stars is off by ~1/sqrt(2n) relative (n = the
    # synthetic set's stars): 8% is several of those, not a float-precision bound
    np.testing.assert_allclose(cannon.scatter[3:], scatter[3:], rtol=0.08)
    assert (cannon.scatter[:3] < 0.02).all()


def test_stars_with_nan_labels_are_left_out_and_counted():
    stars, labels, *_ = _synthetic(nan_rows=250)
    cannon = Cannon().fit(stars, standardizer=_identity(stars))
    assert cannon.fit_info.n_stars_used == 4000 - 250
    assert cannon.fit_info.n_stars_without_labels == 250
    assert np.isfinite(cannon.theta).all()


def test_missing_label_column_is_an_error():
    stars, *_ = _synthetic(n=200)
    from xpsvae import SpectraError
    with pytest.raises(SpectraError, match=r"\['alpha_m'\] not found"):
        Cannon(("teff", "alpha_m")).fit(stars)


def test_label_inference_recovers_labels_of_model_spectra():
    stars, labels, *_ = _synthetic(n=4300)
    train, test = stars.subset(np.arange(4000)), stars.subset(np.arange(4000, 4300))
    test_labels = labels[4000:]
    cannon = Cannon().fit(train, standardizer=_identity(stars))
    inferred, chi2 = cannon.infer_labels(test)
    spread = labels.std(axis=0)
    err = np.median(np.abs(inferred - test_labels), axis=0) / spread
    assert (err < 0.05).all(), err
    assert np.median(chi2) < 2 * test.n_inputs


def test_save_load_round_trip(tmp_path):
    stars, labels, *_ = _synthetic(n=500)
    cannon = Cannon().fit(stars)
    cannon.save(str(tmp_path / "c"))
    loaded = Cannon.load(str(tmp_path / "c"))
    np.testing.assert_array_equal(cannon.predict(labels[:5]), loaded.predict(labels[:5]))
    np.testing.assert_array_equal(cannon.population_scatter(), loaded.population_scatter())


def test_fit_on_real_library_stars(small_library):
    cannon = Cannon().fit(small_library)
    assert cannon.fit_info.n_stars_used + cannon.fit_info.n_stars_without_labels == 3000
    assert cannon.fit_info.n_stars_without_labels > 0  # the library's stars without [Fe/H]
    assert (cannon.scatter >= 0).all() and np.isfinite(cannon.theta).all()


def _grid_scatter_one_input(design, y, err):
    """TheCannon 0.7.3's search for one input, written out plainly (an independent check)."""
    from xpsvae.cannon import THECANNON_LN_SCATTER_GRID as grid
    ivar = 1.0 / np.minimum(err, 100.0) ** 2

    def fit(s):
        cinv = ivar / (1 + ivar * s ** 2)
        coeff = np.linalg.solve(design.T @ (cinv[:, None] * design), design.T @ (cinv * y))
        return coeff, np.sum(cinv * (y - design @ coeff) ** 2) - np.sum(np.log(cinv))
    values = np.array([fit(np.exp(g))[1] for g in grid])
    low = int(np.argmin(values))
    if low in (0, len(grid) - 1):
        return np.exp(grid[low])
    z = np.polyfit(grid[low - 1:low + 2], values[low - 1:low + 2], 2)
    return np.exp(np.roots(np.polyder(z))[0])


def test_thecannon_scatter_mode_reproduces_its_grid_search_and_ml_is_likelier():
    stars, labels, scaled, theta, scatter = _synthetic(n=1500, d=12, seed=2)
    grid = Cannon(scatter_method="thecannon").fit(stars, standardizer=_identity(stars))
    ml = Cannon().fit(stars, standardizer=_identity(stars))
    design = design_matrix((labels - grid.label_mean) / grid.label_std)
    expected = [_grid_scatter_one_input(design, stars.values[:, i], stars.errors[:, i])
                for i in range(stars.n_inputs)]
    # The spectra are float32 (eps 6e-8): sums over the stars in another order move the
    # parabola's vertex by ~n eps relative, far below 1e-4, on any BLAS
    np.testing.assert_allclose(grid.scatter, expected, rtol=1e-4, atol=1e-5)

    def nll(model):
        var = stars.errors ** 2 + model.scatter ** 2
        return (((stars.values - model.predict(labels)) ** 2) / var + np.log(var)).sum(axis=0)
    assert (nll(ml) <= nll(grid) + 1e-6).all()  # the exact fit is never less likely
    with pytest.raises(ValueError, match="scatter_method"):
        Cannon(scatter_method="grid")
