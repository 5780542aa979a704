"""A bound on gradient spikes: one bad batch must not throw the network away.

The summed ELBO (paper Eq. 5) of a batch is dominated by its worst-fitted
star, and now and then one batch's gradient is hundreds of times the usual
size. Adam takes a step of up to ~3 learning rates in every weight whatever
the gradient's size (its first moment over the root of its second, with
beta 0.9 and 0.999), all in the direction that one batch points: the library
trained with the default recipe and seed 0 on an AMD EPYC met a gradient 500
times the running mean at epoch 10, and the next batch's loss was 1e12. The
run limped on 5% worse in held-out loss than the same recipe elsewhere.

So each step's gradient norm is bounded at ``factor`` times the running mean
of the earlier steps' (an exponential mean with weight ``1 - beta``, fed
the bounded norms so that a spike does not raise its own bar), after a
warm-up of :data:`WARMUP_STEPS` steps: as the network leaves its
initialisation, the norms grow a hundredfold in ~200 steps, and that run's
norms rose above 5 times the running mean now and then until step 206. The
warm-up is counted in steps, not epochs, so that the bound holds from early
on in a store of millions of stars too. A factor of 5 bounded 7 of that
run's 9,870 steps, which then ended level with the other seeds' (a factor of
20 bounded 4 and did not stop the blow-up). A step under the bound is left
exactly as it was (its gradient times 1.0).

Everything stays on the device, with no host sync, so the bound works under a
captured CUDA graph, and every DDP rank, all-reduced gradients alike, keeps
the same state.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterable

import torch

#: Weight of the earlier steps in the running mean of the gradient norm.
BETA = 0.98
#: The fewest steps before the bound applies (module docstring).
WARMUP_STEPS = 250
#: A run that bounds more than this share of its steps is told so: spikes are meant
#: to be rare (7 of 9,870 steps on the library), and a bound that acts often slows
#: the training it guards.
OFTEN = 0.01


class SpikeGuard:
    """Bounds each step's gradient norm at ``factor`` times the running mean (module
    docstring). ``factor`` 0 leaves every gradient as it is.

    Args:
        factor: the bound, in units of the running mean norm (0: off).
        device: where the state lives (the training device).
    """

    def __init__(self, factor: float, device: torch.device):
        self.factor = float(factor)
        #: steps before the bound applies
        self.warmup_steps = WARMUP_STEPS
        # The running mean starts at 0: after the warm-up its weight on that start,
        # BETA ** 250 < 0.7%, is negligible. The bound is infinite until then.
        self.mean_norm = torch.zeros((), dtype=torch.float32, device=device)
        self.steps = torch.zeros((), dtype=torch.int64, device=device)
        #: steps whose gradient was bounded, since the count was last taken
        self.bounded = torch.zeros((), dtype=torch.int64, device=device)

    @torch.no_grad()
    def __call__(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Bound the gradients of ``parameters`` in place and update the running mean."""
        if self.factor <= 0:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        # torch's own clip_grad_norm_ machinery, less its per-call grouping of the tensors
        # by device and type (one device, one type here), which took half the time of a
        # bound step on this ~100k-weight network (benchmarks/spike_guard_cost.py)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float()
        limit = torch.where(self.steps >= self.warmup_steps, self.factor * self.mean_norm,
                            float("inf"))
        scale = (limit / norm).clamp_(max=1.0)  # exactly 1 under the bound
        torch._foreach_mul_(grads, scale)
        self.bounded += scale < 1.0
        self.mean_norm.mul_(BETA).add_(torch.minimum(norm, limit), alpha=1 - BETA)
        self.steps += 1

    def warn_if_often(self, bounded: int, steps: int) -> None:
        """Warn where ``bounded`` of a run's ``steps`` is more than :data:`OFTEN`."""
        if steps and bounded > OFTEN * steps:
            warnings.warn(f"the gradient was bounded in {bounded} of {steps} steps "
                          f"({100 * bounded / steps:.1f}%; history.csv's bounded_steps): "
                          "spikes are rare in a healthy run, so the rate may be too high "
                          "for these data; try a lower --lr, or --spike-clip 0 to train "
                          "without the bound (docs/model.md)", stacklevel=3)

    def take_bounded(self) -> int:
        """How many steps were bounded since the last call (one host sync)."""
        n = int(self.bounded.item())
        self.bounded.zero_()
        return n

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The running state, for a checkpoint."""
        return {"mean_norm": self.mean_norm.cpu(), "steps": self.steps.cpu()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors (a checkpoint without them starts afresh)."""
        for key in ("mean_norm", "steps"):
            if key in state:
                getattr(self, key).copy_(state[key])
