import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def shared_file(*parts):
    """A real Gaia file from ../shared/data, or skip with the reason."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real Gaia sample data not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def library():
    from xpsvae import load_apogee_library
    return load_apogee_library()


@pytest.fixture(scope="session")
def small_library(library):
    """3,000 real library stars: the first 3,000 of the benchmark training split."""
    from xpsvae import benchmark_split
    train_idx, _ = benchmark_split(len(library))
    return library.subset(np.sort(train_idx[:3000]))


@pytest.fixture
def quick_config():
    from xpsvae import TrainConfig
    return TrainConfig(epochs=2, calibrate_epochs=1, batch_size=256, seed=3, threads=2)
