"""The training step on fixed buffers (cuda_graph): on CPU it must give the eager loop's
numbers exactly, through both phases, resume and streaming; on CUDA it is captured."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from xpsvae import SVAE, TrainConfig
from xpsvae.cli import main
from xpsvae.model.graphstep import GraphedStep


def _weights(model):
    return model.network.state_dict()


def _assert_same(a, b):
    for name, value in _weights(a).items():
        assert torch.equal(value, _weights(b)[name]), name
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]


@pytest.mark.parametrize("optimizer,grad_clip,arch", [("adamw", 0.0, "paper"),
                                                       ("sgd", 0.5, "paper"),
                                                       ("adamw", 0.0, "later")])
def test_graphed_step_gives_the_eager_numbers_on_cpu(small_library, optimizer, grad_clip, arch):
    """Also with BatchNorm (``later``), whose running statistics the step updates in place."""
    stars = small_library.subset(np.arange(900))
    common = dict(optimizer=optimizer, lr=3e-3 if optimizer == "adamw" else 0.02,
                  grad_clip=grad_clip, epochs=2, calibrate_epochs=1, batch_size=128, seed=6,
                  threads=2)
    eager = SVAE(train_config=TrainConfig(**common), arch=arch).fit(stars, progress=False)
    graphed = SVAE(train_config=TrainConfig(**common, cuda_graph=True), arch=arch).fit(
        stars, progress=False)
    assert len(graphed.history) == 3 and graphed.history[-1]["phase"] == "calibrate"
    _assert_same(eager, graphed)


class Crash(Exception):
    pass


def test_graphed_run_resumes_from_its_checkpoint_and_from_an_eager_one(small_library, tmp_path):
    """The rate is a tensor in graphed runs: checkpoints store it as a number, and a run
    resumed in either mode ends where the uninterrupted one does."""
    stars = small_library.subset(np.arange(900))
    config = TrainConfig(epochs=2, calibrate_epochs=1, batch_size=128, seed=8, threads=2,
                         cuda_graph=True)
    whole = SVAE(train_config=config).fit(stars, progress=False)

    def crash(trainer):
        if trainer.epoch == 1:
            raise Crash()
    for crashed_mode in (True, False):
        out = str(tmp_path / f"crashed_graph_{crashed_mode}")
        first = TrainConfig(**{**config.to_dict(), "cuda_graph": crashed_mode})
        with pytest.raises(Crash):
            SVAE(train_config=first).fit(stars, out_dir=out, progress=False, on_epoch_end=crash)
        resumed = SVAE(train_config=config).fit(stars, out_dir=out, resume=True, progress=False)
        assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
        _assert_same(whole, resumed)


def test_streamed_training_with_the_graphed_step_matches_eager(calspec_store, tmp_path):
    common = [calspec_store, "--streaming", "--buffer-shards", "2", "--batch-size", "32",
              "--calibrate-epochs", "1", "--threads", "2", "--seed", "4", "--epochs", "2"]
    assert main(["--quiet", "train", *common, "--out", str(tmp_path / "eager")]) == 0
    assert main(["--quiet", "train", *common, "--cuda-graph", "--out",
                 str(tmp_path / "graph")]) == 0
    eager = load_file(str(tmp_path / "eager" / "model.safetensors"))
    graph = load_file(str(tmp_path / "graph" / "model.safetensors"))
    for name in eager:
        assert torch.equal(eager[name], graph[name]), name


def test_graphed_step_refuses_batches_of_another_shape():
    lr = torch.tensor(0.1, dtype=torch.float64)
    step = GraphedStep(lambda *a: None, lr, batch_size=8, input_dim=5, latent_dim=2, n_terms=4,
                       with_noise=True, device=torch.device("cpu"))
    with pytest.raises(ValueError, match=r"batches of shape \(8, 5\), got \(7, 5\)"):
        step(torch.zeros(7, 5), torch.ones(7, 5), torch.zeros(7, 2), 0.1)
    with pytest.raises(ValueError, match="built with latent noise"):
        step(torch.zeros(8, 5), torch.ones(8, 5), None, 0.1)
    step(torch.zeros(8, 5), torch.ones(8, 5), torch.zeros(8, 2), 0.25)
    assert float(lr) == 0.25  # the rate is written into the optimiser's own tensor
    with pytest.raises(ValueError, match="0-d tensor"):
        GraphedStep(lambda *a: None, torch.zeros(1), 8, 5, 2, 4, True, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to capture")
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_captured_step_on_cuda_follows_the_eager_run(small_library, optimizer):
    """On CUDA the step is really captured and replayed; the rate lives in float32 there,
    so the weights agree closely rather than bitwise."""
    from xpsvae.model.network import ScatterVAE, SVAEConfig
    from xpsvae.model.trainer import Trainer
    stars = small_library.subset(np.arange(1200))
    x = torch.from_numpy(((stars.values - stars.values.mean(0)) / stars.values.std(0))).float()
    err = torch.from_numpy(stars.errors / stars.values.std(0)).float()
    runs = []
    for graph in (False, True):
        torch.manual_seed(0)
        net = ScatterVAE(SVAEConfig(input_dim=stars.n_inputs))
        config = TrainConfig(optimizer=optimizer, lr=1e-3 if optimizer == "adamw" else 0.01,
                             epochs=2, calibrate_epochs=1, batch_size=128, device="cuda",
                             cuda_graph=graph)
        trainer = Trainer(net, config, progress=False)
        trainer.fit(x, err, x[:200], err[:200])
        runs.append((trainer, net))
    (eager, eager_net), (graphed, graphed_net) = runs
    assert sorted(graphed.graphed) == [False, True]
    assert all(step.graph is not None for step in graphed.graphed.values())
    # Off CUDA the captured path runs the same float32 step on fixed buffers: the kernels may
    # sum in another order (a few eps of 6e-8 a step), which training amplifies over its
    # steps; 1e-3 leaves room for that growth, while a wrong step differs by O(1)
    for name, value in eager_net.state_dict().items():
        torch.testing.assert_close(graphed_net.state_dict()[name], value, rtol=1e-3, atol=1e-5)
    assert graphed.history[-1]["val_loss"] == pytest.approx(eager.history[-1]["val_loss"],
                                                            rel=1e-3)


def test_graphed_step_is_refused_under_several_processes(monkeypatch):
    from xpsvae.model import trainer as trainer_module
    from xpsvae.model.network import ScatterVAE, SVAEConfig
    monkeypatch.setattr(trainer_module, "distributed_rank_world", lambda: (0, 2))
    with pytest.raises(ValueError, match="cuda_graph trains in one process"):
        trainer_module.Trainer(ScatterVAE(SVAEConfig(input_dim=10)),
                               TrainConfig(device="cpu", cuda_graph=True), progress=False)
