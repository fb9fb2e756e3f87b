#!/usr/bin/env bash
# HTTP load on the example app (release build) over loopback, with wrk.
#
#   scripts/load.sh [SECONDS] [CONNECTIONS]
#
# Creates a fresh SQLite database with 10,000 keys, serves the example on 127.0.0.1:3917,
# and runs wrk against it: a valid key on /api/public/, a valid key on the scoped
# /api/orders/, a well-formed unknown key, and no key. Then serves `keygate serve` on
# 127.0.0.1:3918 over the same database and runs wrk against POST /v1/verify. Only loopback
# is touched; each run is bounded by SECONDS (default 10). Needs `wrk` (Debian package `wrk`).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN="${1:-10}"
CONNECTIONS="${2:-64}"
ADDR=127.0.0.1:3917
command -v wrk >/dev/null || { echo "load.sh: needs wrk (apt-get install wrk)" >&2; exit 2; }

cargo build --release -q -p keygate --example public_api
cargo build --release -q -p keygate-server --bin keygate
WORK="$(mktemp -d)"
SERVER=""
SERVICE=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; [ -n "$SERVICE" ] && kill "$SERVICE" 2>/dev/null; rm -rf "$WORK"' EXIT
DB="sqlite://$WORK/load.db"
KG=target/release/keygate

KEY=$($KG --database "$DB" keys create --name load --scope orders:read --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
# 9,999 more keys, inserted in one transaction, so lookups run against a realistic index.
python3 - "$WORK/load.db" <<'PY'
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
now = int(time.time() * 1000)
rows = [(f"key_01{os.urandom(12).hex().upper()[:24]}", f"filler {i}", "kg_xxxx", os.urandom(32), now)
        for i in range(9999)]
db.executemany("INSERT INTO keys (id, name, start, hash, created_at) VALUES (?, ?, ?, ?, ?)", rows)
db.commit()
PY
# Well-formed with a good checksum, but issued into another database: unknown here.
UNKNOWN=$($KG --database "sqlite://$WORK/other.db" keys create --name elsewhere --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

KEYGATE_DATABASE="$DB" KEYGATE_LISTEN="$ADDR" target/release/examples/public_api 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://$ADDR/" && break; sleep 0.1; done

run() {
    local label="$1"; shift
    echo "== $label"
    wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "$@" | grep -E "Requests/sec|Latency|50%|99%|Non-2xx"
}
run "valid key, /api/public/" -H "Authorization: Api-Key $KEY" "http://$ADDR/api/public/"
run "valid key with scope, /api/orders/" -H "Authorization: Api-Key $KEY" "http://$ADDR/api/orders/"
run "unknown key (401 NOT_FOUND)" -H "Authorization: Api-Key $UNKNOWN" "http://$ADDR/api/public/"
run "no key (401 MISSING)" "http://$ADDR/api/public/"

kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""

VERIFIER=$($KG --database "$DB" keys create --name load-verifier --scope keygate:verify --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
SERVICE_ADDR=127.0.0.1:3918
target/release/keygate serve --database "$DB" --listen "$SERVICE_ADDR" >/dev/null 2>"$WORK/service.log" &
SERVICE=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://$SERVICE_ADDR/healthz" && break; sleep 0.1; done
cat > "$WORK/verify.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key": "$KEY", "scopes": ["orders:read"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Api-Key $VERIFIER"
LUA
run "keygate serve: POST /v1/verify, valid key (info logs to a file)" -s "$WORK/verify.lua" "http://$SERVICE_ADDR/v1/verify"
curl -s "http://$SERVICE_ADDR/metrics" | grep -E '^keygate_http_request_duration_seconds_(count|sum)'
