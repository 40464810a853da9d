#!/usr/bin/env bash
# The page `gnmt serve` shows at `/`, in a real browser (Debian's chromium, headless): it
# loads, translates the sentence its link carries, shows the translation and draws the
# attention heat map; the screenshot goes to target/page-check/page.png.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium > /dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q > /dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium > /dev/null
fi
cargo build --release --bin gnmt
out=target/page-check
mkdir -p "$out"
log=$(mktemp)
./target/release/gnmt serve --port 0 2> "$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
address=""
for _ in $(seq 200); do
  address=$(sed -n 's/^serving .* on \(http:\/\/.*\)$/\1/p' "$log")
  [ -n "$address" ] && break
  sleep 0.1
done
[ -n "$address" ] || { echo "page-check: the server did not start:" >&2; cat "$log" >&2; exit 1; }
url="$address/?q=A%20man%20is%20riding%20a%20bicycle.&target=de"
browser=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars
  --virtual-time-budget=20000)
timeout 120 "${browser[@]}" --dump-dom "$url" 2> /dev/null > "$out/page.html"
output=$(grep -o '<div id="output"[^>]*>[^<]*</div>' "$out/page.html" | sed 's/<[^>]*>//g')
echo "page-check: the page shows: $output"
case "$output" in
  Ein*) ;;
  *) echo "page-check: no German translation in the page's output" >&2; exit 1 ;;
esac
cells=$(grep -o '<td ' "$out/page.html" | wc -l)
[ "$cells" -ge 4 ] || { echo "page-check: no attention heat map ($cells cells)" >&2; exit 1; }
grep -q 'id="status"></span>' "$out/page.html" || { echo "page-check: the page shows an error" >&2; exit 1; }
timeout 120 "${browser[@]}" --window-size=1000,900 --screenshot="$out/page.png" "$url" 2> /dev/null
size=$(stat -c %s "$out/page.png")
[ "$size" -gt 10000 ] || { echo "page-check: the screenshot is empty ($size bytes)" >&2; exit 1; }
echo "page-check: ok ($cells heat-map cells, screenshot $out/page.png, $size bytes)"
