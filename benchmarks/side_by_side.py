"""Timing two ways of one step side by side: the benchmarks that report a speedup.

These machines are noisy, so the ways take turns, ``repeats`` rounds, and each way's best
time is compared: both see the machine in the same state.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Tuple


def interleaved(ways: Dict[str, Callable[[], object]], repeats: int
                ) -> Tuple[Dict[str, List[float]], Dict[str, object]]:
    """Per way (name: function of no argument): its seconds in each round, and what its
    last call returned."""
    seconds: Dict[str, List[float]] = {name: [] for name in ways}
    results: Dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in ways.items():
            start = time.perf_counter()
            results[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results
