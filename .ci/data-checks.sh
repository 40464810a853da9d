#!/usr/bin/env bash
# The checks that need Multi30k (.ci/data_checks.rs: the shipped model's
# BLEU, the quick study on real data, the tokenizer round trip over every line, sacreBLEU on a
# Multi30k-sized corpus), built only with the `data-checks` feature so that the README's test
# command passes on a bare clone. CI has the data; anywhere else this fails and says where to
# put it.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${GNMT_DATA_DIR:-../shared/data/multi30k}
for f in train.en train.de train.fr val.en val.de val.fr test_2016_flickr.en test_2016_flickr.de test_2016_flickr.fr; do
  if [ ! -f "$data/$f" ]; then
    echo "data-checks: $data/$f is missing: set GNMT_DATA_DIR to a Multi30k folder" >&2
    exit 1
  fi
done
GNMT_DATA_DIR=$(cd "$data" && pwd)
export GNMT_DATA_DIR
cargo test --release -p gnmt-cli --features data-checks --test data_checks
