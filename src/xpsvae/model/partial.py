"""Partial spectra: the model fills in what was not measured, for its encoder.

A spectrum with inputs unmeasured (NaN: a masked sample, a band missing) is
encoded from a complete one, its holes filled by the model itself
(:func:`impute`); the likelihood then leaves the filled inputs out
(``observed`` in :func:`~xpsvae.model.network.svae_loss`). A model whose
spectra were divided by their median flux also needs the median of the
complete spectrum, which a partial one does not show: :func:`median_scale`
finds it with the holes filled. Training can draw masks (:func:`draw_observed`)
so that the encoder sees partial spectra too.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .network import ScatterVAE

#: The most rounds of :func:`impute`; each is one encode and decode. A spectrum missing
#: its blue half needs ~30 to settle (benchmarks/masked_inputs.py); one missing a tenth of
#: its samples at random, 3.
IMPUTE_ROUNDS = 50
#: :func:`impute` stops when no filled input moved by more than this in a round
#: (standardised units, where a star's inputs spread over ~1; 100x float32's eps at 10).
IMPUTE_TOLERANCE = 1e-4


def impute(network: ScatterVAE, x: torch.Tensor, observed: torch.Tensor,
           rounds: int = IMPUTE_ROUNDS) -> torch.Tensor:
    """``x`` with its unmeasured inputs filled in by the model itself, for the encoder.

    The encoder was trained on complete spectra, so it is given one: the
    unmeasured inputs start at 0 (the training mean, in standardised units),
    then the spectrum is encoded, the latent mean decoded, and the unmeasured
    inputs replaced by that reconstruction, round after round until they
    settle (:data:`IMPUTE_TOLERANCE`) or ``rounds`` are done. The measured
    inputs are never changed. This is the fixed-point iteration of the model's
    own conditional mean (as in EM for missing data), so the latent rests on
    the measured inputs, the model's knowledge of spectra filling the holes;
    the likelihood then leaves the filled inputs out (``observed`` in
    :func:`~xpsvae.model.network.svae_loss`).

    Args:
        network: the trained network.
        x: standardised spectra (batch, N); unmeasured inputs may hold anything
            (NaN included).
        observed: bool (batch, N), the measured inputs.
        rounds: the most encode-decode rounds.
    """
    filled = torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))
    for _ in range(rounds):
        mean, _ = network.encode(filled)
        new = torch.where(observed, x, network.decode(mean))
        settled = rounds > 1 and bool((new - filled).abs().max() < IMPUTE_TOLERANCE)
        filled = new
        if settled:
            break
    return filled


def draw_observed(x: torch.Tensor, fraction: float, generator: torch.Generator
                  ) -> torch.Tensor:
    """A mask of measured inputs for a batch, for training on partial spectra.

    Each star loses a share of its inputs drawn uniformly in [0, 2 ``fraction``):
    a third of the stars at random inputs, a third their first (bluest) inputs, a
    third their last (reddest), the ways inputs go missing in practice.
    """
    n, d = x.shape
    share = torch.rand(n, 1, generator=generator, device=x.device) * (2 * fraction)
    scattered = torch.rand(n, d, generator=generator, device=x.device) >= share
    position = (torch.arange(d, device=x.device) + 0.5) / d
    way = torch.randint(3, (n, 1), generator=generator, device=x.device)
    return torch.where(way == 0, scattered,
                       torch.where(way == 1, position >= share, position < 1 - share))


#: Rounds of :func:`median_scale`: 3 settle a spectrum missing a tenth of its samples or
#: an end; one missing its blue half still gains from 3 to 10 (benchmarks/masked_inputs.py).
SCALE_ROUNDS = 10


def median_scale(values: np.ndarray, reconstruct: Callable[[np.ndarray], np.ndarray],
                 rounds: int = SCALE_ROUNDS) -> np.ndarray:
    """Per star, the factor that divides a partial spectrum so that its median, holes
    filled in by the model, is 1, as every complete training spectrum's is.

    A partial spectrum divided by the median of its measured samples alone is
    off by the ratio of that median to the whole spectrum's: a spectrum without
    its blue half, by a factor of ~2. Here the scale is found as a fixed point:
    divide by the current scale, fill the holes (``reconstruct``), take the
    median of the filled spectrum, fold it into the scale; a few rounds settle it.

    Args:
        values: (n, N) spectra already divided by the median of their measured
            samples, NaN where unmeasured.
        reconstruct: maps (n, N) spectra, NaN where unmeasured, to the model's
            reconstruction (n, N) in the same units, holes filled.
        rounds: rounds of the fixed point.

    Returns:
        (n,) factors (1 for a complete spectrum).
    """
    scale = np.ones(len(values))
    observed = np.isfinite(values)
    partial = ~observed.all(axis=1)
    if not partial.any():
        return scale
    for _ in range(rounds):
        part = values[partial] / scale[partial, None]
        filled = np.where(observed[partial], part, reconstruct(part))
        median = np.median(filled, axis=1)
        scale[partial] *= np.where(median > 0, median, 1.0)
    return scale
