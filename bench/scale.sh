#!/usr/bin/env bash
# Scale run: 1 million keys stored, 100 thousand of them hot.
#
#   bench/scale.sh [KEYS] [HOT] [SECONDS]
#
# Fills a fresh SQLite database with KEYS real keys (default 1,000,000; batched inserts),
# starts `keygate serve` on it, verifies each of the HOT (default 100,000) keys once through
# POST /v1/verify (filling the cache), then measures /v1/verify over the hot set for SECONDS
# (default 10) and reports requests/s, p50/p99, the server's resident memory (VmRSS) before
# and after, and the fill time. Only 127.0.0.1 is touched. Installs wrk if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS="${1:-1000000}"
HOT="${2:-100000}"
DURATION="${3:-10}"
PORT=3929

command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
cargo build --release -q -p keygate-store --features bench --example fill
cargo build --release -q -p keygate-server --bin keygate

WORK="$(mktemp -d)"
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT
DB="sqlite://$WORK/scale.db"
KG="${KEYGATE_BIN:-target/release/keygate}"   # KEYGATE_BIN: another build, for an A/B run

target/release/examples/fill "$DB" "$KEYS" "$HOT" "$WORK/hot.txt"
ADMIN=$($KG --database "$DB" keys create --name scale --scope keygate:verify --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
echo "database: $(du -h "$WORK/scale.db" | cut -f1)"

$KG serve --database "$DB" --listen "127.0.0.1:$PORT" --cache-size "$(( HOT + HOT / 5 ))" --log-level warn >/dev/null 2>"$WORK/serve.log" &
SERVER=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
rss() { awk '/VmRSS/ { printf "%.1f MB", $2 / 1024 }' "/proc/$SERVER/status"; }
echo "server RSS at start: $(rss)"

cat > "$WORK/hot.lua" <<LUA
local keys = {}
for line in io.lines("$WORK/hot.txt") do keys[#keys + 1] = line end
local i = 0
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Api-Key $ADMIN" }
request = function()
  i = i % #keys + 1
  return wrk.format("POST", "/v1/verify", headers, '{"key": "' .. keys[i] .. '"}')
end
LUA

# Warm-up: one thread walks the hot set once or more (each key a cache miss the first time;
# WARMUP seconds, default enough for 6,000 misses/s — the cache entries printed below show
# whether it covered the hot set).
START=$(date +%s.%N)
wrk -t1 -c16 -d"${WARMUP:-$(( HOT / 6000 + 2 ))}s" -s "$WORK/hot.lua" "http://127.0.0.1:$PORT/v1/verify" |
    grep -E "requests in|Requests/sec" | sed 's/^/warm-up: /'
echo "server RSS after warm-up: $(rss)"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^keygate_cache_(entries|lookups_total)'

echo "measure: $DURATION s over the hot set"
wrk -t1 -c32 -d"${DURATION}s" --latency -s "$WORK/hot.lua" "http://127.0.0.1:$PORT/v1/verify" |
    grep -E "Requests/sec|^ +50%|^ +99%|Non-2xx"
echo "server RSS after the run: $(rss)"
