#!/usr/bin/env bash
# Checks against the Python reference implementations, installed into a private venv:
# the `tokenizers` package must load our tokenizer.json and agree with our encoding.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${GNMT_DATA_DIR:-../shared/data/multi30k}
venv=target/ci-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "tokenizers>=0.22,<0.24"
cargo build --release --bin gnmt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
./target/release/gnmt vocab --train "$data/train.en" "$data/train.de" -o "$work" >/dev/null
for f in val.en val.de test_2016_flickr.fr; do
  ./target/release/gnmt encode --vocab "$work/tokenizer.json" < "$data/$f" > "$work/$f.ids"
  "$venv/bin/python" .ci/check_tokenizer_python.py "$work/tokenizer.json" "$data/$f" "$work/$f.ids"
done
