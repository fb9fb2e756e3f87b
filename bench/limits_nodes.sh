#!/usr/bin/env bash
# Two `keygate serve` nodes sharing rate limits through Redis: throughput and overshoot.
#
#   bench/limits_nodes.sh [SECONDS] [CONNECTIONS] [ROUNDS] [LIMIT] [WINDOW_SECS] [RATE] [WINDOWS]
#
# Builds release binaries, creates a fresh PostgreSQL schema (dropped on exit) on
# $KEYGATE_TEST_POSTGRES (default postgres://root@127.0.0.1:5432/test) and starts two nodes on
# it with `--redis $KEYGATE_TEST_REDIS` (default redis://127.0.0.1:6379), both pinned to CPU 0.
#
# (i) Throughput of POST /v1/verify through both nodes at once (one wrk per node, each with
#     CONNECTIONS/2 connections, both pinned to CPU 1), for
#       (u) a key without rate limits, and
#       (l) a key with a rate limit high enough never to refuse (1e9/1m: counted through Redis
#           leases, never reached).
#     ROUNDS (default 5) rounds, SECONDS (default 5) per case per round, the order alternating
#     (u-l, l-u, ...) so that drift of this shared machine hits both alike; the ratio l/u is
#     taken within a round and the median over rounds reported, with both nodes' CPU time per
#     request (from /proc; steal time does not inflate it, so u/l by CPU is the steadier
#     ratio on a shared machine) and Redis' if its process can be read.
# (ii) Overshoot: a fresh key limited to LIMIT (default 1000) per WINDOW_SECS (default 10) is
#     offered RATE (default 1000) requests/s, alternating between the nodes, for WINDOWS
#     (default 4) windows, by the paced driver (keygate-server's `pace_verify` example: an
#     open-loop pacer with a fixed number of slots, pinned to CPU 1). It prints, per fixed
#     window of the limit, requests admitted (VALID) and refused (RATE_LIMITED), and the
#     admitted count above the limit; overshoot is the worst window's excess as % of LIMIT.
#     ROUNDS=0 skips (i), e.g. `bench/limits_nodes.sh 5 32 0 1000 60 1000 3` for 1,000/min.
#
# Only 127.0.0.1 is touched; every run is bounded (fixed times and counts); both nodes are
# killed and the schema and the run's Redis keys deleted on exit. Prints a table at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5}"
CONNECTIONS="${2:-32}"
ROUNDS="${3:-5}"
LIMIT="${4:-1000}"
WINDOW="${5:-10}"
RATE="${6:-1000}"
WINDOWS="${7:-4}"
PORT_A=3931
PORT_B=3932
PG="${KEYGATE_TEST_POSTGRES:-postgres://root@127.0.0.1:5432/test}"
REDIS="${KEYGATE_TEST_REDIS:-redis://127.0.0.1:6379}"

for tool in wrk psql redis-cli curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done
PIN_SERVER=(); PIN_CLIENT=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1)
fi

cargo build --release -q -p keygate-server --bin keygate --example pace_verify
KG=target/release/keygate
PACE=target/release/examples/pace_verify

WORK="$(mktemp -d)"
SCHEMA="kgbench_nodes_$$"
PIDS=()
KEY_IDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    psql -q "$PG" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    for id in "${KEY_IDS[@]}"; do
        redis-cli -u "$REDIS" --scan --pattern "keygate:rl:*:key:$id" |
            xargs -r redis-cli -u "$REDIS" del >/dev/null 2>&1 || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
psql -q "$PG" -c "CREATE SCHEMA $SCHEMA" >/dev/null
case "$PG" in *\?*) DB="$PG&options=-csearch_path%3D$SCHEMA";; *) DB="$PG?options=-csearch_path%3D$SCHEMA";; esac

# Creates a key with these flags; prints "ID KEY" (the key stays in this script's variables).
new_key() {
    $KG --database "$DB" keys create --name bench "$@" --json |
        python3 -c 'import json,sys; d = json.load(sys.stdin); print(d["id"], d["key"])'
}
read -r VERIFIER_ID VERIFIER < <(new_key --scope keygate:verify)
read -r UNLIMITED_ID UNLIMITED < <(new_key)
read -r LIMITED_ID LIMITED < <(new_key --rate 1000000000/1m)
KEY_IDS+=("$LIMITED_ID")
[ -n "$VERIFIER" ] && [ -n "$UNLIMITED" ] && [ -n "$LIMITED" ] || { echo "could not create the keys" >&2; exit 1; }

for port in $PORT_A $PORT_B; do
    "${PIN_SERVER[@]}" $KG serve --database "$DB" --redis "$REDIS" --listen "127.0.0.1:$port" \
        >/dev/null 2>"$WORK/serve-$port.log" &
    PIDS+=($!)
done
NODE_A=${PIDS[0]}; NODE_B=${PIDS[1]}
for port in $PORT_A $PORT_B; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.1; done
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" || { echo "node on $port did not start" >&2; cat "$WORK/serve-$port.log" >&2; exit 1; }
done

verify() { # PORT KEY -> the answer's code
    curl -s -H "Authorization: Api-Key $VERIFIER" -H 'Content-Type: application/json' \
        -d "{\"key\": \"$2\"}" "http://127.0.0.1:$1/v1/verify" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])'
}
for port in $PORT_A $PORT_B; do
    for key in "$UNLIMITED" "$LIMITED"; do
        [ "$(verify "$port" "$key")" = VALID ] || { echo "warm-up: not VALID on $port" >&2; exit 1; }
    done
done
for key in u l; do
    k=$UNLIMITED; [ $key = l ] && k=$LIMITED
    cat > "$WORK/$key.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key": "$k"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Api-Key $VERIFIER"
LUA
done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
REDIS_PID=$(pgrep -x redis-server | head -1 || true)
[ -n "$REDIS_PID" ] && [ -r "/proc/$REDIS_PID/stat" ] || REDIS_PID=""

# One case through both nodes at once: prints "rps nodes_cpu_us redis_cpu_us p99_ms".
measure() {
    local script=$1 half=$(( CONNECTIONS / 2 ))
    local a0 b0 r0 a1 b1 r1
    a0=$(cpu_ticks $NODE_A); b0=$(cpu_ticks $NODE_B); r0=$([ -n "$REDIS_PID" ] && cpu_ticks "$REDIS_PID" || echo 0)
    "${PIN_CLIENT[@]}" wrk -t1 -c"$half" -d"${DURATION}s" --latency -s "$script" "http://127.0.0.1:$PORT_A/v1/verify" >"$WORK/wrk-a" &
    local wa=$!
    "${PIN_CLIENT[@]}" wrk -t1 -c"$half" -d"${DURATION}s" --latency -s "$script" "http://127.0.0.1:$PORT_B/v1/verify" >"$WORK/wrk-b" &
    local wb=$!
    wait $wa $wb
    a1=$(cpu_ticks $NODE_A); b1=$(cpu_ticks $NODE_B); r1=$([ -n "$REDIS_PID" ] && cpu_ticks "$REDIS_PID" || echo 0)
    cat "$WORK/wrk-a" "$WORK/wrk-b" | awk -v nodes=$(( a1 - a0 + b1 - b0 )) -v redis=$(( r1 - r0 )) -v tick_us="$TICK_US" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^Requests\/sec/ { rps += $2 } / requests in / { n += $1 } /^ +99%/ { if (ms($2) > p99) p99 = ms($2) }
        /Non-2xx/ { bad += $NF }
        END { if (bad > 0) { print "non-2xx answers: " bad > "/dev/stderr"; exit 1 }
              printf "%.0f %.2f %.2f %.3f\n", rps, nodes * tick_us / n, redis * tick_us / n, p99 }'
}

round_trips() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^keygate_ratelimit_round_trips_total / { print $2 }'; }
declare -A RESULT
echo "(i) throughput: $ROUNDS rounds of ${DURATION}s per case, $CONNECTIONS connections over both nodes" >&2
for round in $(seq "$ROUNDS"); do
    order="u l"; [ $(( round % 2 )) -eq 0 ] && order="l u"
    for k in $order; do
        echo "  round $round/$ROUNDS: $k" >&2
        RESULT[$k$round]=$(measure "$WORK/$k.lua")
    done
done
TRIPS=$(( $(round_trips $PORT_A) + $(round_trips $PORT_B) ))
# The limited key was counted (its answer carries its limit), never refused.
curl -s -H "Authorization: Api-Key $VERIFIER" -H 'Content-Type: application/json' \
    -d "{\"key\": \"$LIMITED\"}" "http://127.0.0.1:$PORT_A/v1/verify" |
    python3 -c 'import json,sys; d = json.load(sys.stdin); assert d["code"] == "VALID" and d["limits"], d'

# (ii) overshoot, with a fresh key.
read -r PACED_ID PACED < <(new_key --rate "$LIMIT/${WINDOW}s")
KEY_IDS+=("$PACED_ID")
[ -n "$PACED" ] || { echo "could not create the paced key" >&2; exit 1; }
for port in $PORT_A $PORT_B; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; done
TRIPS_BEFORE=$(( $(round_trips $PORT_A) + $(round_trips $PORT_B) ))
SLOTS=$(( RATE * WINDOW * WINDOWS ))
echo "(ii) overshoot: $LIMIT per ${WINDOW}s, $RATE/s offered over both nodes, $SLOTS slots" >&2
KEYGATE_BENCH_VERIFIER="$VERIFIER" KEYGATE_BENCH_KEY="$PACED" "${PIN_CLIENT[@]}" "$PACE" \
    "127.0.0.1:$PORT_A,127.0.0.1:$PORT_B" "$RATE" "$SLOTS" "$LIMIT" "$WINDOW" | tee "$WORK/pace.txt"
PACE_TRIPS=$(( $(round_trips $PORT_A) + $(round_trips $PORT_B) - TRIPS_BEFORE ))
# Decisions a node made on its own because Redis did not answer within redis_timeout (each one
# can let the limit become per node): 0 means every decision above was shared.
metric_sum() { for port in $PORT_A $PORT_B; do curl -s "http://127.0.0.1:$port/metrics"; done |
    awk -v m="$1" '$1 == m { n += $2 } END { print n + 0 }'; }
DEGRADED=$(metric_sum keygate_ratelimit_degraded_decisions_total)
REDIS_ERRORS=$(metric_sum keygate_ratelimit_redis_errors_total)
for port in $PORT_A $PORT_B; do
    curl -s "http://127.0.0.1:$port/metrics" | grep -q '^keygate_ratelimit_redis_up 1' ||
        echo "warning: the node on $port is not sharing through Redis now" >&2
done
grep -h -i 'redis' "$WORK"/serve-*.log | grep -v -i 'listening' | head -5 >&2 || true

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo
if [ "$ROUNDS" -gt 0 ]; then
printf "%-38s %8s %8s %9s %9s %-28s %-28s\n" case "req/s" "p99 ms" "nodes µs" "Redis µs" "l/u (per round)" "u/l by CPU (per round)"
for k in u l; do
    case $k in
        u) label="(u) /v1/verify, key without limits";;
        l) label="(l) /v1/verify, key limited 1e9/1m";;
    esac
    rps=(); p99=(); cpu=(); rcpu=(); ratios=(); cpu_ratios=()
    for round in $(seq "$ROUNDS"); do
        read -r r c rc l99 <<<"${RESULT[$k$round]}"
        read -r ru cu _ _ <<<"${RESULT[u$round]}"
        rps+=("$r"); cpu+=("$c"); rcpu+=("$rc"); p99+=("$l99")
        ratios+=("$(awk -v x="$r" -v u="$ru" 'BEGIN { printf "%.2f", x / u }')")
        cpu_ratios+=("$(awk -v x="$c" -v u="$cu" 'BEGIN { printf "%.2f", u / x }')")
    done
    printf "%-38s %8s %8s %9s %9s %-28s %-28s\n" "$label" \
        "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p99[@]}" | median)" \
        "$(printf '%s\n' "${cpu[@]}" | median)" "$(printf '%s\n' "${rcpu[@]}" | median)" \
        "$(printf '%.2f' "$(printf '%s\n' "${ratios[@]}" | median)") (${ratios[*]})" \
        "$(printf '%.2f' "$(printf '%s\n' "${cpu_ratios[@]}" | median)") (${cpu_ratios[*]})"
done
echo "(medians of $ROUNDS rounds of ${DURATION}s; nodes pinned: ${PIN_SERVER[*]:-no}; wrk: ${PIN_CLIENT[*]:-no}; CPU µs per request: both nodes, and Redis ($([ -n "$REDIS_PID" ] && echo "pid $REDIS_PID" || echo "not readable: 0")); Redis round trips over all rounds: $TRIPS)"
echo
fi
summary=$(tail -1 "$WORK/pace.txt")
printf "%-44s %s\n" "overshoot: limit" "$LIMIT per ${WINDOW}s, $RATE/s offered for $WINDOWS windows"
for field in overshoot_pct sliding_pct admitted refused other straddling; do
    printf "%-44s %s\n" "  $field" "$(tr ' ' '\n' <<<"$summary" | awk -F= -v f="$field" '$1 == f { print $2 }')"
done
printf "%-44s %s\n" "  Redis round trips while pacing" "$PACE_TRIPS"
printf "%-44s %s\n" "  Redis errors / decisions made without Redis" "$REDIS_ERRORS / $DEGRADED (whole run)"
