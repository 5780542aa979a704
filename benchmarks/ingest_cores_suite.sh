#!/usr/bin/env bash
# The ingest figures that need more cores than the 2 of the machines this project is built
# on, one JSON line each (estimated at about three minutes on 16 cores; not yet run there, but
# checked end to end on 2 cores with --rows-per-file 2000, in 1.5 minutes):
# one bulk file in this process against astropy (the issue's ratio), the same size of file
# with 4 and 8 parsing processes (their ratio: against the first line's astropy, read in
# the same call), then 16 files read 8 at a time (--jobs 8) against one at a time.
#
#   bash benchmarks/ingest_cores_suite.sh [--rows-per-file N]
#
# It needs the package's readers at their best: isal (else zlib inflates 1.5x slower),
# pysimdjson (else Arrow's cast parses ~2x slower) and astropy (for the ratio); a machine
# without them can take them as wheels (pip download ... for its Python, then pip install).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
rows=20000
if [ "${1:-}" = "--rows-per-file" ]; then rows=$2; fi
nproc
python3 benchmarks/ingest_throughput.py --rows "$rows" --workers 1 2>&1 | tail -1
for workers in 4 8; do
  python3 benchmarks/ingest_throughput.py --rows "$rows" --workers "$workers" --skip-astropy \
    2>&1 | tail -1
done
python3 benchmarks/ingest_throughput.py --rows $((rows / 4)) --files 16 --jobs 8 \
  --distinct 1000 --skip-astropy 2>&1 | tail -1
