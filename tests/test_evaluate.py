"""Metrics on synthetic cases with known answers."""
import numpy as np
import pytest

from xpsvae.evaluation.metrics import (
    _volume,
    edge_comparison,
    edge_inputs,
    latent_volume_gain,
    occupied_cells,
    reconstruction_metrics,
)


def test_exact_model_has_zero_normalised_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 20))
    m = reconstruction_metrics(x, np.full_like(x, 0.1), x, np.zeros(20))
    assert m["std_r"] == 0 and m["mean_abs_r"] == 0 and m["frac_abs_r_gt_5"] == 0
    assert m["mean_nll"] == pytest.approx(20 * np.log(0.1))


def test_known_scatter_gives_unit_std():
    rng = np.random.default_rng(1)
    x_hat = rng.normal(size=(20000, 30))
    err = rng.uniform(0.05, 0.2, x_hat.shape)
    scatter = rng.uniform(0.0, 0.3, x_hat.shape)
    x = x_hat + rng.normal(size=x_hat.shape) * np.sqrt(err ** 2 + scatter ** 2)
    m = reconstruction_metrics(x, err, x_hat, scatter)
    assert m["std_r"] == pytest.approx(1.0, abs=0.01)
    assert m["frac_abs_r_gt_5"] < 1e-5
    wrong = reconstruction_metrics(x, err, x_hat, 2 * scatter + 0.1)
    assert wrong["std_r"] < 0.8 and wrong["mean_nll"] > m["mean_nll"]


def test_uniform_cloud_fills_its_box():
    rng = np.random.default_rng(2)
    cloud = rng.uniform(0, 1, (100000, 3)) * [1.0, 2.0, 0.5]  # box volume 1
    assert _volume(cloud, np.zeros(3), 0.1) == pytest.approx(1.0, rel=1e-9)


def test_occupied_cells_are_the_distinct_rows():
    """The cells, keyed one integer each, are exactly numpy's distinct rows, in the same
    order; where the grid has too many cells for one integer, the rows themselves."""
    rng = np.random.default_rng(4)
    cloud = rng.normal(size=(5000, 6)) * [1, 3, 0.2, 1, 1, 5]
    for width in (0.05, 0.5, 4.0):
        cells = np.floor((cloud + 20) / width).astype(np.int64)
        assert np.array_equal(occupied_cells(cloud, np.full(6, -20.0), width),
                              np.unique(cells, axis=0))
    far = np.array([[0.0, 0.0], [3e9, 3e9], [0.0, 0.0]])  # (3e9)^2 cells: past 2^62
    assert np.array_equal(occupied_cells(far, np.zeros(2), 1.0),
                          np.unique(np.floor(far).astype(np.int64), axis=0))
    assert occupied_cells(np.zeros((0, 3)), np.zeros(3), 1.0).shape == (0, 3)


def test_latent_volume_gain_of_known_clouds():
    rng = np.random.default_rng(3)
    box = rng.uniform(0, 1, (60000, 3))
    same = latent_volume_gain(box, rng.uniform(0, 1, (20000, 3)), n_bootstrap=10)
    assert same["gain"] < 0.02
    lo, hi = same["interval_16_84"]
    assert lo <= hi
    # a second cloud filling a box of the same size beside the first doubles the volume
    width = 0.1 / box.std(axis=0).mean()
    double = latent_volume_gain(box, rng.uniform(0, 1, (60000, 3)) + [1, 0, 0], width=width,
                                n_bootstrap=10)
    assert double["gain"] == pytest.approx(1.0, abs=0.12)
    assert double["interval_16_84"][0] > 0.5


def test_edge_inputs_and_comparison():
    assert list(edge_inputs(110, "coefficients")["red"]) == list(range(55, 65))
    assert list(edge_inputs(343, "sampled")["blue"]) == list(range(34))
    r1 = np.full((10, 110), 1.0)
    r2 = np.full((10, 110), 2.0)
    out = edge_comparison(r1, -r2, "coefficients")
    assert out["blue"]["ratio"] == pytest.approx(0.5) and out["red"]["cannon"] == 2.0


def test_figures_do_not_depend_on_global_latex_setting(tmp_path):
    import matplotlib

    from xpsvae.evaluation.figures import plot_normalised_errors
    with matplotlib.rc_context({"text.usetex": True}):  # what importing GaiaXPy does
        path = plot_normalised_errors(np.random.default_rng(0).normal(size=(50, 20)),
                                      str(tmp_path / "r.png"))
    import os
    assert os.path.getsize(path) > 10_000
