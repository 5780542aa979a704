"""xpsvae: the scatter variational auto-encoder (Laroche & Speagle 2023) for Gaia DR3 XP spectra."""

__version__ = "0.1.0"

from .data import RowAccounting, SpectraError, SpectraSet, read_spectra  # noqa: E402
from .library import benchmark_split, library_path, load_apogee_library  # noqa: E402
from .model import ScatterVAE, SVAEConfig, svae_loss  # noqa: E402
from .preprocess import Standardizer  # noqa: E402
from .svae import SVAE, ModelFileError  # noqa: E402
from .trainer import Trainer, TrainConfig, TrainingDiverged  # noqa: E402

__all__ = ["SVAE", "SVAEConfig", "TrainConfig", "Trainer", "ScatterVAE", "svae_loss",
           "SpectraSet", "RowAccounting", "SpectraError", "read_spectra", "Standardizer",
           "load_apogee_library", "library_path", "benchmark_split", "ModelFileError",
           "TrainingDiverged", "__version__"]
