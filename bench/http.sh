#!/usr/bin/env bash
# Protected vs unprotected, side by side, over loopback with wrk.
#
#   bench/http.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#
# Builds release binaries, makes a fresh SQLite database with 10,000 keys, and measures:
#   (a) an axum handler with no authentication          GET /open (same Authorization
#       header as (b), ignored: the baseline carries the same bytes, so the ratio is keygate's)
#   (b) the same handler behind the keygate layer        GET /protected, valid key
#   (c) the same with a well-formed unknown key          GET /protected -> 401 NOT_FOUND
#   (d) the same with a bad-checksum key                 GET /protected -> 401 MALFORMED
#   (e) keygate serve, POST /v1/verify with a valid key  (info logging to a file)
#   (f) the layer with a valid key that has a rate limit GET /protected (1e9/1m: counted,
#       never reached; the local limiter, as on one node)
# and prints requests/s, p50 and p99 for each, the ratios b/a, c/a, d/a, e/a, f/a, and the server's
# CPU time per request (and its inverse ratio a/x: the same measure of relative cost). The cases
# run in ROUNDS (default 3) rounds of a-b-c-d-e-f, each case SECONDS (default 6) per round; a
# ratio is taken within a round (so slow drift of this shared machine cancels) and the median
# over rounds is reported. The server is pinned to CPU 0 and wrk to CPU 1 (2-core machine).
# Only 127.0.0.1 is touched. Installs wrk if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-6}"
CONNECTIONS="${2:-32}"
ROUNDS="${3:-3}"
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
KG="${KEYGATE_BIN:-target/release/keygate}"              # KEYGATE_BIN, BENCH_SERVER_BIN: other
APP="${BENCH_SERVER_BIN:-target/release/examples/bench_server}"  # builds, for an A/B run

target/release/examples/fill "$DB" 10000 1 "$WORK/hot.txt" >/dev/null
VALID=$(head -1 "$WORK/hot.txt")
UNKNOWN=$($KG --database "sqlite://$WORK/other.db" keys create --name other --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
BAD_CHECKSUM="${VALID%?}$([ "${VALID: -1}" = A ] && echo B || echo A)"
LIMITED=$($KG --database "$DB" keys create --name limited --rate 1000000000/1m --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
VERIFIER=$($KG --database "$DB" keys create --name bench --scope keygate:verify --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no server at $1" >&2; exit 1; }

KEYGATE_DATABASE="$DB" KEYGATE_LISTEN="127.0.0.1:$PORT_APP" "${PIN_SERVER[@]}" "$APP" &
APP_PID=$!
PIDS+=($APP_PID)
"${PIN_SERVER[@]}" $KG serve --database "$DB" --listen "127.0.0.1:$PORT_SERVE" >/dev/null 2>"$WORK/serve.log" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
wait_for "http://127.0.0.1:$PORT_APP/open"
wait_for "http://127.0.0.1:$PORT_SERVE/healthz"

cat > "$WORK/verify.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key": "$VALID", "scopes": ["orders:read"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Api-Key $VERIFIER"
LUA

# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))

# Prints "rps p50_ms p99_ms cpu_us_per_request" for one wrk run against the server with pid $1.
# CPU per request is the steadier figure on a shared VM: time stolen by the hypervisor is not
# charged to the process, while it does lower requests/s.
measure() {
    local pid=$1; shift
    local before; before=$(cpu_ticks "$pid")
    local out; out=$("${PIN_CLIENT[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@")
    local after; after=$(cpu_ticks "$pid")
    echo "$out" | awk -v ticks=$((after - before)) -v tick_us="$TICK_US" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
        / requests in / { n = $1 }
        END { printf "%.0f %.3f %.3f %.2f\n", rps, p50, p99, ticks * tick_us / n }'
}

# Warm up every path once (cache, connections, page cache).
for path in open protected; do curl -s -o /dev/null -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/$path"; done
curl -s -o /dev/null -H "Authorization: Api-Key $LIMITED" "http://127.0.0.1:$PORT_APP/protected"

declare -A RESULT
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    RESULT[a$round]=$(measure $APP_PID -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/open")
    RESULT[b$round]=$(measure $APP_PID -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/protected")
    RESULT[c$round]=$(measure $APP_PID -H "Authorization: Api-Key $UNKNOWN" "http://127.0.0.1:$PORT_APP/protected")
    RESULT[d$round]=$(measure $APP_PID -H "Authorization: Api-Key $BAD_CHECKSUM" "http://127.0.0.1:$PORT_APP/protected")
    RESULT[e$round]=$(measure $SERVE_PID -s "$WORK/verify.lua" "http://127.0.0.1:$PORT_SERVE/v1/verify")
    RESULT[f$round]=$(measure $APP_PID -H "Authorization: Api-Key $LIMITED" "http://127.0.0.1:$PORT_APP/protected")
done

# Each protected case must have answered as expected (not, say, all 404s).
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $VALID" "http://127.0.0.1:$PORT_APP/protected")" = 200 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $UNKNOWN" "http://127.0.0.1:$PORT_APP/protected")" = 401 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $BAD_CHECKSUM" "http://127.0.0.1:$PORT_APP/protected")" = 401 ]
# The limited key was counted: its answers carry the RateLimit headers.
curl -s -D - -o /dev/null -H "Authorization: Api-Key $LIMITED" "http://127.0.0.1:$PORT_APP/protected" | grep -qi '^ratelimit-policy:'

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "%-40s %8s %7s %7s %6s %-16s %8s %6s\n" case "req/s" "p50 ms" "p99 ms" "x/a" "(per round)" "CPU µs" "a/x"
for k in a b c d e f; do
    case $k in
        a) label="(a) no authentication";;
        b) label="(b) keygate layer, valid key";;
        c) label="(c) keygate layer, unknown key (401)";;
        d) label="(d) keygate layer, bad checksum (401)";;
        e) label="(e) keygate serve POST /v1/verify";;
        f) label="(f) keygate layer, rate-limited key";;
    esac
    rps=(); p50=(); p99=(); ratios=(); cpu=(); cpu_ratios=()
    for round in $(seq "$ROUNDS"); do
        read -r r5 l50 l99 c5 <<<"${RESULT[$k$round]}"
        read -r a5 _ _ ca <<<"${RESULT[a$round]}"
        rps+=("$r5"); p50+=("$l50"); p99+=("$l99"); cpu+=("$c5")
        ratios+=("$(awk -v x="$r5" -v a="$a5" 'BEGIN { printf "%.2f", x / a }')")
        cpu_ratios+=("$(awk -v x="$c5" -v a="$ca" 'BEGIN { printf "%.2f", a / x }')")
    done
    printf "%-40s %8s %7s %7s %6s %-16s %8s %6s\n" "$label" \
        "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" \
        "$(printf '%s\n' "${p99[@]}" | median)" "$(printf '%s\n' "${ratios[@]}" | median)" "${ratios[*]}" \
        "$(printf '%s\n' "${cpu[@]}" | median)" "$(printf '%s\n' "${cpu_ratios[@]}" | median)"
done
echo "(medians of $ROUNDS rounds; server pinned: ${PIN_SERVER[*]:-no}; wrk: ${PIN_CLIENT[*]:-no}; ${DURATION}s per case per round, $CONNECTIONS connections)"
