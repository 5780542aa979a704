"""Time of one optimizer step for the paper network: per-tensor loops vs one fused kernel.

The sVAE is small (~100k parameters in 24 tensors), so on a CPU the
optimizer's per-tensor overhead is a visible part of a training step. The
trainer asks PyTorch for its fused optimizers; this measures, in one run,
what that saves. One line per optimizer, then a JSON object.

    python benchmarks/optimizer_step.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from xpsvae import ScatterVAE, SVAEConfig


def step_seconds(optimizer: torch.optim.Optimizer, repeats: int) -> float:
    for _ in range(20):  # warm-up: state allocation
        optimizer.step()
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--inputs", type=int, default=343, help="input dimension (343: the library)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = ScatterVAE(SVAEConfig.preset("paper", args.inputs)).to(args.device)
    for param in net.parameters():
        param.grad = torch.randn_like(param)
    result = {"device": args.device, "threads": args.threads,
              "parameters": sum(p.numel() for p in net.parameters())}
    makers = {"adamw": lambda **kw: torch.optim.AdamW(net.parameters(), lr=1e-3, **kw),
              "sgd": lambda **kw: torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, **kw)}
    for name, make in makers.items():
        looped = step_seconds(make(), args.repeats)
        fused = step_seconds(make(fused=True), args.repeats)
        print(f"{name}: per-tensor {looped * 1e6:.0f} us, fused {fused * 1e6:.0f} us, "
              f"speed-up {looped / fused:.2f}x")
        result.update({f"{name}_us": round(looped * 1e6), f"{name}_fused_us": round(fused * 1e6),
                       f"{name}_ratio": round(looped / fused, 2)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
