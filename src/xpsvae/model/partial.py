"""Partial spectra: the model fills in what was not measured, for its encoder.

A spectrum with inputs unmeasured (NaN: a masked sample, a band missing) is
encoded from a complete one, its holes filled by the model itself
(:func:`impute`; every pass of the model over stars, :func:`run_filled`, does so);
the likelihood then leaves the filled inputs out
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
#: :func:`impute` gives a star up when a round moves its fill this many times further than
#: its smallest move yet: a fill that settles, even slowly and swinging, never moves much
#: more than it has before, while one that runs away grows 2-3x a round.
IMPUTE_RUNAWAY = 100.0


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

    Each star stops when its own holes settle, so a star is filled the same
    whichever stars share its batch (up to float32 rounding), and a batch costs
    the rounds its stars need, not its slowest star's rounds for every star
    (benchmarks/impute_per_star.py).

    The iteration need not settle. With most of a spectrum missing, a model can
    map a wrong fill to a worse one, and the fill runs away: an sVAE trained
    1,000 epochs, given spectra without their bluest 80%, filled some to 10^21
    standardised units in 50 rounds, swinging from side to side, 2.6x further
    each round. So a star whose move in a round is :data:`IMPUTE_RUNAWAY` times
    its smallest yet stops, and keeps the fill that followed that smallest
    move, the nearest the iteration came to settling. A fill that settles, even
    slowly or swinging, never moves that much more than it has before, and is
    not affected.

    Args:
        network: the trained network.
        x: standardised spectra (batch, N); unmeasured inputs may hold anything
            (NaN included).
        observed: bool (batch, N), the measured inputs.
        rounds: the most encode-decode rounds.
    """
    filled = torch.where(observed, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if rounds == 1:  # training's single round: fixed shapes, no wait on the device
        return torch.where(observed, x, network.decode(network.encode(filled)[0]))
    partial = (~observed).any(dim=1).nonzero().squeeze(1)  # complete stars need no round
    # per partial star (complete ones, most of a catalogue, keep no copy): its smallest
    # move yet, and the fill that followed it
    smallest = torch.full((len(partial),), float("inf"), device=x.device)
    best = filled[partial]
    active = torch.arange(len(partial), device=x.device)  # those still moving, of partial
    for _ in range(rounds):
        if not len(active):
            break
        rows = partial[active]
        part = filled[rows]
        new = torch.where(observed[rows], part, network.decode(network.encode(part)[0]))
        filled[rows] = new
        move = (new - part).abs().amax(dim=1)
        least = move < smallest[active]
        smallest[active[least]], best[active[least]] = move[least], new[least]
        ran_away = move > IMPUTE_RUNAWAY * smallest[active]
        filled[rows[ran_away]] = best[active[ran_away]]
        active = active[(move >= IMPUTE_TOLERANCE) & ~ran_away]
    return filled


@torch.no_grad()
def run_filled(network: ScatterVAE, fn: Callable[[torch.Tensor], tuple], array: np.ndarray,
               device: torch.device, chunk: int = 65536) -> tuple:
    """``fn`` applied to float32 chunks of ``array`` on ``device``, the outputs as arrays
    joined along the stars. A chunk with unmeasured inputs (NaN) reaches ``fn`` with them
    filled in by the model (:func:`impute`); a complete chunk as it is. The network stays
    on ``device`` after: a catalogue is encoded shard by shard."""
    if next(network.parameters()).device != device:
        network.to(device)
    network.eval()
    parts = []
    for i in range(0, array.shape[0], chunk):
        t = torch.from_numpy(np.ascontiguousarray(array[i:i + chunk], dtype=np.float32)
                             ).to(device)
        observed = torch.isfinite(t)
        if not bool(observed.all()):
            t = impute(network, t, observed)
        parts.append([o.float().cpu().numpy() for o in fn(t)])
    return tuple(np.concatenate(p) for p in zip(*parts))


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
    Where most of the spectrum is filled, the filled median need not follow the
    scale, and the fixed point may not exist: the scale then grows round after
    round (~8x a round without the bluest 80%, on an sVAE trained 1,000 epochs).
    So each star keeps the scale of the round whose median came nearest 1,
    which for a star that settles is the last.

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
    best, nearest = scale.copy(), np.full(len(values), np.inf)  # |ln median| of best's round
    rows = np.flatnonzero(partial)
    for _ in range(rounds):
        part = values[rows] / scale[rows, None]
        filled = np.where(observed[rows], part, reconstruct(part))
        median = np.median(filled, axis=1)
        factor = np.where(median > 0, median, 1.0)
        scale[rows] *= factor
        off = np.abs(np.log(factor))
        nearer = off < nearest[rows]
        nearest[rows[nearer]], best[rows[nearer]] = off[nearer], scale[rows[nearer]]
    return best


#: Draws of a partial star's unmeasured inputs in :func:`imputation_variance`. The
#: variance over K draws is known to a relative sqrt(2 / (K - 1)): 25% at 32.
SPREAD_DRAWS = 32


def imputation_variance(encode_mean: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                        err: np.ndarray, x_hat: np.ndarray, scatter: np.ndarray,
                        observed: np.ndarray, draws: int = SPREAD_DRAWS, seed: int = 0
                        ) -> np.ndarray:
    """Per partial star, how far its latent mean could move with what was not measured.

    The encoder's latent standard deviation speaks for a complete spectrum. For a
    partial one, the holes add an uncertainty of their own: filled by the model's
    reconstruction, they could as well have been any spectrum the model thinks
    likely there. So the holes are drawn ``draws`` times from the model's predictive,
    ``x_hat + sqrt(scatter^2 + err^2) * N(0, 1)``, each drawn spectrum (measured
    inputs as they are) is encoded, and the variance of the latent means over the
    draws is returned: the between-imputation variance of multiple imputation
    (Rubin 1987). The star's latent variance is then ``sigma^2 + (1 + 1/K) B``.
    An unmeasured input's error is that of its nearest measured neighbour (errors
    vary slowly along a spectrum). Seeded: the same stars give the same variance.

    Args:
        encode_mean: maps complete standardised spectra (n, N) to latent means (n, n_Z).
        x, err: the stars' standardised spectra and errors (n, N), NaN where unmeasured.
        x_hat, scatter: the reconstruction and intrinsic scatter at the latent mean (n, N).
        observed: bool (n, N), the measured inputs.
        draws: K, the number of draws.
        seed: seed of the draws.

    Returns:
        (n, n_Z) the variance over the draws of each latent mean (ddof 1).
    """
    rng = np.random.default_rng(seed)
    sd = np.sqrt(scatter.astype(np.float64) ** 2 + _nearest_measured(err, observed) ** 2)
    means = [encode_mean(np.where(observed, x, x_hat + sd * rng.standard_normal(x.shape)))
             for _ in range(draws)]
    return np.var(np.stack(means), axis=0, ddof=1)


def _nearest_measured(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``values`` with each unmeasured entry replaced by the nearest measured one in its
    row (the previous one; the next one before the first measured); 0 in a row with none."""
    n, d = values.shape
    position = np.arange(d)
    before = np.maximum.accumulate(np.where(observed, position, -1), axis=1)
    after = np.minimum.accumulate(np.where(observed, position, d)[:, ::-1], axis=1)[:, ::-1]
    source = np.where(before >= 0, before, np.minimum(after, d - 1))
    out = np.take_along_axis(np.where(observed, values, 0.0), source, axis=1)
    return np.where(observed.any(axis=1, keepdims=True), out, 0.0)
