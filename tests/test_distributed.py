"""Multi-process training with DistributedDataParallel (gloo, 2 CPU processes, via torchrun)."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors import safe_open

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on POSIX")


@pytest.fixture(scope="module")
def stars_file(tmp_path_factory, small_library):
    stars = small_library.subset(np.arange(3000))
    path = str(tmp_path_factory.mktemp("ddp") / "stars.parquet")
    pq.write_table(pa.table({"source_id": stars.source_id,
                             "flux": list(stars.values.astype(np.float64)),
                             "flux_error": list(stars.errors.astype(np.float64))}), path)
    return path


def _train(args, processes=1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "xpsvae", "--quiet", "train", *args]
    else:
        # --standalone: a local rendezvous on a free port, so parallel runs cannot collide
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(processes), "-m", "xpsvae", "--quiet", "train", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _one_and_two_processes_agree(common, tmp_path) -> None:
    """Trained as one process and as two: the validation loss over the last ten of 25
    epochs agrees within 6%."""
    _train([*common, "--out", str(tmp_path / "one")])
    _train([*common, "--out", str(tmp_path / "two")], processes=2)
    one = pd.read_csv(tmp_path / "one" / "history.csv")
    two = pd.read_csv(tmp_path / "two" / "history.csv")
    assert len(one) == len(two) == 25
    rel = ((one.val_loss - two.val_loss).abs() / one.val_loss.abs()).iloc[-10:]
    assert rel.max() < 0.06, rel.tolist()


def test_two_processes_follow_the_single_process_loss_curve(tmp_path, stars_file):
    """Same global batch (256 = 2 x 128): the validation loss over the last ten epochs agrees
    within 6% (single-process runs with other seeds spread by about 5% here)."""
    common = [stars_file, "--epochs", "25", "--calibrate-epochs", "0", "--batch-size", "256",
              "--threads", "1", "--device", "cpu"]
    _one_and_two_processes_agree(common, tmp_path)
    with safe_open(str(tmp_path / "two" / "checkpoint.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"rng.generator.0", "rng.generator.1"} <= keys  # each rank's random stream


def test_two_process_run_resumes(tmp_path, stars_file):
    out = str(tmp_path / "m")
    common = [stars_file, "--out", out, "--batch-size", "256", "--threads", "1",
              "--device", "cpu", "--calibrate-epochs", "1"]
    _train([*common, "--epochs", "2"], processes=2)
    _train([*common, "--epochs", "4", "--resume"], processes=2)
    history = pd.read_csv(os.path.join(out, "history.csv"))
    # 2 epochs + 1 calibration epoch, then resumed with --epochs 4: the first run's
    # calibration epoch (3) stays in the history, training goes on (4), then calibrates (5)
    assert history.epoch.tolist()[:2] == [1, 2] and history.epoch.tolist()[-1] == 5
    assert history.phase.tolist()[-1] == "calibrate"
    assert np.isfinite(history.val_loss).all()


def test_two_processes_stream_a_store_each_from_its_own_shards(tmp_path, calspec_store):
    out = str(tmp_path / "m")
    _train([calspec_store, "--streaming", "--out", out, "--batch-size", "32", "--epochs", "3",
            "--calibrate-epochs", "1", "--threads", "1", "--device", "cpu", "--arch", "later"],
           processes=2)  # BatchNorm per rank on CPU: SyncBatchNorm is GPU-only in PyTorch
    history = pd.read_csv(os.path.join(out, "history.csv"))
    assert history.epoch.tolist() == [1, 2, 3, 4] and np.isfinite(history.val_loss).all()
    assert os.path.exists(os.path.join(out, "model.safetensors"))


def test_two_processes_hold_their_own_parts_of_a_store_resident(tmp_path, stars_file):
    """--resident under torchrun: each rank keeps only its own shards' stars; the loss
    curve follows a single-process resident run of the same global batch, as above."""
    from xpsvae.ingestion.pipeline import ingest
    store = str(tmp_path / "store")
    ingest([stars_file], store, rows_per_shard=300, progress=False)  # 10 shards
    common = [store, "--resident", "--epochs", "25", "--calibrate-epochs", "0",
              "--batch-size", "256", "--threads", "1", "--device", "cpu"]
    _one_and_two_processes_agree(common, tmp_path)
    assert os.path.exists(tmp_path / "two" / "model.safetensors")


def test_a_part_too_large_on_one_rank_stops_every_rank(tmp_path, calspec_store):
    """--resident under torchrun: when one rank's part would not fit, every rank raises
    the same refusal, naming that rank, and none is left waiting for it."""
    script = tmp_path / "one_rank_short.py"
    script.write_text(
        "import sys\n"
        "import torch.distributed as dist\n"
        "from xpsvae import SVAE, TrainConfig\n"
        "from xpsvae.core import machine\n"
        "from xpsvae.core.errors import SpectraError\n"
        "dist.init_process_group('gloo')\n"
        "if dist.get_rank() == 1:\n"
        "    machine.usable_memory = lambda: 1000  # this rank alone is short of memory\n"
        "try:\n"
        "    SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, batch_size=32,\n"
        "                                  threads=1)).fit_store(sys.argv[1], progress=False,\n"
        "                                                        resident=True)\n"
        "except SpectraError as exc:  # a file per rank: their prints would interleave\n"
        "    open(f'{sys.argv[2]}/rank{dist.get_rank()}.txt', 'w').write(str(exc))\n"
        "    sys.exit(3)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", str(script), calspec_store,
                           str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    for rank in (0, 1):
        refusal = tmp_path / f"rank{rank}.txt"
        assert refusal.exists(), done.stderr[-2000:]
        assert "rank 1 of 2 holds" in refusal.read_text()


def test_two_processes_learn_labels_as_one_does(tmp_path, small_library):
    """Semi-supervised under torchrun: the label head is inside the model's forward, so DDP
    averages its gradients too, and both ranks standardise the labels by all the training
    stars. One process and two agree on the validation loss as above, and on the labels'
    statistics to the bit; both learn the labels. The label term's last value itself
    spreads from -0.5 to -1.2 between single-process seeds here, so it is not compared."""
    from safetensors.numpy import load_file
    stars = small_library.subset(np.arange(3000))
    path = str(tmp_path / "labelled.parquet")
    pq.write_table(pa.table({"source_id": stars.source_id,
                             "flux": list(stars.values.astype(np.float64)),
                             "flux_error": list(stars.errors.astype(np.float64)),
                             "teff": stars.labels["teff"].to_numpy(float),
                             "logg": stars.labels["logg"].to_numpy(float)}), path)
    common = [path, "--labels", "teff,logg", "--epochs", "25", "--calibrate-epochs", "0",
              "--batch-size", "256", "--threads", "1", "--device", "cpu"]
    _one_and_two_processes_agree(common, tmp_path)
    for run in ("one", "two"):
        label = pd.read_csv(tmp_path / run / "history.csv").train_label
        assert label.iloc[-1] < label.iloc[0] - 1.0, (run, label.tolist())
    weights = [load_file(str(tmp_path / run / "model.safetensors")) for run in ("one", "two")]
    for name in ("label_head.label_mean", "label_head.label_std"):
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
