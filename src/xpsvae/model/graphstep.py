"""The training step on fixed buffers, captured once and replayed as a CUDA graph.

At batch 1024 one step of the paper network is about a hundred small kernels
(forward, loss, backward, optimiser), each a few microseconds of GPU work.
Launched one by one from Python, the GPU waits on the launches more than it
computes. Captured as a CUDA graph, the whole step is one launch.

A graph replays the same kernels on the same memory, so everything a step
reads lives in buffers that never move: the batch, its latent noise, the
learning rate (a 0-d tensor that *is* the optimiser's rate) and the running
sums of the loss terms. Each step the loop copies the batch and noise in,
fills in the rate, and replays. The copies draw nothing differently, so a
graphed run follows the same random stream as an eager one.

Off CUDA there is nothing to capture: the step runs on the same buffers
uncaptured, and gives the eager loop's numbers exactly (tested on CPU).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

#: Eager steps before the capture: the optimiser builds its state, cuBLAS its
#: workspaces and torch.compile its kernels, none of which may happen in a capture.
WARMUP_STEPS = 3


class GraphedStep:
    """One training step replayed from a CUDA graph (run eagerly off CUDA).

    Args:
        step: the step body, ``step(x, err, noise, sums)``: forward, loss,
            backward, optimiser step, and ``sums += loss terms``; it must read
            the rate from the optimiser's tensor ``lr``.
        lr: the optimiser's learning rate, a 0-d tensor on the device.
        batch_size, input_dim, latent_dim: shape of the buffers.
        n_terms: number of loss terms summed per step.
        with_noise: False for steps that decode the latent mean (no noise).
        device: the training device.
    """

    def __init__(self, step: Callable, lr: torch.Tensor, batch_size: int, input_dim: int,
                 latent_dim: int, n_terms: int, with_noise: bool, device: torch.device):
        if lr.ndim != 0 or lr.device != device:
            raise ValueError(f"the rate must be a 0-d tensor on {device}, got shape "
                             f"{tuple(lr.shape)} on {lr.device}")
        self._step = step
        self.lr = lr
        self.x = torch.zeros(batch_size, input_dim, device=device)
        self.err = torch.ones(batch_size, input_dim, device=device)
        self.noise = torch.zeros(batch_size, latent_dim, device=device) if with_noise else None
        self.sums = torch.zeros(n_terms, device=device)
        self.capture = device.type == "cuda"
        self.eager_steps = 0
        self.graph: Optional["torch.cuda.CUDAGraph"] = None
        self._side = torch.cuda.Stream(device) if self.capture else None

    def __call__(self, x: torch.Tensor, err: torch.Tensor, noise: Optional[torch.Tensor],
                 lr: float) -> None:
        """One step on this batch (shape ``(batch_size, input_dim)``) at rate ``lr``."""
        if x.shape != self.x.shape or err.shape != self.x.shape:
            raise ValueError(f"a graphed step takes batches of shape {tuple(self.x.shape)}, "
                             f"got {tuple(x.shape)} and {tuple(err.shape)}")
        if (noise is None) != (self.noise is None):
            raise ValueError("this step was built " + ("with" if self.noise is not None
                             else "without") + " latent noise")
        self.x.copy_(x)
        self.err.copy_(err)
        if noise is not None:
            self.noise.copy_(noise)
        self.lr.fill_(lr)
        if self.graph is not None:
            self.graph.replay()
        elif not self.capture:
            self._run()
        elif self.eager_steps < WARMUP_STEPS:
            # warm-up off the default stream, as a capture needs (PyTorch's CUDA graph notes)
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                self._run()
            torch.cuda.current_stream().wait_stream(self._side)
            self.eager_steps += 1
        else:
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: the streaming loader's thread may pin memory during the capture
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self._run()
            self.graph.replay()  # capturing records the step without running it

    def _run(self) -> None:
        self._step(self.x, self.err, self.noise, self.sums)

    def take_sums(self) -> torch.Tensor:
        """The loss terms summed since the last call (a copy), and a fresh start."""
        sums = self.sums.clone()
        self.sums.zero_()
        return sums
