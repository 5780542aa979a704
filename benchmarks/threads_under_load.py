"""Training speed with the machine's cores shared: each thread setting, quiet and beside a
busy process, side by side in one run.

A second process that keeps one core busy (``--busy`` of them) stands for
another user's job. For each setting, training runs in a fresh process
(``train_throughput.py``'s loop at batch 256, the default recipe's batch)
for ``--seconds``, once on the quiet machine and once beside the busy
process, in alternating order:

- ``default``: what xpsvae does unless told (``--threads 0``: torch's own
  count, lowered to a container's CPU quota);
- ``one``: ``--threads 1``;
- ``passive``: the default count, with OpenMP's passive wait policy
  (``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning).

The last line is a JSON object: each setting's samples/s, quiet and loaded,
and its ``loaded_over_quiet`` ratio.

    python benchmarks/threads_under_load.py --seconds 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {"default": ({}, "0"), "one": ({}, "1"),
            "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, "0")}


def _train(setting: str, seconds: float) -> float:
    env_extra, threads = SETTINGS[setting]
    env = {**os.environ, **env_extra}
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "train_throughput.py"), "--seconds", str(seconds),
         "--threads", threads, "--batch-size", "256", "--no-baseline"],
        capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the training")
    args = p.parse_args()
    result = {"cpus": len(os.sched_getaffinity(0)), "busy": args.busy, "seconds": args.seconds}
    for k, setting in enumerate(SETTINGS):
        rates = {}
        for loaded in ((False, True) if k % 2 == 0 else (True, False)):
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    for _ in range(args.busy if loaded else 0)]
            try:
                rates["loaded" if loaded else "quiet"] = _train(setting, args.seconds)
            finally:
                for proc in busy:
                    proc.kill()
                    proc.wait()
            print(f"{setting:8s} {'loaded' if loaded else 'quiet':6s} "
                  f"{rates['loaded' if loaded else 'quiet']:10.0f} samples/s", flush=True)
        result[setting] = {**{f"{k}_samples_per_s": round(v, 1) for k, v in rates.items()},
                           "loaded_over_quiet": round(rates["loaded"] / rates["quiet"], 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
