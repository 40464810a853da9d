#!/usr/bin/env bash
# `cargo install --path crates/gnmt-cli` gives a `translate` that works from any folder with
# the source tree out of reach: installed into a temporary root, moved to another folder, run
# from a third, with the checkout's models/ folder moved away meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
restore() {
  if [ -d "$work/models.away" ]; then mv "$work/models.away" "$repo/models"; fi
  rm -rf "$work"
}
trap restore EXIT
# --locked and the workspace's target folder: the README's test command built all of it.
cargo install --locked --path crates/gnmt-cli --root "$work/root" --target-dir target
mv "$work/root" "$work/moved"
mv "$repo/models" "$work/models.away"
mkdir "$work/elsewhere"
cd "$work/elsewhere"
out=$(echo "A man is riding a bicycle." | "$work/moved/bin/translate" -q)
echo "installed translate: $out"
case "$out" in
  Ein*) ;;
  *) echo "install-check: expected a German sentence, got: $out" >&2; exit 1 ;;
esac
"$work/moved/bin/gnmt" completions bash > /dev/null
"$work/moved/bin/gnmt" man --output "$work/man"
test -s "$work/man/gnmt.1" && test -s "$work/man/translate.1" && test -s "$work/man/gnmt-train.1"
echo "install-check: ok"
