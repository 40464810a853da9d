#!/usr/bin/env bash
# LibreTranslate's own Python client (libretranslatepy, from PyPI) against `gnmt serve`: the
# languages, a translation, a detection and a keyed server, unchanged client code; then
# SIGTERM must stop the server with exit status 0.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/ci-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "libretranslatepy>=2.1,<3"
cargo build --release --bin gnmt
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME ARGS...: a server on a free port; its address in $address.
start() {
  local name=$1
  shift
  ./target/release/gnmt serve --port 0 "$@" 2> "$work/$name.log" &
  pids+=($!)
  pid=$!
  for _ in $(seq 200); do
    address=$(sed -n 's/^serving .* on \(http:\/\/.*\)$/\1/p' "$work/$name.log")
    [ -n "$address" ] && return 0
    sleep 0.1
  done
  echo "serve-check: $name did not start:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

start open
open_pid=$pid open_url=$address
echo "s3cret" > "$work/key"
start keyed --api-key-file "$work/key"
keyed_url=$address

"$venv/bin/python" - "$open_url" "$keyed_url" <<'PY'
import sys
from urllib.error import HTTPError
from libretranslatepy import LibreTranslateAPI

open_url, keyed_url = sys.argv[1], sys.argv[2]
lt = LibreTranslateAPI(open_url)
langs = lt.languages()
assert langs == [{"code": "en", "name": "English", "targets": ["de"]}], langs
out = lt.translate("A man is riding a bicycle.", "en", "de")
assert out.startswith("Ein ") and out.endswith("."), out
auto = lt.translate("Two dogs play in the snow.", "auto", "de")
assert auto.startswith("Zwei "), auto
found = lt.detect("A man is riding a bicycle.")
assert found[0]["language"] == "en", found
print(f"libretranslatepy through gnmt serve: {out!r}, {auto!r}, {found}")
try:
    LibreTranslateAPI(keyed_url).translate("A dog.", "en", "de")
    raise SystemExit("a keyed server translated without the key")
except HTTPError as e:
    assert e.code == 403, e.code
keyed = LibreTranslateAPI(keyed_url, api_key="s3cret").translate("A dog.", "en", "de")
assert keyed, keyed
print("keyed server: 403 without the key, a translation with it")
PY

kill -TERM "$open_pid"
if wait "$open_pid"; then
  grep -q "stopped" "$work/open.log"
  echo "serve-check: ok (SIGTERM: exit 0)"
else
  echo "serve-check: the server exited with $? on SIGTERM" >&2
  cat "$work/open.log" >&2
  exit 1
fi
