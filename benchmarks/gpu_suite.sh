#!/usr/bin/env bash
# Every GPU training figure of the README in one run (estimated at about six minutes; not yet
# run on a GPU), one JSON line each:
# the CUDA tests, then the paper network at batch 1024 eager (against the
# numpy-fed loop), with bf16 autocast, with the captured step (against eager, same run),
# captured + bf16, captured + torch.compile, and captured at batch 4096; last, with
# --spectra, a store of those stars is written and trained on streamed (from Parquet, from
# the cache), resident as a table, and with --resident, in one run (the last to be cut if
# time runs short).
#
#   bash benchmarks/gpu_suite.sh [--spectra FILE] [--seconds S]
#
# Extra arguments go to every benchmarks/train_throughput.py run.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_graphstep.py tests/test_training.py tests/test_spikes.py -k cuda || echo "CUDA TESTS FAILED"
bench() { python3 benchmarks/train_throughput.py --device cuda --seconds 10 "$@" 2>&1 | tail -1; }
bench "$@"
bench --no-baseline --amp "$@"
bench --no-baseline --cuda-graph "$@"
bench --no-baseline --cuda-graph --amp "$@"
bench --no-baseline --cuda-graph --compile "$@"
bench --no-baseline --cuda-graph --batch-size 4096 "$@"
spectra=""; previous=""
for a in "$@"; do [ "$previous" = "--spectra" ] && spectra="$a"; previous="$a"; done
if [ -n "$spectra" ]; then
    store="$(mktemp -d)/store"
    python3 -c "import sys; from xpsvae import ingest; ingest([sys.argv[1]], sys.argv[2], rows_per_shard=2000, progress=False)" "$spectra" "$store" \
        && python3 benchmarks/train_throughput.py --device cuda --seconds 5 --streaming "$store" 2>&1 | tail -1
fi
