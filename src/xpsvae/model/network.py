"""The scatter VAE of Laroche & Speagle (2023): network and loss, in one file.

The network has three parts that share one latent space (the paper's Section 2.2):

* the encoder maps a standardised spectrum ``x`` (N inputs) to the latent mean
  ``mu`` and log-variance ``logvar`` (n_Z each);
* the decoder maps a latent vector ``z`` to the reconstruction ``x_hat``;
* the scatter head, with the decoder's architecture and its own weights, maps
  the same ``z`` to a positive per-input intrinsic scatter ``s_s``.

The loss (the paper's eqs 1-5) lives in :func:`svae_loss`.

Beyond the paper, a model may be fitted semi-supervised: a small label head
(:class:`LatentLabels`) reads each star's latent mean and predicts its labels,
and its Gaussian likelihood (:func:`label_nll`), over the labels a star has,
joins the loss with a weight. The latent then has to carry the labels as well
as the spectrum; the decoder and the scatter head are as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..core.constants import ACTIVATION_NAMES, LOSS_FORMS, NORMS, SCATTER_MAPS

ACTIVATIONS = dict(zip(ACTIVATION_NAMES, (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh)))
LOGVAR_BOUND = 30.0
LABEL_LOGVAR_BOUND = 12.0  # a label's predicted variance lies in [e^-12, e^6] label variances


@dataclass
class SVAEConfig:
    """Architecture of the scatter VAE.

    Attributes:
        input_dim: number of inputs N (110 coefficients, 343 samples, ...).
        latent_dim: number of latent dimensions n_Z (paper: 6).
        hidden: encoder layer widths; the decoder and the scatter head use
            them in reverse (paper: 80, 50, 30).
        activation: one of ``gelu`` (paper), ``relu``, ``silu``, ``tanh``.
        norm: normalisation after each hidden linear layer: ``none`` (paper),
            ``batch`` or ``layer``.
        scatter_map: map that makes the scatter head's output positive:
            ``softplus`` (default), ``exp`` or ``sigmoid`` (later public code).
        labels: label columns learnt from the latent in semi-supervised training
            (empty: the paper's unsupervised model, no label head).
        label_hidden: widths of the label head's hidden layers.
    """

    input_dim: int = 110
    latent_dim: int = 6
    hidden: Sequence[int] = field(default_factory=lambda: (80, 50, 30))
    activation: str = "gelu"
    norm: str = "none"
    scatter_map: str = "softplus"
    labels: Sequence[str] = ()
    label_hidden: Sequence[int] = (64, 64)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.labels = tuple(str(name) for name in self.labels)
        self.label_hidden = tuple(int(h) for h in self.label_hidden)
        if len(set(self.labels)) != len(self.labels) or \
                not all(h >= 1 for h in self.label_hidden):
            raise ValueError(f"labels must be distinct and label_hidden widths positive, got "
                             f"{self.labels}, {self.label_hidden}")
        if self.input_dim < 1 or self.latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"widths must be positive, got input_dim={self.input_dim}, "
                             f"latent_dim={self.latent_dim}, hidden={self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.scatter_map not in SCATTER_MAPS:
            raise ValueError(f"scatter_map must be one of {SCATTER_MAPS}, got {self.scatter_map!r}")

    @classmethod
    def preset(cls, name: str, input_dim: int) -> "SVAEConfig":
        """Named architectures.

        Args:
            name: ``paper`` (the paper's Section 2.2: 80-50-30, GELU, no normalisation) or
                ``later`` (the authors' later public code: 90-70-50-30-10,
                BatchNorm, sigmoid scatter head).
            input_dim: number of inputs.

        Returns:
            The configuration.
        """
        if name == "paper":
            return cls(input_dim=input_dim)
        if name == "later":
            return cls(input_dim=input_dim, hidden=(90, 70, 50, 30, 10), norm="batch",
                       scatter_map="sigmoid")
        raise ValueError(f"unknown architecture preset {name!r}; choose 'paper' or 'later'")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        if not self.labels:  # an unsupervised model's file is as before
            del d["labels"], d["label_hidden"]
        else:
            d["labels"], d["label_hidden"] = list(self.labels), list(self.label_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SVAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


def hidden_layers(widths: Sequence[int], activation: str, norm: str = "none"
                  ) -> list[nn.Module]:
    """Linear (+ norm) + activation for each consecutive pair of widths."""
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(w_in, w_out))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(w_out))
        elif norm == "layer":
            layers.append(nn.LayerNorm(w_out))
        layers.append(ACTIVATIONS[activation]())
    return layers


def _mlp(widths: Sequence[int], cfg: SVAEConfig) -> nn.Sequential:
    """The hidden stack of the encoder, decoder or scatter head."""
    return nn.Sequential(*hidden_layers(widths, cfg.activation, cfg.norm))


class ScatterVAE(nn.Module):
    """The sVAE network: encoder, decoder and scatter head (the paper's Section 2.2)."""

    def __init__(self, config: SVAEConfig):
        super().__init__()
        self.config = config
        enc_widths = (config.input_dim, *config.hidden)
        dec_widths = (config.latent_dim, *reversed(config.hidden))
        self.encoder = nn.Sequential(_mlp(enc_widths, config),
                                     nn.Linear(config.hidden[-1], 2 * config.latent_dim))
        self.decoder = nn.Sequential(_mlp(dec_widths, config),
                                     nn.Linear(config.hidden[0], config.input_dim))
        self.scatter_head = nn.Sequential(_mlp(dec_widths, config),
                                          nn.Linear(config.hidden[0], config.input_dim))
        if config.labels:
            self.label_head = LatentLabels(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent mean and log-variance, each of shape (batch, latent_dim)."""
        latent_mean, latent_logvar = self.encoder(x).chunk(2, dim=-1)
        # exp(0.5 * logvar) must stay finite in float32 (and bfloat16) whatever the weights do
        return latent_mean, latent_logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed (standardised) spectrum, shape (batch, input_dim)."""
        return self.decoder(z)

    def intrinsic_scatter(self, z: torch.Tensor) -> torch.Tensor:
        """Positive intrinsic scatter (standardised units), shape (batch, input_dim)."""
        raw = self.scatter_head(z)
        if self.config.scatter_map == "softplus":
            return F.softplus(raw)
        if self.config.scatter_map == "exp":
            # Clamp keeps exp finite in float32 even for a wild initial output.
            return torch.exp(raw.clamp(max=20.0))
        return torch.sigmoid(raw)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None
                ) -> Dict[str, torch.Tensor]:
        """Encode, draw z = mu + sigma * noise (noise=None: z = mu), decode.

        Args:
            x: standardised spectra, shape (batch, input_dim).
            noise: standard-normal draws of shape (batch, latent_dim), or None
                to decode the latent mean (evaluation).

        Returns:
            dict with ``x_hat``, ``scatter``, ``latent_mean``, ``latent_logvar``.
        """
        if x.ndim != 2 or x.shape[1] != self.config.input_dim:
            raise ValueError(f"expected input of shape (batch, {self.config.input_dim}), "
                             f"got {tuple(x.shape)}")
        latent_mean, latent_logvar = self.encode(x)
        z = latent_mean if noise is None else latent_mean + torch.exp(0.5 * latent_logvar) * noise
        out = {"x_hat": self.decode(z), "scatter": self.intrinsic_scatter(z),
               "latent_mean": latent_mean, "latent_logvar": latent_logvar}
        if self.config.labels:  # inside forward, so that DDP averages its gradients too
            out["label_mean"], out["label_logvar"] = self.label_head(latent_mean)
        return out

    def same_weights(self, other: "ScatterVAE") -> bool:
        """Whether ``other`` holds the same parameters and buffers, bit for bit."""
        ours, theirs = self.state_dict(), other.state_dict()
        return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k])
                                                     for k in ours)


class LatentLabels(nn.Module):
    """The label head of semi-supervised training: from a star's latent mean to, per
    label, a mean and a log-variance in standardised label units.

    The labels' training mean and standard deviation are buffers, so that the
    model file carries them: label = mean * label_std + label_mean.
    """

    def __init__(self, config: SVAEConfig):
        super().__init__()
        n_labels = len(config.labels)
        widths = (config.latent_dim, *config.label_hidden)
        self.net = nn.Sequential(*hidden_layers(widths, config.activation),
                                 nn.Linear(widths[-1], 2 * n_labels))
        self.register_buffer("label_mean", torch.zeros(n_labels, dtype=torch.float64))
        self.register_buffer("label_std", torch.ones(n_labels, dtype=torch.float64))

    def forward(self, latent_mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(latent_mean).chunk(2, dim=-1)
        return mean, logvar.clamp(-LABEL_LOGVAR_BOUND, LABEL_LOGVAR_BOUND / 2)


def label_nll(mean: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor, y_var: torch.Tensor,
              has: torch.Tensor, dof: float = 0.0) -> torch.Tensor:
    """Per star and label, the Gaussian negative log-likelihood of a survey label
    (no 2 pi term), 0 where the star lacks that label::

        L_y = 1/2 [ (y - mu)^2 / (sigma^2 + e^2) + ln(sigma^2 + e^2) ]

    or, with ``dof`` = nu > 0, a Student t's of squared scale sigma^2 + e^2 (terms in
    nu alone dropped; the label head's, :mod:`xpsvae.labels.head`)::

        L_y = (nu + 1)/2 ln(1 + (y - mu)^2 / (nu (sigma^2 + e^2))) + 1/2 ln(sigma^2 + e^2)

    with ``mu``, ``ln sigma^2`` the prediction and ``e`` the survey's own error,
    added in quadrature: the prediction's variance is the spread the survey's
    errors do not explain. All in standardised label units, shape (batch, L).
    Semi-supervised training adds ``label_weight * sum_labels L_y``, averaged
    over the batch's stars (labelled or not), to :func:`svae_loss`.
    """
    var = logvar.exp() + y_var
    if dof:
        term = 0.5 * (dof + 1) * torch.log1p((y - mean) ** 2 / (dof * var)) + 0.5 * var.log()
    else:
        term = 0.5 * ((y - mean) ** 2 / var + var.log())
    return torch.where(has, term, torch.zeros_like(term))


def svae_loss(x: torch.Tensor, x_err: torch.Tensor, x_hat: torch.Tensor,
              scatter: torch.Tensor, latent_mean: torch.Tensor,
              latent_logvar: torch.Tensor, form: str = "paper",
              observed: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The sVAE loss (the paper's eqs 1-5), per star, averaged over the batch.

    With N inputs and n_Z latent dimensions, ``w_i = s_x,i^2 + s_s,i^2`` and::

        chi2 = 1/(2N)   sum_i (x_i - x_hat_i)^2 / w_i                     (eq 3)
        P    = 1/(2N)   sum_i log w_i                                     (eq 4)
        KL   = 1/(2n_Z) sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)     (eq 5)
        L    = chi2 + P + KL                                              (eqs 1-2)

    ``form="elbo"`` drops the 1/N and 1/n_Z (sums instead of means): the
    textbook negative ELBO up to a constant, where the paper's form weighs the
    KL by N/n_Z relative to it.

    With ``observed``, the sums over i run over a star's measured inputs only
    (an unmeasured one carries no weight in chi2 or P), and N is their number.

    Args:
        x, x_err, x_hat, scatter: shape (batch, N), standardised units.
        latent_mean, latent_logvar: shape (batch, n_Z).
        form: ``paper`` or ``elbo``.
        observed: bool (batch, N), the measured inputs; None: all of them.

    Returns:
        dict of scalar tensors ``loss``, ``chi2``, ``penalty``, ``kl``.
    """
    if form not in LOSS_FORMS:
        raise ValueError(f"loss form must be one of {LOSS_FORMS}, got {form!r}")
    if observed is not None:  # unmeasured inputs: finite stand-ins, then weight 0
        x, x_err = torch.where(observed, x, x_hat.detach()), torch.where(observed, x_err, 1.0)
    w = x_err ** 2 + scatter ** 2
    chi2_i = (x - x_hat) ** 2 / w
    penalty_i = torch.log(w)
    kl_j = latent_mean ** 2 + torch.exp(latent_logvar) - 1.0 - latent_logvar
    reduce = torch.mean if form == "paper" else torch.sum
    if observed is None:
        chi2 = 0.5 * reduce(chi2_i, dim=-1).mean()
        penalty = 0.5 * reduce(penalty_i, dim=-1).mean()
    else:
        n = observed.sum(dim=-1).clamp(min=1) if form == "paper" else 1.0
        chi2 = 0.5 * ((chi2_i * observed).sum(dim=-1) / n).mean()
        penalty = 0.5 * ((penalty_i * observed).sum(dim=-1) / n).mean()
    kl = 0.5 * reduce(kl_j, dim=-1).mean()
    return {"loss": chi2 + penalty + kl, "chi2": chi2, "penalty": penalty, "kl": kl}


def gaussian_nll_per_star(x: torch.Tensor, x_err: torch.Tensor, x_hat: torch.Tensor,
                          scatter: torch.Tensor) -> torch.Tensor:
    """Per-star negative log-likelihood sum_i (r_i^2/2 + ln(w_i)/2), no 2*pi term, no KL.

    This is the quality figure of the benchmark (metrics.json ``mean_nll``).
    """
    w = x_err ** 2 + scatter ** 2
    return 0.5 * ((x - x_hat) ** 2 / w + torch.log(w)).sum(dim=-1)


__all__ = ["SVAEConfig", "ScatterVAE", "LatentLabels", "hidden_layers", "svae_loss", "label_nll",
           "gaussian_nll_per_star", "LOSS_FORMS",
           "SCATTER_MAPS", "NORMS", "ACTIVATIONS"]
