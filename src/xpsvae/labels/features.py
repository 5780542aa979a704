"""What a label model sees of a star: the sVAE's view of its spectrum, and side columns.

The latent of an unsupervised sVAE (six numbers) holds far less about a
star's labels than its spectrum does: gradient-boosted trees on the latent
means reach 236 K in Teff, a plain MLP on the spectrum 62 K. The encoder's
hidden layers hold more (80, 50 and 30 units, learnt from every star; an sVAE
trained with labels, ``SVAE.fit(..., labels=...)``, puts more in both). So the
features are the output of every module of the encoder's hidden stack on the
star's spectrum (each linear map and each activation; holes filled in as for
encoding), the latent mean and the log of the latent standard deviation: 332
numbers from a model of the paper's size. The linear maps' outputs add what
the activations cut off; measured, they change the demo's figures by a few
per cent at most.

Side columns are optional (an archive store has no 2MASS): any per-star
column of the input table, or a difference of two, written ``j-h``.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.errors import SpectraError
from ..io.spectra import SpectraSet
from ..model.network import LOGVAR_BOUND
from ..svae import SVAE


def svae_features(model: SVAE, spectra: SpectraSet, device: str = "cpu") -> np.ndarray:
    """(n_stars, n_features) float32: the output of every module of the encoder's hidden
    stack, the latent mean and ln of the latent standard deviation, for each star."""
    hidden_stack, head = model.network.encoder[0], model.network.encoder[1]

    def fn(t):
        outputs = []
        for layer in hidden_stack:
            t = layer(t)
            outputs.append(t)  # each layer's output: the linear maps' and the activations'
        mean, logvar = head(t).chunk(2, dim=-1)  # as the network's encode() bounds it
        return (torch.cat(outputs, dim=1), mean,
                0.5 * logvar.clamp(-LOGVAR_BOUND, LOGVAR_BOUND))
    hidden, mean, log_std = model.apply(fn, spectra, device)
    return np.concatenate([hidden, mean, log_std], axis=1).astype(np.float32)


def feature_names(model: SVAE) -> List[str]:
    """Names of :func:`svae_features`' columns: ``<module>_<index>_<unit>``, then the latent."""
    names = []
    for index, module in enumerate(model.network.encoder[0]):
        width = module.out_features if isinstance(module, torch.nn.Linear) else \
            len(names) and names[-1][1]
        names.append((f"{type(module).__name__.lower()}_{index}", width))
    d = model.config.latent_dim
    return [f"{name}_{i}" for name, width in names for i in range(width)] + \
        [f"latent_mean_{j}" for j in range(d)] + [f"latent_log_std_{j}" for j in range(d)]


def side_columns(table: pd.DataFrame, names: Sequence[str], source: str) -> np.ndarray:
    """(n, len(names)) float64 of per-star columns; ``a-b`` is column a minus column b.
    NaN where a value is missing (the label model fills it and says so)."""
    out = []
    for name in names:
        parts = [p.strip() for p in name.split("-")] if "-" in name and name not in table \
            else [name]
        missing = [p for p in parts if p not in table]
        if missing:
            raise SpectraError(f"{source}: no column {missing[0]!r} for the side column "
                               f"{name!r}; columns present: {sorted(table.columns)[:20]}")
        column = np.asarray(table[parts[0]], dtype=np.float64)
        if len(parts) == 2:
            column = column - np.asarray(table[parts[1]], dtype=np.float64)
        elif len(parts) > 2:
            raise SpectraError(f"{name!r}: a side column is a column or a difference of two")
        out.append(column)
    return np.column_stack(out) if out else np.zeros((len(table), 0))
