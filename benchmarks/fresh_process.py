"""Measuring one step in a fresh process: the benchmarks that report peak memory per step.

A benchmark script runs itself again with ``--measure ARGS...``; that process
imports what the step needs, reads its memory, runs the step and prints one
JSON line, which :func:`run_fresh` returns.
"""

from __future__ import annotations

import json
import subprocess
import sys


def status_kb(field: str) -> float:
    """A ``/proc/self/status`` figure in kB: ``VmRSS:`` (now) or ``VmHWM:`` (the peak)."""
    with open("/proc/self/status") as f:
        return next(float(line.split()[1]) for line in f if line.startswith(field))


def run_fresh(script: str, *args: str) -> dict:
    """``script --measure ARGS...`` in a new Python process: the JSON of its last line."""
    out = subprocess.run([sys.executable, script, "--measure", *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])
