"""Checks that the Python `tokenizers` package loads a gnmt tokenizer.json unchanged and
encodes/decodes exactly as gnmt does.

usage: check_tokenizer_python.py TOKENIZER_JSON TEXT_FILE IDS_FILE
IDS_FILE is `gnmt encode --vocab TOKENIZER_JSON < TEXT_FILE`.
"""
import sys

from tokenizers import Tokenizer

tok_path, text_path, ids_path = sys.argv[1:4]
tk = Tokenizer.from_file(tok_path)
# Not part of the JSON format; gnmt sets it on load so that "</s>" in user text is plain text.
tk.encode_special_tokens = True

for token, want in [("<pad>", 0), ("<unk>", 1), ("<s>", 2), ("</s>", 3)]:
    got = tk.token_to_id(token)
    assert got == want, f"{token}: id {got}, expected {want}"

texts = open(text_path, encoding="utf-8").read().split("\n")
ids = open(ids_path, encoding="utf-8").read().split("\n")
if texts and texts[-1] == "":
    texts.pop()
if ids and ids[-1] == "":
    ids.pop()
assert len(texts) == len(ids), f"{len(texts)} lines of text but {len(ids)} lines of ids"

mismatches = 0
for n, (text, line) in enumerate(zip(texts, ids), 1):
    ours = [int(x) for x in line.split()]
    theirs = tk.encode(text, add_special_tokens=False).ids
    if ours != theirs:
        mismatches += 1
        if mismatches <= 5:
            print(f"line {n}: gnmt {ours} != python {theirs}", file=sys.stderr)
    if tk.decode(theirs) != " ".join(text.split()) and text.isascii():
        print(f"line {n}: python decode differs: {tk.decode(theirs)!r}", file=sys.stderr)
        mismatches += 1

print(f"python tokenizers: {len(texts)} lines, {mismatches} mismatches")
sys.exit(1 if mismatches else 0)
