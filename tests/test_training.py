"""Training on real library spectra: determinism, resume, learning, divergence."""
import os

import numpy as np
import pytest
import torch

from xpsvae import SVAE, TrainConfig, TrainingDiverged
from xpsvae.core.files import CHECKPOINT_NAME


def _weights(model):
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def test_same_seed_same_cpu_results(small_library, quick_config):
    stars = small_library.subset(np.arange(1500))
    a = SVAE(train_config=quick_config).fit(stars, progress=False)
    b = SVAE(train_config=quick_config).fit(stars, progress=False)
    for k, v in _weights(a).items():
        assert torch.equal(v, _weights(b)[k]), k
    assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]
    other = TrainConfig(**{**quick_config.to_dict(), "seed": quick_config.seed + 1})
    c = SVAE(train_config=other).fit(stars, progress=False)
    assert not torch.equal(_weights(a)["decoder.1.weight"], _weights(c)["decoder.1.weight"])


class Crash(Exception):
    pass


@pytest.mark.parametrize("arch,crash_after", [("paper", 2), ("later", 3)])
def test_interrupted_run_resumes_to_the_same_weights(small_library, tmp_path, arch, crash_after):
    """Crash after an epoch (during calibration for crash_after=3); resume ends where the
    uninterrupted run ends."""
    stars = small_library.subset(np.arange(1500))
    config = TrainConfig(epochs=2, calibrate_epochs=2, batch_size=128, seed=11, threads=2)
    whole = SVAE(train_config=config, arch=arch).fit(stars, out_dir=str(tmp_path / "a"),
                                                     progress=False)

    def crash(trainer):
        if trainer.epoch == crash_after:
            raise Crash()
    out = str(tmp_path / "b")
    with pytest.raises(Crash):
        SVAE(train_config=config, arch=arch).fit(stars, out_dir=out, progress=False,
                                                 on_epoch_end=crash)
    assert os.path.exists(os.path.join(out, CHECKPOINT_NAME))
    resumed = SVAE(train_config=config, arch=arch).fit(stars, out_dir=out, resume=True,
                                                       progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for k, v in _weights(whole).items():
        assert torch.equal(v, _weights(resumed)[k]), k
    assert SVAE.load(out).history[-1]["val_loss"] == pytest.approx(whole.history[-1]["val_loss"])


def test_resume_refuses_other_data_or_recipe(small_library, tmp_path, quick_config):
    stars = small_library.subset(np.arange(600))
    out = str(tmp_path / "m")
    SVAE(train_config=quick_config).fit(stars, out_dir=out, progress=False)
    with pytest.raises(ValueError, match="other data"):
        SVAE(train_config=quick_config).fit(small_library.subset(np.arange(700)), out_dir=out,
                                            resume=True, progress=False)
    other = TrainConfig(**{**quick_config.to_dict(), "lr": 0.1})
    with pytest.raises(ValueError, match="lr"):
        SVAE(train_config=other).fit(stars, out_dir=out, resume=True, progress=False)


def test_short_training_lowers_validation_loss(small_library):
    """3,000 real stars, 12 epochs of the default recipe: the validation loss (summed-ELBO
    form, nats per star) must fall by at least 300 from its first-epoch value, and the
    scatter-calibration epoch must not raise it."""
    config = TrainConfig(epochs=12, calibrate_epochs=1, seed=0, threads=2)
    model = SVAE(train_config=config).fit(small_library, progress=False)
    val = [h["val_loss"] for h in model.history]
    assert val[11] < val[0] - 300, val
    assert val[12] <= val[11] + 1e-3, val
    assert [h["phase"] for h in model.history][-1] == "calibrate"


def test_diverging_run_stops_and_keeps_last_good_checkpoint(small_library, tmp_path):
    stars = small_library.subset(np.arange(1000))
    out = str(tmp_path / "m")
    after_epoch_1 = {}

    def poison(trainer):
        if trainer.epoch == 1:
            after_epoch_1.update({k: v.clone() for k, v in trainer.model.state_dict().items()})
            with torch.no_grad():  # what an exploding step does to the weights
                trainer.model.decoder[1].weight.fill_(float("nan"))
    model = SVAE(train_config=TrainConfig(epochs=3, calibrate_epochs=0, threads=2, seed=2))
    with pytest.raises(TrainingDiverged, match="epoch 2.*last good checkpoint"):
        model.fit(stars, out_dir=out, progress=False, on_epoch_end=poison)
    restored = _weights(model)
    for k, v in after_epoch_1.items():
        assert torch.equal(v, restored[k]), k
    assert len(model.history) == 1
    # the checkpoint on disk is still the good one and resumes
    resumed = SVAE(train_config=TrainConfig(epochs=3, calibrate_epochs=0, threads=2, seed=2))
    resumed.fit(stars, out_dir=out, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert np.isfinite(resumed.history[-1]["val_loss"])


def test_bad_recipe_options_are_rejected():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam2")
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="unknown training preset"):
        TrainConfig.preset("turbo")


def test_paper_recipe_preset_is_the_papers():
    c = TrainConfig.preset("paper")
    assert (c.optimizer, c.lr, c.batch_size, c.epochs, c.loss_form) == ("sgd", 0.1, 1024, 100,
                                                                        "paper")
    assert c.momentum == 0.9 and c.calibrate_epochs == 0


def test_every_named_recipe_is_offered_and_long_is_fast_stretched():
    from xpsvae.cli.parser import build_parser
    from xpsvae.core.constants import RECIPES
    for name in RECIPES:  # each name the command line offers is a preset
        assert TrainConfig.preset(name).epochs >= 1
    recipe = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]
                  ._actions if a.dest == "recipe")
    assert tuple(recipe.choices) == RECIPES and recipe.default == "fast"
    fast, long = TrainConfig.preset("fast").to_dict(), TrainConfig.preset("long").to_dict()
    assert {k for k in fast if fast[k] != long[k]} == {"epochs"} and long["epochs"] == 1000


def test_unknown_saved_training_option_warns():
    saved = {**TrainConfig().to_dict(), "turbo_mode": True}
    with pytest.warns(UserWarning, match="turbo_mode"):
        config = TrainConfig.from_dict(saved)
    assert config == TrainConfig()


def test_compiled_training_matches_eager(small_library):
    """torch.compile fuses operations, so the weights agree closely, not bitwise."""
    stars = small_library.subset(np.arange(700))
    eager = SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, batch_size=128,
                                          threads=2, seed=4)).fit(stars, progress=False)
    compiled = SVAE(train_config=TrainConfig(epochs=1, calibrate_epochs=0, batch_size=128,
                                             threads=2, seed=4, compile=True)).fit(
        stars, progress=False)
    # torch.compile fuses the float32 kernels, so sums round in another order (a few eps of
    # 6e-8 a step), amplified over one epoch's steps; 1e-3 leaves room for that, while a
    # wrong compiled step would differ by O(1)
    for name, value in _weights(eager).items():
        torch.testing.assert_close(_weights(compiled)[name], value, rtol=1e-3, atol=1e-4)
    assert compiled.history[-1]["val_loss"] == pytest.approx(eager.history[-1]["val_loss"],
                                                             rel=1e-3)


def test_learning_rate_follows_the_batch_size_by_the_stated_rule():
    from xpsvae import TrainConfig
    assert TrainConfig(batch_size=1024).scaled_lr == 3e-3  # the rule is asked for, not default
    fast = TrainConfig(batch_size=1024, lr_scaling="auto")  # AdamW, lr meant for 256: sqrt
    assert fast.scaled_lr == pytest.approx(3e-3 * 2)
    paper = TrainConfig.preset("paper", batch_size=4096, lr_scaling="auto")  # SGD: linear
    assert paper.scaled_lr == pytest.approx(0.1 * 4)
    assert TrainConfig(batch_size=1024, lr_scaling="sqrt", lr_reference_batch=4096).scaled_lr \
        == pytest.approx(1.5e-3)
    assert TrainConfig.preset("paper").scaled_lr == 0.1
    # a configuration saved before the rule existed keeps the rate it ran at
    old = TrainConfig.preset("paper").to_dict()
    del old["lr_scaling"], old["lr_reference_batch"]
    old["batch_size"] = 2048
    assert TrainConfig.from_dict(old).scaled_lr == 0.1
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig(lr_scaling="cubic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_training_follows_the_cpu_run(small_library, amp):
    """The same recipe on CUDA (float32, or bfloat16 autocast) learns as on CPU: its
    validation loss after 12 epochs is within a few per cent (nats per star) of the CPU's."""
    config = dict(epochs=12, calibrate_epochs=1, seed=0, threads=2)
    cpu = SVAE(train_config=TrainConfig(**config, device="cpu")).fit(small_library,
                                                                     progress=False)
    cuda = SVAE(train_config=TrainConfig(**config, device="cuda", amp=amp)).fit(
        small_library, progress=False)
    val_cpu, val_cuda = cpu.history[-1]["val_loss"], cuda.history[-1]["val_loss"]
    assert np.isfinite(val_cuda) and cuda.history[-1]["val_loss"] < cuda.history[0]["val_loss"]
    assert val_cuda == pytest.approx(val_cpu, rel=0.05 if amp else 0.02), (val_cpu, val_cuda)


def test_default_threads_are_lowered_to_a_container_quota(small_library, quick_config,
                                                         monkeypatch):
    """threads=0 takes torch's default, but not more threads than the CPU quota allows,
    while training; the caller's thread count is put back after."""
    from xpsvae.core import machine
    before = torch.get_num_threads()
    monkeypatch.setattr(machine, "usable_cores", lambda: 1)
    seen = []
    record = lambda trainer: seen.append(torch.get_num_threads())  # noqa: E731
    stars = small_library.subset(np.arange(300))
    torch.set_num_threads(2)
    try:
        config = TrainConfig(**{**quick_config.to_dict(), "threads": 0, "epochs": 1})
        SVAE(train_config=config).fit(stars, progress=False, on_epoch_end=record)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # put back
        seen.clear()
        config = TrainConfig(**{**config.to_dict(), "threads": 2})  # asked for: kept
        SVAE(train_config=config).fit(stars, progress=False, on_epoch_end=record)
        assert seen and set(seen) == {2}
        torch.set_num_threads(3)
        SVAE(train_config=TrainConfig(**{**config.to_dict(), "threads": 1})).fit(
            stars, progress=False)
        assert torch.get_num_threads() == 3  # a count asked for is not left behind either
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_no_host_round_trip_inside_an_epoch(small_library, quick_config, monkeypatch,
                                            cuda_graph):
    """Reading a tensor's value on the host (item, tolist, bool, float, int, numpy) would
    make a GPU wait every step: the trainer does it only between epochs. Counted on CPU,
    the reads are the same for 4x more steps per epoch."""
    reads = {"n": 0}

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads["n"] += 1
            return original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy"):
        counted(name)
    stars = small_library.subset(np.arange(2048))
    counts = []
    for batch_size in (256, 64):
        config = TrainConfig(**{**quick_config.to_dict(), "batch_size": batch_size,
                                "lr_scaling": "none", "cuda_graph": cuda_graph})
        model = SVAE(train_config=config)
        reads["n"] = 0
        model.fit(stars, progress=False)
        counts.append(reads["n"])
    assert 0 < counts[0] == counts[1], counts  # (0: nothing was counted)


def test_standardizer_fitted_in_chunks_is_numpys_to_the_bit(small_library, monkeypatch):
    """Fitted CHUNK_ROWS rows at a time on chosen rows, the statistics are numpy's mean and
    std of those rows in float64, exactly; transform of chosen rows equals the rows of the
    whole transform."""
    from xpsvae.model import preprocess
    from xpsvae.model.preprocess import Standardizer
    monkeypatch.setattr(preprocess, "CHUNK_ROWS", 97)  # many chunks, a ragged last one
    rows = np.random.default_rng(5).permutation(len(small_library))[:1234]
    fitted = Standardizer.fit(small_library.values, rows)
    chosen = np.asarray(small_library.values[rows], dtype=np.float64)
    assert np.array_equal(fitted.mean, chosen.mean(axis=0))
    assert np.array_equal(fitted.std, np.where(chosen.std(axis=0) > 0, chosen.std(axis=0), 1.0))
    x, err = fitted.transform(small_library.values, small_library.errors, rows=rows[::-1])
    x_all, err_all = fitted.transform(small_library.values, small_library.errors)
    assert np.array_equal(x, x_all[rows[::-1]]) and np.array_equal(err, err_all[rows[::-1]])
    with pytest.raises(ValueError, match="1 rows chosen"):
        Standardizer.fit(small_library.values, rows[:1])
