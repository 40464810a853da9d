#!/usr/bin/env bash
# The checks that need Multi30k (the shipped model's BLEU, the quick study on real data, the
# tokenizer round trip over every line, sacreBLEU on a Multi30k-sized corpus): the tests that
# the README's test command lists as ignored. CI has the data; anywhere else this fails, and
# says where to put it, rather than skip.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${GNMT_DATA_DIR:-../shared/data/multi30k}
for f in train.en train.de val.en val.de test_2016_flickr.en test_2016_flickr.de test_2016_flickr.fr; do
  if [ ! -f "$data/$f" ]; then
    echo "data-checks: $data/$f is missing: set GNMT_DATA_DIR to a Multi30k folder" >&2
    exit 1
  fi
done
export GNMT_DATA_DIR=$(cd "$data" && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --workspace -- --ignored 2>&1 | tee "$log"
# Each data check, by name: a renamed or un-ignored one must not vanish from this run.
for t in the_shipped_model_scores_on_test_2016 the_quick_residual_study_runs_on_multi30k \
  every_multi30k_line_round_trips matches_sacrebleu_on_a_multi30k_sized_corpus; do
  grep -q "test .*$t ... ok" "$log" || { echo "data-checks: $t did not run and pass" >&2; exit 1; }
done
