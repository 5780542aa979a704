"""The label head's calibration on the validation share: the sigma scale that follows the
star, and the central 68% interval (xpsvae.labels.calibration)."""

import numpy as np
import pytest

from xpsvae.core.errors import ModelFileError
from xpsvae.labels.calibration import (
    INTERVAL_SHARE,
    LOG_BOUND,
    MIN_SCALE_STARS,
    STARS_PER_WEIGHT,
    IntervalScale,
    SigmaScale,
    _likeliest,
)


def validation(n, log_scale, seed, err=0.3):
    """``n`` stars of two labels: predicted labels (standard normal), the head's sigma,
    the survey's error and labels whose residuals have spread sqrt((s sigma)^2 + err^2),
    ``ln s = log_scale(mean)``."""
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((n, 2))
    sigma = rng.uniform(0.5, 2.0, (n, 2))
    e = np.full((n, 2), err)
    spread = np.sqrt((np.exp(log_scale(mean)) * sigma) ** 2 + e ** 2)
    y = mean - rng.standard_normal((n, 2)) * spread
    return mean, sigma, y, e


def std_z(scale, mean, sigma, y, e, rows=slice(None)):
    z = (mean - y) / np.sqrt((scale(mean, sigma) * sigma) ** 2 + e ** 2)
    return z[rows].std(axis=0)


def test_the_scale_makes_the_validation_residuals_standard_normal():
    """A scale the same for every star (1.7): the fitted factor is 1.7 for every star."""
    mean, sigma, y, e = validation(20000, lambda m: np.full_like(m, np.log(1.7)), 0)
    scale = SigmaScale.fit(mean, sigma, y, e, np.ones_like(y, bool))
    factor = scale(mean, sigma)
    # the maximum-likelihood scale from 20,000 draws has a standard error of ~1/sqrt(2n)
    # relative, 0.5%; 3% is six of it
    assert np.median(factor, axis=0) == pytest.approx([1.7, 1.7], rel=0.03)
    assert_no_weight(scale.weights[:, :3])


def assert_no_weight(weights):
    """Weights on the covariates that are zero to within five standard errors: a weight's
    Fisher information per star is ~2 f^2 var(x), f = s^2 sigma^2 / v ~ 0.9 of the
    variance, so over 20,000 stars its error is 0.0054 on a predicted label (var 1) and
    0.014 on ln sigma (var 0.15)."""
    assert np.abs(weights[:, :2]).max() < 0.03
    assert np.abs(weights[:, 2]).max() < 0.07


def test_a_scale_that_follows_the_predicted_label_calibrates_each_kind_of_star():
    """Residuals 2.2x wider for stars of high predicted first label than of low (ln s =
    0.4 u): one factor per label leaves both halves off; the fitted scale makes each half's
    std z 1."""
    truth = lambda m: np.column_stack([0.4 * m[:, 0], np.zeros(len(m))])  # noqa: E731
    mean, sigma, y, e = validation(20000, truth, 1)
    scale = SigmaScale.fit(mean, sigma, y, e, np.ones_like(y, bool))
    # the best single factor per label, on the same stars
    single = [_likeliest(np.ones((len(y), 1)), (mean[:, j] - y[:, j]) ** 2, sigma[:, j] ** 2,
                         e[:, j] ** 2)[0] for j in range(2)]
    constant = SigmaScale.constant(np.exp(single), 3)
    for half in (mean[:, 0] < 0, mean[:, 0] >= 0):
        # std z of ~10,000 standard normal draws: standard error 0.7%; 3% is four of it
        assert std_z(scale, mean, sigma, y, e, half)[0] == pytest.approx(1.0, abs=0.03)
        # one factor is off by 20% or more in each half: the test could fail
        assert abs(std_z(constant, mean, sigma, y, e, half)[0] - 1) > 0.15
    # the weight on the first predicted label is the 0.4 drawn (standard error 0.0054, and
    # the ridge pulls it in by ~1%), the others ~0
    assert scale.weights[0, 0] == pytest.approx(0.4, abs=0.03)
    weights = scale.weights[:, :3].copy()
    weights[0, 0] = 0.0
    assert_no_weight(weights)


def test_few_stars_get_one_factor_per_label_and_fewer_none():
    mean, sigma, y, e = validation(STARS_PER_WEIGHT * 4 - 1, lambda m: np.full_like(m, 0.5), 2)
    has = np.ones_like(y, bool)
    has[MIN_SCALE_STARS - 1:, 1] = False  # the second label: one star short of a scale
    scale = SigmaScale.fit(mean, sigma, y, e, has)
    assert (scale.weights[:, :-1] == 0).all() and np.isinf(scale.low).all()
    factor = scale(mean, sigma)
    assert np.ptp(factor[:, 0]) == 0 and factor[0, 0] > 1  # the drawn e^0.5: 1.65
    assert (factor[:, 1] == 1).all()


def test_a_star_unlike_the_validation_stars_gets_the_scale_at_their_edge():
    truth = lambda m: np.column_stack([0.4 * m[:, 0], 0.4 * m[:, 0]])  # noqa: E731
    mean, sigma, y, e = validation(5000, truth, 3)
    scale = SigmaScale.fit(mean, sigma, y, e, np.ones_like(y, bool))
    edge = mean[[np.argmax(mean[:, 0])]].copy()
    edge[0, 1] = 0.0
    far = edge.copy()
    far[0, 0] = 100.0  # a predicted label 100 spreads out
    one = np.ones((1, 2))
    assert scale(far, one) == pytest.approx(scale(edge, one))
    assert (scale(far, one) < np.exp(LOG_BOUND)).all()


def test_a_scale_reads_back_from_its_arrays_as_it_was_fitted():
    mean, sigma, y, e = validation(2000, lambda m: 0.3 * m, 5)
    scale = SigmaScale.fit(mean, sigma, y, e, np.ones((2000, 2), bool))
    back = SigmaScale.from_arrays(scale.arrays("s"), "s", 2, 3, "m/head.safetensors")
    assert (back(mean, sigma) == scale(mean, sigma)).all()
    # one number per label, as label models from before it hold
    assert (SigmaScale.constant([1.5, 0.8], 3)(mean, sigma) == np.array([1.5, 0.8])).all()


@pytest.mark.parametrize("change, says", [
    (lambda a: a.pop("s_high"), "s_high is missing"),
    (lambda a: a.update(s_weights=np.ones((2, 3))), "weights of shape \\(2, 4\\)"),
    (lambda a: a["s_weights"].__setitem__((0, 0), np.nan), "must be finite"),
    (lambda a: a.update(s_low=a["s_high"] + 1), "low <= high"),
])
def test_a_malformed_scale_is_named_with_its_fix(change, says):
    arrays = SigmaScale.fit(*validation(2000, lambda m: 0.3 * m, 6),
                            np.ones((2000, 2), bool)).arrays("s")
    change(arrays)
    with pytest.raises(ModelFileError, match=says) as raised:
        SigmaScale.from_arrays(arrays, "s", 2, 3, "m/head.safetensors")
    assert str(raised.value).startswith("m/head.safetensors: ")
    assert "refit the label model" in str(raised.value)


def need(mean, sigma, y, e):
    """The k each star needs to lie inside mean +- k sigma, the error in quadrature."""
    return np.sqrt(np.maximum((mean - y) ** 2 - e ** 2, 0)) / sigma


def test_the_interval_holds_68_percent_of_heavy_tailed_validation_residuals():
    """Student-t residuals (4 degrees of freedom), whose spread a sigma would match: the
    interval k sigma, the error in quadrature, holds 68.27% of them, with k below 1."""
    rng = np.random.default_rng(5)
    n = 20000
    mean, sigma = rng.standard_normal((n, 1)), rng.uniform(0.5, 2.0, (n, 1))
    e = np.full_like(sigma, 0.3)
    spread = np.sqrt(sigma ** 2 + e ** 2)
    y = mean - rng.standard_t(4, size=(n, 1)) * spread / np.sqrt(2)  # variance spread^2
    k = IntervalScale.fit(mean, sigma, y, e, np.ones((n, 1), bool))(mean)
    inside = need(mean, sigma, y, e) <= k
    # the constant is put at the share's quantile over the stars: exact to 1/n
    assert inside.mean() == pytest.approx(INTERVAL_SHARE, abs=3e-4)
    # the t's 68.27% point is 0.81 of its standard deviation; the error, which the
    # interval holds whole, moves k a few per cent; sampling moves it ~1%
    assert 0.7 < np.median(k) < 0.9
    few = IntervalScale.fit(mean[:5], sigma[:5], y[:5], e[:5], np.ones((5, 1), bool))
    assert (few(mean) == 1.0).all()


def test_an_interval_that_follows_the_predicted_label_holds_68_percent_of_each_kind():
    """Residuals whose spread over sigma grows as e^(0.3 u): one k leaves both halves off
    68.27%; the fitted k holds it in each."""
    rng = np.random.default_rng(7)
    n = 20000
    mean, sigma = rng.standard_normal((n, 2)), rng.uniform(0.5, 2.0, (n, 2))
    e = np.full_like(sigma, 0.05)
    y = mean - rng.standard_normal((n, 2)) * sigma * np.exp(0.3 * mean[:, :1])
    k = IntervalScale.fit(mean, sigma, y, e, np.ones((n, 2), bool))(mean)
    needed = need(mean, sigma, y, e)
    one = np.quantile(needed, INTERVAL_SHARE, axis=0)
    for half in (mean[:, 0] < 0, mean[:, 0] >= 0):
        # the share of ~10,000 stars: standard error 0.47%; 2% is four of it
        assert np.mean(needed[half] <= k[half], axis=0) == pytest.approx([INTERVAL_SHARE] * 2,
                                                                          abs=0.02)
        # one k per label is 8-9 points off in each half of the first: the test could fail
        assert abs(np.mean(needed[half, 0] <= one[0]) - INTERVAL_SHARE) > 0.05


def test_the_smoothed_quantile_regression_agrees_with_the_exact_linear_programme():
    """The interval's slopes come from a pinball loss smoothed over 2% in k; the exact
    quantile regression is a linear programme (HiGHS). On 2,000 stars whose spread grows
    as e^(0.3 u) the two lines agree, and each holds 68.27% of the stars."""
    from scipy import sparse
    from scipy.optimize import linprog

    from xpsvae.labels.calibration import _quantile_weights
    rng = np.random.default_rng(11)
    n = 2000
    u = rng.standard_normal((n, 2))
    design = np.hstack([u, np.ones((n, 1))])
    target = 0.3 * u[:, 0] + np.log(np.abs(rng.standard_normal(n)))
    q = INTERVAL_SHARE
    exact = linprog(np.r_[np.zeros(3), np.full(n, q), np.full(n, 1 - q)],
                    A_eq=sparse.hstack([sparse.csr_matrix(design), sparse.identity(n),
                                        -sparse.identity(n)]),
                    b_eq=target, bounds=[(None, None)] * 3 + [(0, None)] * (2 * n),
                    method="highs").x[:3]
    smooth = _quantile_weights(design, target, q)
    # the slopes' sampling error at 2,000 stars is ~0.04 (ln |N(0,1)| spreads ~1.1); the
    # smoothing moves them far less than that
    assert np.abs(smooth[:2] - exact[:2]).max() < 0.02
    for w in (exact, smooth):
        # the linear programme puts at most 3 stars on its line; the smoothed form's
        # constant is the share's quantile: both hold 68.27% to within 0.2%
        assert np.mean(target <= design @ w) == pytest.approx(q, abs=2e-3)
