"""The bound on gradient spikes (xpsvae.model.spikes): a spike is cut down to the bound,
every other step is left exactly as it was, and the state survives a checkpoint."""
import numpy as np
import pytest
import torch

from xpsvae import TrainConfig
from xpsvae.model.spikes import BETA, WARMUP_STEPS, SpikeGuard


def _run(guard, grads, parameter):
    """Feed ``grads`` through the guard; return what each step left in the gradient."""
    seen = []
    for g in grads:
        parameter.grad = g.clone()
        guard([parameter])
        seen.append(parameter.grad.clone())
    return seen


def _gradients(n, spikes, size=1000.0):
    rng = torch.Generator().manual_seed(0)
    grads = [torch.randn(16, generator=rng) for _ in range(n)]
    for i in spikes:
        grads[i] = grads[i] * size
    return grads


def test_a_spike_is_cut_to_the_bound_and_other_steps_are_left_exactly():
    guard = SpikeGuard(5.0, torch.device("cpu"))  # warm-up: WARMUP_STEPS = 250
    grads = _gradients(300, spikes=[100, 280])  # one in the warm-up, one after
    seen = _run(guard, grads, torch.nn.Parameter(torch.zeros(16)))
    for i, (g, s) in enumerate(zip(grads, seen)):
        if i != 280:
            assert torch.equal(g, s), i  # times exactly 1.0
    # the bound at step 280: 5 x the running mean (from 0) of the earlier norms, the
    # warm-up's as they were and the later ones bounded; in float64 here
    norms = [float(np.linalg.norm(g.numpy().astype(np.float64))) for g in grads]
    mean = 0.0
    for i in range(280):
        bounded = norms[i] if i < WARMUP_STEPS else min(norms[i], 5.0 * mean)
        mean = BETA * mean + (1 - BETA) * bounded
    # float32 norms and a running mean over 280 steps, each rounding at ~6e-8 relative
    assert float(seen[280].norm()) == pytest.approx(5.0 * mean, rel=1e-4)
    assert float(seen[280].norm()) < norms[280] / 50
    # the direction is kept
    assert torch.allclose(seen[280] / seen[280].norm(), grads[280] / grads[280].norm(),
                          atol=1e-6)
    assert guard.take_bounded() == 1 and guard.take_bounded() == 0


def test_the_guard_resumes_from_its_state_and_zero_turns_it_off():
    grads = _gradients(300, spikes=[270, 290])
    expected = _run(SpikeGuard(5.0, torch.device("cpu")), grads,
                    torch.nn.Parameter(torch.zeros(16)))
    first = SpikeGuard(5.0, torch.device("cpu"))
    _run(first, grads[:280], torch.nn.Parameter(torch.zeros(16)))
    second = SpikeGuard(5.0, torch.device("cpu"))
    second.load_state_dict(first.state_dict())
    resumed = _run(second, grads[280:], torch.nn.Parameter(torch.zeros(16)))
    assert not torch.equal(expected[290], grads[290])  # the spike after the split was cut
    for e, r in zip(expected[280:], resumed):
        assert torch.equal(e, r)
    off = _run(SpikeGuard(0.0, torch.device("cpu")), grads, torch.nn.Parameter(torch.zeros(16)))
    assert all(torch.equal(g, s) for g, s in zip(grads, off))


def test_the_bound_must_be_off_or_above_one():
    for bad in (-1.0, 0.5, 1.0):
        with pytest.raises(ValueError, match="spike_clip"):
            TrainConfig(spike_clip=bad)
    assert TrainConfig().spike_clip == 5.0 and TrainConfig(spike_clip=0).spike_clip == 0
    # the paper's recipe is the paper's, and a model saved before the bound was trained
    # without it
    assert TrainConfig.preset("paper").spike_clip == 0.0
    saved = {k: v for k, v in TrainConfig().to_dict().items() if k != "spike_clip"}
    assert TrainConfig.from_dict(saved).spike_clip == 0.0


def test_a_run_keeps_the_guard_in_its_checkpoint_and_counts_bounded_steps(small_library,
                                                                          tmp_path):
    from safetensors.torch import load_file

    from xpsvae import SVAE
    from xpsvae.core.files import CHECKPOINT_NAME
    stars = small_library.subset(np.arange(600))
    config = TrainConfig(epochs=2, calibrate_epochs=1, batch_size=64, threads=2, seed=3)
    model = SVAE(train_config=config).fit(stars, out_dir=str(tmp_path), progress=False)
    saved = load_file(str(tmp_path / CHECKPOINT_NAME))
    steps_per_epoch = 540 // 64  # 540 training stars, whole batches of 64
    assert int(saved["guard.steps"]) == 3 * steps_per_epoch
    assert float(saved["guard.mean_norm"]) > 0
    # 24 steps, all in the warm-up: none bounded
    assert [row["bounded_steps"] for row in model.history] == [0, 0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_guard_replays_from_a_captured_cuda_graph():
    """The trainer's --cuda-graph step captures the guard with the rest of the step: replayed,
    it bounds what the eager guard bounds (the norms summed in another order: float32)."""
    grads = _gradients(300, spikes=[100, 280])
    expected = _run(SpikeGuard(5.0, torch.device("cpu")), grads,
                    torch.nn.Parameter(torch.zeros(16)))
    device = torch.device("cuda")
    p = torch.nn.Parameter(torch.zeros(16, device=device))
    p.grad = torch.zeros(16, device=device)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, on a guard thrown away
        SpikeGuard(5.0, device)([p])
    torch.cuda.current_stream().wait_stream(side)
    guard = SpikeGuard(5.0, device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        guard([p])
    seen = []
    for g in grads:
        p.grad.copy_(g.to(device))
        graph.replay()
        seen.append(p.grad.cpu())
    for e, s in zip(expected, seen):
        torch.testing.assert_close(s, e, rtol=1e-5, atol=0.0)
    assert guard.take_bounded() == 1


def test_a_run_that_bounds_many_steps_is_told_so(small_library):
    """A bound just above 1 acts on about every other step: the run warns, naming the count
    and what to try; the default bound on the same run says nothing."""
    import warnings

    from xpsvae import SVAE
    stars = small_library.subset(np.arange(600))

    def fit(spike_clip):
        config = TrainConfig(epochs=10, calibrate_epochs=0, batch_size=16, threads=2, seed=1,
                             spike_clip=spike_clip)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = SVAE(train_config=config).fit(stars, progress=False)
        return model, [str(w.message) for w in caught if "bounded in" in str(w.message)]
    model, told = fit(1.01)
    bounded = sum(row["bounded_steps"] for row in model.history)
    assert bounded > 0.01 * 10 * (540 // 16) and len(told) == 1
    assert f"bounded in {bounded} of {10 * (540 // 16)} steps" in told[0] and "--lr" in told[0]
    assert fit(5.0)[1] == []
