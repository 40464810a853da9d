#!/usr/bin/env bash
# Fingerprints of a build, for refactors that must not change a bit: the weights after a
# seeded 20-step `small` training run (f32 and bf16), the training losses, and the shipped
# model's test_2016_flickr translations (beam 5 and greedy). Compare two builds with
#   bench/same_bits.sh OLD_BIN_DIR /tmp/old && bench/same_bits.sh NEW_BIN_DIR /tmp/new &&
#   diff -r /tmp/old /tmp/new
# BIN_DIR holds `gnmt` and `translate`. Extra arguments go to every train and translate call
# (e.g. `--kernels reference`). Needs Multi30k in GNMT_DATA_DIR (default ../shared/data/multi30k).
set -euo pipefail
bin=$1 out=$2
shift 2
data=${GNMT_DATA_DIR:-$(dirname "$0")/../../shared/data/multi30k}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n 4000 "$data/train.en" > "$work/train.en"
head -n 4000 "$data/train.de" > "$work/train.de"
head -n 100 "$data/val.en" > "$work/val.en"
head -n 100 "$data/val.de" > "$work/val.de"
for matmul in f32 bf16; do
    "$bin/gnmt" train --preset small --seed 7 --max-steps 20 --max-tokens 1200 \
        --valid-every 1000 --save-every 20 --log-every 1 --threads 2 --matmul "$matmul" -q \
        --tokenizer "$root/models/multi30k-en-de/tokenizer.json" \
        --train "$work/train.en" "$work/train.de" --valid "$work/val.en" "$work/val.de" \
        -o "$work/run-$matmul" "$@"
    sha256sum < "$work/run-$matmul/model.safetensors" | cut -c1-16 > "$out/weights-$matmul.sha256"
    grep -o '"loss":[^,]*' "$work/run-$matmul/metrics.jsonl" > "$out/loss-$matmul.txt" || true
done
for beam in 5 1; do
    "$bin/translate" --beam-size "$beam" -q -i "$data/test_2016_flickr.en" \
        -o "$out/test_2016-beam$beam.de" "$@"
done
