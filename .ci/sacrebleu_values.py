"""Regenerates the sacreBLEU values pinned in crates/gnmt-metrics/tests/tests.rs.

    python3 -m venv /tmp/sb && /tmp/sb/bin/pip install "sacrebleu>=2.4,<3"
    /tmp/sb/bin/python .ci/sacrebleu_values.py

Multi30k is read from $GNMT_DATA_DIR or ../shared/data/multi30k (run from the repo root).
"""
import os

from sacrebleu.metrics import BLEU, CHRF

cases = {
    "readme": (["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."],
               ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]),
    "empty_hyps": (["", ""], ["a b c", "d e"]),
    "punct_numbers": (["It costs 3.14 euros, i.e. 1,000 cents - right?",
                       "well-known 2-3 (approx.) &amp; \"quoted\" <tag>"],
                      ["It costs 3,14 euro, that is 1.000 cents-right ?",
                       "well known 2 - 3 (approx) & 'quoted' <tag>"]),
    "unicode": (["Ein Mann fährt Fahrrad —   schnell!", "Zwei Frauen… „lachen“"],
                ["Ein Mann fährt ein Fahrrad – schnell !", "Zwei Frauen lachen"]),
    "short": (["a"], ["a"]),
}
for name, (hyp, ref) in cases.items():
    b = BLEU().corpus_score(hyp, [ref])
    print(name, repr(b.score), b.counts, b.totals, b.sys_len, b.ref_len,
          repr(BLEU(lowercase=True).corpus_score(hyp, [ref]).score),
          repr(CHRF().corpus_score(hyp, [ref]).score),
          repr(CHRF(word_order=2).corpus_score(hyp, [ref]).score))

# test_2016_flickr.de against a damaged copy of itself (see the Rust test).
data = os.environ.get("GNMT_DATA_DIR", "../shared/data/multi30k")
ref = open(os.path.join(data, "test_2016_flickr.de"), encoding="utf-8").read().split("\n")[:-1]
hyp = []
for i, line in enumerate(ref):
    w = line.split()
    if w:
        del w[i % len(w)]
    if i % 3 == 0:
        w.reverse()
    hyp.append(" ".join(w))
print("multi30k", repr(BLEU().corpus_score(hyp, [ref]).score), repr(CHRF().corpus_score(hyp, [ref]).score),
      repr(CHRF(word_order=2).corpus_score(hyp, [ref]).score))
