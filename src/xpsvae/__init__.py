"""xpsvae: the scatter variational auto-encoder (Laroche & Speagle 2023) for Gaia DR3 XP spectra.

The names below are imported on first use, so that reading Gaia files
(``xpsvae.xpformats``, ``xpsvae.ingest``, and their worker processes) does not
pay for importing PyTorch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "RowAccounting": "data", "SpectraError": "data", "SpectraSet": "data", "read_spectra": "data",
    "open_store": "ingest",
    "benchmark_split": "library", "library_path": "library", "load_apogee_library": "library",
    "ScatterVAE": "model", "SVAEConfig": "model", "svae_loss": "model",
    "Standardizer": "preprocess",
    "SVAE": "svae", "ModelFileError": "svae",
    "Trainer": "trainer", "TrainConfig": "trainer", "TrainingDiverged": "trainer",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'xpsvae' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
