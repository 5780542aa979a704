"""Label-head members that go on training the sVAE's encoder with the labels.

A head on frozen features (:mod:`xpsvae.labels.features`) reads what the sVAE's
encoder learnt, unchanged. A *tuned* member (``LabelHeadConfig.encoder_lr > 0``)
starts from a copy of that encoder and trains it with its own MLP on the label
likelihood, the encoder at its own, lower rate: the sVAE's training is the
starting point, and the labels move the encoder's hidden layers on from there
(pre-training then fine-tuning, the usual way to use unlabelled data for a
supervised task). The sVAE itself is not changed; each member carries its copy,
~34,000 numbers for the paper's architecture.

A member's input is the head's standardised input row: the sVAE-standardised
spectrum (holes filled by the sVAE, as for encoding), then the noise features and
side columns. At the start it computes exactly the frozen features of
:func:`~xpsvae.labels.features.svae_features`: the head's own standardisation of
the spectrum is folded into the copy's first linear map, and the encoder's
outputs are standardised by fixed statistics of the training stars, as the
frozen features are. So a tuned member starts where a frozen one does and
differs only in that the encoder learns. What that gains, and what it costs in
time: docs/labels.md, "Tuning the encoder".
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .features import encoder_features


class TunedMember(nn.Module):
    """A copy of the sVAE's encoder, then an MLP on its features and the extra columns.

    Args:
        encoder: the sVAE network's ``encoder`` (a hidden stack, then the linear map to
            the latent mean and log variance); copied, not shared.
        mlp: the member's MLP, from the encoder's features and the extra columns.
    """

    def __init__(self, encoder: nn.Sequential, mlp: nn.Sequential):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.mlp = mlp
        self.n_inputs = self.encoder[0][0].in_features
        dtype = self.encoder[0][0].weight.dtype
        n_features = self.features(torch.zeros(1, self.n_inputs, dtype=dtype)).shape[1]
        self.register_buffer("feature_mean", torch.zeros(n_features, dtype=dtype))
        self.register_buffer("feature_std", torch.ones(n_features, dtype=dtype))

    def features(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The encoder copy's features of standardised spectra, as ``svae_features`` gives
        them (before this member's standardisation of them)."""
        return encoder_features(self.encoder, spectrum)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        features = (self.features(rows[:, :self.n_inputs]) - self.feature_mean) / \
            self.feature_std
        return self.mlp(torch.cat([features, rows[:, self.n_inputs:]], -1))


class Tuning:
    """Makes tuned members that start where a frozen head's members do.

    The head's standardisation of the spectrum columns (``input_mean`` and
    ``input_std``, over all the head's input columns) is folded into the encoder
    copy's first linear map, so that a member reads the head's standardised rows as
    the sVAE read its spectra; the features' statistics are fixed over ``rows`` (the
    head's standardised rows, all the stars it was given), as the frozen features'
    are. Called with a member's new MLP, it gives the member."""

    @torch.no_grad()
    def __init__(self, encoder: nn.Sequential, input_mean: np.ndarray, input_std: np.ndarray,
                 rows: torch.Tensor):
        self.start = TunedMember(encoder, nn.Identity())
        first, n = self.start.encoder[0][0], self.start.n_inputs
        mean = torch.as_tensor(input_mean[:n], dtype=first.weight.dtype)
        std = torch.as_tensor(input_std[:n], dtype=first.weight.dtype)
        first.bias.add_(first.weight @ mean)
        first.weight.mul_(std)
        features = torch.cat([self.start.features(rows[i:i + 8192, :n])
                              for i in range(0, len(rows), 8192)])
        self.start.feature_mean.copy_(features.mean(0))
        spread = features.std(0, unbiased=False)  # as feature_statistics: the population's
        self.start.feature_std.copy_(torch.where(spread > 0, spread, torch.ones_like(spread)))
        #: the MLP's inputs: the encoder's features, then the extra columns
        self.n_mlp_inputs = features.shape[1] + rows.shape[1] - n

    def __call__(self, mlp: nn.Sequential) -> TunedMember:
        member = copy.deepcopy(self.start)
        member.mlp = mlp
        return member


def mlp_inputs(encoder: nn.Sequential, n_inputs: int) -> int:
    """How many inputs a tuned member's MLP has, for a head of ``n_inputs`` columns."""
    member = TunedMember(encoder, nn.Identity())
    return member.feature_mean.shape[0] + n_inputs - member.n_inputs


def is_encoder_parameter(name: str) -> bool:
    """Whether a member's parameter (``named_parameters`` name) is its encoder copy's."""
    return name.startswith("encoder.")
