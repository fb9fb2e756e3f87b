#!/usr/bin/env bash
# Protected vs unprotected, side by side, over loopback with wrk.
#
#   bench/http.sh [SECONDS] [CONNECTIONS]
#
# Builds release binaries, makes a fresh SQLite database with 10,000 keys, and measures:
#   (a) an axum handler with no authentication          GET /open
#   (b) the same handler behind the keygate layer        GET /protected, valid key
#   (c) the same with a well-formed unknown key          GET /protected -> 401 NOT_FOUND
#   (d) the same with a bad-checksum key                 GET /protected -> 401 MALFORMED
#   (e) keygate serve, POST /v1/verify with a valid key  (info logging to a file)
# and prints requests/s, p50 and p99 for each, and the ratios b/a, c/a, d/a, e/a. The server
# is pinned to CPU 0 and wrk to CPU 1 (2-core machine), so they don't fight over a core.
# Only 127.0.0.1 is touched; each case runs SECONDS (default 10). Installs wrk if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNECTIONS="${2:-32}"
PORT_APP=3927
PORT_SERVE=3928

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
fi
PIN_SERVER=(); PIN_CLIENT=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1)
fi

cargo build --release -q -p keygate --example bench_server
cargo build --release -q -p keygate-store --features bench --example fill
cargo build --release -q -p keygate-server --bin keygate

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
DB="sqlite://$WORK/bench.db"
KG=target/release/keygate

target/release/examples/fill "$DB" 10000 1 "$WORK/hot.txt" >/dev/null
VALID=$(head -1 "$WORK/hot.txt")
UNKNOWN=$($KG --database "sqlite://$WORK/other.db" keys create --name other --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
BAD_CHECKSUM="${VALID%?}$([ "${VALID: -1}" = A ] && echo B || echo A)"
VERIFIER=$($KG --database "$DB" keys create --name bench --scope keygate:verify --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no server at $1" >&2; exit 1; }

KEYGATE_DATABASE="$DB" KEYGATE_LISTEN="127.0.0.1:$PORT_APP" "${PIN_SERVER[@]}" target/release/examples/bench_server &
PIDS+=($!)
"${PIN_SERVER[@]}" $KG serve --database "$DB" --listen "127.0.0.1:$PORT_SERVE" >/dev/null 2>"$WORK/serve.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$PORT_APP/open"
wait_for "http://127.0.0.1:$PORT_SERVE/healthz"

cat > "$WORK/verify.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key": "$VALID", "scopes": ["orders:read"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Api-Key $VERIFIER"
LUA

# Prints "rps p50_ms p99_ms" for one wrk run.
measure() {
    "${PIN_CLIENT[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
        END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}

# Warm up every path once (cache, connections, page cache).
for path in open protected; do curl -s -o /dev/null -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/$path"; done

declare -A RESULT
RESULT[a]=$(measure "http://127.0.0.1:$PORT_APP/open")
RESULT[b]=$(measure -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/protected")
RESULT[c]=$(measure -H "Authorization: Api-Key $UNKNOWN" "http://127.0.0.1:$PORT_APP/protected")
RESULT[d]=$(measure -H "Authorization: Api-Key $BAD_CHECKSUM" "http://127.0.0.1:$PORT_APP/protected")
RESULT[e]=$(measure -s "$WORK/verify.lua" "http://127.0.0.1:$PORT_SERVE/v1/verify")

# Each protected case must have answered as expected (not, say, all 404s).
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/protected")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $UNKNOWN" "http://127.0.0.1:$PORT_APP/protected")" = 401 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $BAD_CHECKSUM" "http://127.0.0.1:$PORT_APP/protected")" = 401 ]

printf "%-48s %10s %9s %9s %7s\n" case "req/s" "p50 ms" "p99 ms" "x/a"
A_RPS=$(echo "${RESULT[a]}" | cut -d' ' -f1)
for k in a b c d e; do
    read -r rps p50 p99 <<<"${RESULT[$k]}"
    case $k in
        a) label="(a) no authentication";;
        b) label="(b) keygate layer, valid key";;
        c) label="(c) keygate layer, unknown key (401)";;
        d) label="(d) keygate layer, bad checksum (401)";;
        e) label="(e) keygate serve POST /v1/verify";;
    esac
    ratio=$(awk -v x="$rps" -v a="$A_RPS" 'BEGIN { printf "%.2f", x / a }')
    printf "%-48s %10s %9s %9s %7s\n" "$label" "$rps" "$p50" "$p99" "$ratio"
done
echo "(server pinned: ${PIN_SERVER[*]:-no}; wrk: ${PIN_CLIENT[*]:-no}; ${DURATION}s per case, $CONNECTIONS connections)"
