#!/usr/bin/env bash
# Data-parallel training on one machine: `gnmt train` (preset small, Multi30k) as 1 process x 2
# threads, 2 MPI ranks x 1 thread, and 1 process x 1 thread, alternated over ROUNDS rounds
# (machines are noisy), each for STEPS updates of the same global batch. Prints each run's
# target tokens/s (the mean of the logged windows after the first) and mean all-reduce time
# per update, then the medians. Needs Open MPI and gnmt built with `--features mpi`
# (default binary: target/release/gnmt; GNMT_BIN overrides).
#   bench/distributed.sh [ROUNDS] [STEPS]
set -euo pipefail
rounds=${1:-3} steps=${2:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${GNMT_BIN:-$root/target/release/gnmt}
data=${GNMT_DATA_DIR:-$root/../shared/data/multi30k}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n 50 "$data/val.en" > "$work/val.en"
head -n 50 "$data/val.de" > "$work/val.de"
grep -m1 -o 'model name.*' /proc/cpuinfo
echo "preset small, Multi30k train, max_tokens 2500, $steps updates per run, $rounds rounds"
run() { # RANKS THREADS
    local ranks=$1 threads=$2 name="${1}x$2"
    local launch=()
    [ "$ranks" -gt 1 ] && launch=(mpirun --oversubscribe -np "$ranks")
    "${launch[@]}" "$bin" --threads "$threads" train --preset small --seed 3 \
        --max-steps "$steps" --log-every 10 --valid-every 1000000 --save-every 1000000 -q \
        --tokenizer "$root/models/multi30k-en-de/tokenizer.json" \
        --train "$data/train.en" "$data/train.de" --valid "$work/val.en" "$work/val.de" \
        -o "$work/run-$name" > /dev/null
    python3 - "$work/run-$name/metrics.jsonl" "$name" >> "$work/results" <<'PY'
import json, sys
logs = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l][1:]
tps = sum(l["tokens_per_s"] for l in logs) / len(logs)
ms = sum(l["allreduce_ms"] for l in logs) / len(logs)
print(sys.argv[2], tps, ms)
PY
    tail -n1 "$work/results" | awk '{printf "%5s ranks x threads: %6.0f target tokens/s, all-reduce %5.1f ms/update\n", $1, $2, $3}'
    rm -rf "${work:?}/run-$name"
}
for _ in $(seq "$rounds"); do
    run 1 2
    run 2 1
    run 1 1
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {k: statistics.median(float(r[1]) for r in rows if r[0] == k) for k in ("1x2", "2x1", "1x1")}
ms = statistics.median(float(r[2]) for r in rows if r[0] == "2x1")
print(f"medians: 1x2 {med['1x2']:.0f}, 2x1 {med['2x1']:.0f}, 1x1 {med['1x1']:.0f} target tokens/s; "
      f"2x1/1x2 = {med['2x1'] / med['1x2']:.3f}, 2x1/1x1 = {med['2x1'] / med['1x1']:.2f} "
      f"(efficiency {med['2x1'] / (2 * med['1x1']):.0%}); all-reduce {ms:.1f} ms/update")
PY
