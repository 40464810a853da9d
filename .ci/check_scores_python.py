"""Compares `gnmt score --json REF HYP` with sacreBLEU on the same files.

usage: check_scores_python.py REF HYP GNMT_JSON
"""
import json
import sys

from sacrebleu.metrics import BLEU, CHRF

ref_path, hyp_path, ours_path = sys.argv[1:4]
read = lambda p: open(p, encoding="utf-8").read().split("\n")[:-1]
refs, hyps = read(ref_path), read(hyp_path)
ours = json.load(open(ours_path))
theirs = {
    "bleu": BLEU().corpus_score(hyps, [refs]).score,
    "chrf": CHRF().corpus_score(hyps, [refs]).score,
}
bad = {k: (ours[k], v) for k, v in theirs.items() if abs(ours[k] - v) > 1e-9}
print(f"sacreBLEU vs gnmt on {hyp_path}: {theirs} {'MISMATCH ' + str(bad) if bad else 'agree'}")
sys.exit(1 if bad else 0)
