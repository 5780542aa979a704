"""Peak memory of ingesting a bulk file with one very long line, against the same file
without it, in the same run.

A bulk-format file of ``--rows`` rows (``ingest_throughput.build``, from the real
sample rows) is written twice: as it is, and with one line of ``--line-mb`` MB
of digits in the middle (152 MB is the line once seen to take an ingest to
3.1 GB). Each is ingested in a fresh process, single-process parsing, and the
peak memory (``/proc/self/status`` VmHWM) over the memory held before the step
is reported, with the ratio. The long line must be set aside unread: the ratio
is the cost of a line of any length, bounded by the reader's limit on a line
(``xpsvae.ingestion.inflate.MAX_LINE_BYTES``).

    python benchmarks/long_line_memory.py --rows 20000 --line-mb 152
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

from fresh_process import run_fresh, status_kb  # noqa: E402


def _measure(path: str, out: str) -> dict:
    from xpsvae import ingest
    before = status_kb("VmRSS:")
    manifest = ingest([path], out, workers=1, progress=False)
    total = manifest["total"]
    return {"peak_mb": (status_kb("VmHWM:") - before) / 1024, "rows_kept": total["rows_kept"],
            "rows_set_aside": total["rows_set_aside"]}


def _with_long_line(plain: str, path: str, line_mb: float) -> None:
    """``plain`` with a line of ``line_mb`` MB of digits after its middle row."""
    lines = gzip.open(plain, "rt").read().splitlines(keepends=True)
    middle = len(lines) // 2
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.writelines(lines[:middle])
        f.write("1," + "7" * int(line_mb * 2**20) + "\n")
        f.writelines(lines[middle:])


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(_measure(*sys.argv[2:4])))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--line-mb", type=float, default=152)
    args = p.parse_args()
    from ingest_throughput import build

    from xpsvae.ingestion.inflate import MAX_LINE_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        plain, long = os.path.join(tmp, "plain.csv.gz"), os.path.join(tmp, "long.csv.gz")
        build(plain, args.rows)
        _with_long_line(plain, long, args.line_mb)
        without = run_fresh(__file__, plain, os.path.join(tmp, "a"))
        with_line = run_fresh(__file__, long, os.path.join(tmp, "b"))
    assert with_line["rows_set_aside"] == without["rows_set_aside"] + 1, with_line
    assert with_line["rows_kept"] == without["rows_kept"], with_line
    result = {"benchmark": "long_line_memory", "rows": args.rows, "line_mb": args.line_mb,
              "max_line_mb": MAX_LINE_BYTES / 2**20,
              "peak_mb_without": round(without["peak_mb"], 1),
              "peak_mb_with_long_line": round(with_line["peak_mb"], 1),
              "ratio": round(with_line["peak_mb"] / without["peak_mb"], 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
