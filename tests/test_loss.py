"""The loss of the paper's eqs 1-5 against a hand computation, and the network's basic behaviour."""
import math

import numpy as np
import pytest
import torch

from xpsvae import ScatterVAE, SVAEConfig, svae_loss


def _hand_loss(x, s_x, x_hat, s_s, mu, logvar, form):
    n, n_z = len(x), len(mu)
    w = [s_x[i] ** 2 + s_s[i] ** 2 for i in range(n)]
    chi2 = sum((x[i] - x_hat[i]) ** 2 / w[i] for i in range(n)) / 2
    pen = sum(math.log(w[i]) for i in range(n)) / 2
    kl = sum(mu[j] ** 2 + math.exp(logvar[j]) - 1 - logvar[j] for j in range(n_z)) / 2
    if form == "paper":
        chi2, pen, kl = chi2 / n, pen / n, kl / n_z
    return chi2, pen, kl


@pytest.mark.parametrize("form", ["paper", "elbo"])
def test_loss_matches_hand_computation(form):
    stars = [
        dict(x=[1.0, -2.0, 0.5], s_x=[0.1, 0.2, 0.3], x_hat=[0.8, -1.5, 0.4], s_s=[0.05, 0.5, 0.0],
             mu=[0.3, -1.0], logvar=[-0.5, 0.2]),
        dict(x=[0.0, 3.0, -1.0], s_x=[1.0, 0.5, 0.25], x_hat=[0.1, 2.0, -1.0], s_s=[0.2, 0.1, 0.3],
             mu=[0.0, 2.0], logvar=[1.0, -2.0]),
    ]
    expected = np.mean([_hand_loss(**s, form=form) for s in stars], axis=0)
    t = {k: torch.tensor([s[k] for s in stars], dtype=torch.float64) for k in stars[0]}
    out = svae_loss(t["x"], t["s_x"], t["x_hat"], t["s_s"], t["mu"], t["logvar"], form=form)
    # float64 throughout, sums of a handful of terms: a few eps (2e-16)
    assert out["chi2"].item() == pytest.approx(expected[0], rel=1e-12)
    assert out["penalty"].item() == pytest.approx(expected[1], rel=1e-12)
    assert out["kl"].item() == pytest.approx(expected[2], rel=1e-12)
    assert out["loss"].item() == pytest.approx(expected.sum(), rel=1e-12)


@pytest.mark.parametrize("form", ["paper", "elbo"])
def test_an_unmeasured_input_carries_no_weight(form):
    """With a mask, the loss is the hand computation over the measured inputs alone (N their
    number), whatever the unmeasured ones hold (NaN included), and sends them no gradient."""
    star = dict(x=[1.0, -2.0, 0.5, 4.0], s_x=[0.1, 0.2, 0.3, 0.4],
                x_hat=[0.8, -1.5, 0.4, -3.0], s_s=[0.05, 0.5, 0.2, 0.1],
                mu=[0.3, -1.0], logvar=[-0.5, 0.2])
    measured = {k: (v[:2] + v[3:] if len(v) == 4 else v) for k, v in star.items()}
    expected = _hand_loss(**measured, form=form)
    t = {k: torch.tensor([v], dtype=torch.float64) for k, v in star.items()}
    t["x"][0, 2] = float("nan")
    t["s_x"][0, 2] = float("nan")
    x_hat = t["x_hat"].clone().requires_grad_(True)
    scatter = t["s_s"].clone().requires_grad_(True)
    observed = torch.tensor([[True, True, False, True]])
    out = svae_loss(t["x"], t["s_x"], x_hat, scatter, t["mu"], t["logvar"], form=form,
                    observed=observed)
    # float64, a handful of terms: a few eps
    assert out["chi2"].item() == pytest.approx(expected[0], rel=1e-12)
    assert out["penalty"].item() == pytest.approx(expected[1], rel=1e-12)
    assert out["kl"].item() == pytest.approx(expected[2], rel=1e-12)
    out["loss"].backward()
    assert x_hat.grad[0, 2] == 0 and scatter.grad[0, 2] == 0
    assert torch.isfinite(x_hat.grad).all() and (x_hat.grad[0, [0, 1, 3]] != 0).all()
    # every input measured: the mask changes nothing but the order of a few float64 sums
    full = {k: torch.tensor([v], dtype=torch.float64) for k, v in star.items()}
    plain = svae_loss(full["x"], full["s_x"], full["x_hat"], full["s_s"], full["mu"],
                      full["logvar"], form=form)
    masked = svae_loss(full["x"], full["s_x"], full["x_hat"], full["s_s"], full["mu"],
                       full["logvar"], form=form, observed=torch.ones(1, 4, dtype=torch.bool))
    assert masked["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-14)


def test_paper_form_weighs_kl_by_n_over_nz_relative_to_elbo():
    torch.manual_seed(0)
    x, s, xh, ss = (torch.rand(4, 110) + 0.1 for _ in range(4))
    mu, lv = torch.randn(4, 6), torch.randn(4, 6)
    paper = svae_loss(x, s, xh, ss, mu, lv, "paper")
    elbo = svae_loss(x, s, xh, ss, mu, lv, "elbo")
    assert (elbo["chi2"] / paper["chi2"]).item() == pytest.approx(110)
    assert (elbo["kl"] / paper["kl"]).item() == pytest.approx(6)


def test_unknown_loss_form_is_rejected():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="loss form"):
        svae_loss(z, z + 1, z, z, z, z, form="mean")


@pytest.mark.parametrize("arch", ["paper", "later"])
def test_gradients_reach_every_part_and_scatter_is_positive(arch):
    torch.manual_seed(1)
    net = ScatterVAE(SVAEConfig.preset(arch, 110))
    x = torch.randn(64, 110)
    err = torch.rand(64, 110) * 0.1 + 0.01
    out = net(x, torch.randn(64, 6))
    assert (out["scatter"] > 0).all()
    svae_loss(x, err, out["x_hat"], out["scatter"], out["latent_mean"],
              out["latent_logvar"])["loss"].backward()
    for part in ("encoder", "decoder", "scatter_head"):
        grads = [p.grad for p in getattr(net, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(g.abs().sum().item() for g in grads) > 0, part


@pytest.mark.parametrize("scatter_map", ["softplus", "exp", "sigmoid"])
def test_every_positivity_map_is_positive_even_for_extreme_latents(scatter_map):
    net = ScatterVAE(SVAEConfig(input_dim=20, scatter_map=scatter_map))
    s = net.intrinsic_scatter(torch.randn(100, 6) * 50)
    assert torch.isfinite(s).all() and (s >= 0).all()


def test_paper_architecture_has_the_paper_widths():
    net = ScatterVAE(SVAEConfig.preset("paper", 110))
    enc = [m.out_features for m in net.encoder.modules() if isinstance(m, torch.nn.Linear)]
    dec = [m.out_features for m in net.decoder.modules() if isinstance(m, torch.nn.Linear)]
    sca = [m.out_features for m in net.scatter_head.modules() if isinstance(m, torch.nn.Linear)]
    assert enc == [80, 50, 30, 12]
    assert dec == sca == [30, 50, 80, 110]
    assert all(isinstance(m, torch.nn.GELU) for m in net.encoder[0] if not isinstance(m, torch.nn.Linear))


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="activation"):
        SVAEConfig(activation="swish2")
    with pytest.raises(ValueError, match="unknown architecture preset"):
        SVAEConfig.preset("huge", 110)
    net = ScatterVAE(SVAEConfig(input_dim=110))
    with pytest.raises(ValueError, match=r"\(batch, 110\)"):
        net(torch.zeros(3, 343))
