"""xpsvae: the scatter variational auto-encoder (Laroche & Speagle 2023) for Gaia DR3 XP spectra.

What a user imports::

    from xpsvae import SVAE, ingest, read_spectra

The layers, each importing only those beneath it (``tests/test_layers.py``
keeps them so)::

    cli            the ``xpsvae`` command
    evaluation     metrics, the paper's claims, figures, the report, the demo
    catalog        encoding a store, in one process or on Dask
    labels         stellar labels with calibrated uncertainties on the sVAE
    cannon         The Cannon, the supervised baseline
    svae           the SVAE facade: fit, encode, generate, save, load
    model          the network and its loss, pre-processing, the trainer, streaming
    ingestion      Gaia archive files into a store
    flux           XP coefficients to sampled flux, synthetic G
    io             spectra in memory, stores on disk, the embedded APOGEE library
    core           errors, constants, on-disk names, the machine's limits

The names below are imported on first use, so that reading Gaia files
(``xpsvae ingest``, and its worker processes) does not pay for importing
PyTorch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .core.constants import VERSION as __version__

if TYPE_CHECKING:  # what an IDE or a type checker sees; at run time, __getattr__ below
    from .cannon import Cannon
    from .catalog import encode_store
    from .core.errors import ModelFileError, SpectraError, TrainingDiverged, XPParseError
    from .flux import XPSampler, write_store_flux
    from .ingestion.pipeline import ingest
    from .io.library import benchmark_sets, benchmark_split, library_path, load_apogee_library
    from .io.read import read_spectra
    from .io.spectra import RowAccounting, SpectraSet
    from .io.store import Store, open_store
    from .labels import LabelEnsemble, LabelHeadConfig, LabelModel
    from .model.network import ScatterVAE, SVAEConfig, svae_loss
    from .model.preprocess import Standardizer
    from .model.recipe import TrainConfig
    from .model.trainer import Trainer
    from .svae import SVAE

_EXPORTS = {
    "SVAE": "svae", "Cannon": "cannon", "encode_store": "catalog",
    "ModelFileError": "core.errors", "SpectraError": "core.errors",
    "TrainingDiverged": "core.errors", "XPParseError": "core.errors",
    "XPSampler": "flux", "write_store_flux": "flux",
    "ingest": "ingestion.pipeline",
    "benchmark_sets": "io.library", "benchmark_split": "io.library", "library_path": "io.library",
    "load_apogee_library": "io.library",
    "read_spectra": "io.read", "RowAccounting": "io.spectra", "SpectraSet": "io.spectra",
    "Store": "io.store", "open_store": "io.store",
    "LabelModel": "labels", "LabelHeadConfig": "labels", "LabelEnsemble": "labels",
    "ScatterVAE": "model.network", "SVAEConfig": "model.network", "svae_loss": "model.network",
    "Standardizer": "model.preprocess",
    "TrainConfig": "model.recipe", "Trainer": "model.trainer",
}

__all__ = ["Cannon", "LabelEnsemble", "LabelHeadConfig", "LabelModel", "ModelFileError",
           "RowAccounting", "SVAE", "SVAEConfig", "ScatterVAE",
           "SpectraError", "SpectraSet", "Standardizer", "Store", "TrainConfig", "Trainer",
           "TrainingDiverged", "XPParseError", "XPSampler", "__version__", "benchmark_sets",
           "benchmark_split",
           "encode_store", "ingest", "library_path", "load_apogee_library", "open_store",
           "read_spectra", "svae_loss", "write_store_flux"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xpsvae' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
