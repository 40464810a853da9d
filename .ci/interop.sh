#!/usr/bin/env bash
# Checks against the Python reference implementations, installed into a private venv:
# the `tokenizers` package must load our tokenizer.json and agree with our encoding, and
# sacreBLEU must agree with `gnmt score` on whole files.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${GNMT_DATA_DIR:-../shared/data/multi30k}
venv=target/ci-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "tokenizers>=0.22,<0.24" "sacrebleu>=2.4,<3"
cargo build --release --bin gnmt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./target/release/gnmt vocab --train "$data/train.en" "$data/train.de" -o "$work" >/dev/null
for f in val.en val.de test_2016_flickr.fr; do
  ./target/release/gnmt encode --vocab "$work/tokenizer.json" < "$data/$f" > "$work/$f.ids"
  "$venv/bin/python" .ci/check_tokenizer_python.py "$work/tokenizer.json" "$data/$f" "$work/$f.ids"
done
# BLEU/chrF: English vs French and German vs French captions (unrelated text, a hard case for
# tokenization and smoothing) and a corpus against itself.
for pair in "test_2016_flickr.fr test_2016_flickr.en" "val.de val.fr" "val.en val.en"; do
  set -- $pair
  ./target/release/gnmt score --json "$data/$1" "$data/$2" > "$work/score.json"
  "$venv/bin/python" .ci/check_scores_python.py "$data/$1" "$data/$2" "$work/score.json"
done
