#!/usr/bin/env bash
# Downloads Multi30k task 1 (English, German, French image captions; Elliott et al. 2016) into
# DIR as plain text: train (29,000 pairs), val (1,014), test_2016_flickr (1,000).
#
#   data/download-multi30k.sh DIR
#   export GNMT_DATA_DIR=DIR      # tests and benchmarks then read it from there
#
# The files come from the dataset's own repository (github.com/multi30k/dataset, data/task1/raw).
#
# Larger corpora for GNMT-scale work (not downloaded here):
#   - WMT14 English-German / English-French training data (Europarl, Common Crawl, News
#     Commentary, and for En-Fr the UN and Gigaword corpora): the WMT14 translation task page
#     at statmt.org lists them. Concatenate the parts into one SRC and one TGT file; gnmt reads
#     plain or gzipped text aligned line by line.
#   - Test sets (newstest2014 etc.): `sacrebleu -t wmt14 -l en-de --echo src > test.en`
#     and `--echo ref > test.de`, so scoring uses exactly the references sacreBLEU uses.
set -euo pipefail
dir=${1:?usage: data/download-multi30k.sh DIR}
base=https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw
mkdir -p "$dir"
for split in train val test_2016_flickr; do
  for lang in en de fr; do
    echo "fetching $split.$lang"
    curl -fsSL "$base/$split.$lang.gz" | gunzip > "$dir/$split.$lang.tmp"
    mv "$dir/$split.$lang.tmp" "$dir/$split.$lang"
  done
done
wc -l "$dir"/*.en
