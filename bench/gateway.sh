#!/usr/bin/env bash
# keygate gateway against the upstream alone and against nginx, side by side, over loopback.
#
#   bench/gateway.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#
# Builds release binaries and measures GET /api/orders (a 62-byte JSON answer) through:
#   (a) the upstream called directly (a tiny hyper server: keygate-gateway's bench_upstream)
#   (b) nginx (Debian's package) as a plain reverse proxy: proxy_pass, HTTP/1.1 and keep-alive
#       to the upstream, no authentication
#   (c) keygate gateway with a valid key (scope checked; identity headers added; key stripped)
# Every case sends the same `Authorization: Api-Key <valid key>` header, so only the work
# differs. Both proxies write an access log line per request to a file (on for both). The
# proxy (or, in (a), the upstream) and the upstream are pinned to CPU 0, wrk to CPU 1 (2-core
# machine); nginx runs one worker (master_process off), the gateway's runtime sees one CPU.
# Cases run in ROUNDS (default 3) rounds of a-b-c, each case SECONDS (default 6) per round;
# ratios are taken within a round and the median over rounds is reported, with p50/p99 and the
# CPU time per request of the process in front (from /proc/PID/stat; the upstream's share is
# the same in (b) and (c)). Files (the database, both access logs) go to a tmpfs (/dev/shm)
# when there is one, so that the disk's writeback does not stall either proxy. Only 127.0.0.1
# is touched.
#
# Then the latency each proxy adds below saturation: at saturation, a closed-loop client's
# latency is its connections over the throughput (Little's law), a measure of throughput and
# not of the time a request spends in the proxy. So each round also sends RATE requests per
# second in all (default 5000; RATE=0 skips this) over the same CONNECTIONS, on an open-loop
# schedule (keygate-gateway's bench_latency example: each request due at a fixed time, its
# latency counted from then, so waiting behind a slow request counts), to each case in turn;
# the table gives p50/p99/p99.9 and the p99 each proxy adds over (a), per round.
#
# KEYGATE_BIN=<keygate binary> measures another build as (c); KEYGATE_BIN_B=<keygate binary>
# adds a second gateway, (c2), measured in the same rounds (c and c2 take turns going first):
# an A/B of two builds in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-6}"
CONNECTIONS="${2:-32}"
ROUNDS="${3:-3}"
RATE="${RATE:-5000}"
PORT_UP=3931
PORT_NGINX=3932
PORT_GW=3933
PORT_GW_ADMIN=3934
PORT_GW_B=3935
PORT_GW_B_ADMIN=3936

for tool in wrk nginx; do
    if ! command -v "$tool" >/dev/null && ! [ -x "/usr/sbin/$tool" ]; then
        echo "installing $tool" >&2
        apt-get install -y -qq "$tool" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$tool"; }
    fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
PIN_SERVER=(); PIN_CLIENT=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1)
fi

cargo build --release -q -p keygate-gateway --example bench_upstream --example bench_latency
cargo build --release -q -p keygate-server --bin keygate

WORK="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
DB="sqlite://$WORK/bench.db"
KG="${KEYGATE_BIN:-target/release/keygate}"   # KEYGATE_BIN: another build, for an A/B run
KEY=$($KG --database "$DB" keys create --name bench --owner acct_42 --scope orders:read --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

"${PIN_SERVER[@]}" target/release/examples/bench_upstream "127.0.0.1:$PORT_UP" >/dev/null &
UP_PID=$!
PIDS+=($UP_PID)

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log $WORK/nginx-access.log;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream app {
        server 127.0.0.1:$PORT_UP;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PORT_NGINX;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
"${PIN_SERVER[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" &
NGINX_PID=$!
PIDS+=($NGINX_PID)

cat > "$WORK/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:$PORT_GW"
admin_listen = "127.0.0.1:$PORT_GW_ADMIN"

[[gateway.route]]
prefix = "/api"
upstream = "http://127.0.0.1:$PORT_UP"
scopes = ["orders:read"]
TOML
"${PIN_SERVER[@]}" $KG --database "$DB" --config "$WORK/gateway.toml" gateway >/dev/null 2>"$WORK/gateway.log" &
GW_PID=$!
PIDS+=($GW_PID)
CASES=(a b c)
if [ -n "${KEYGATE_BIN_B:-}" ]; then
    sed -e "s/:$PORT_GW_ADMIN\"/:$PORT_GW_B_ADMIN\"/" -e "s/:$PORT_GW\"/:$PORT_GW_B\"/" \
        "$WORK/gateway.toml" > "$WORK/gateway-b.toml"
    "${PIN_SERVER[@]}" "$KEYGATE_BIN_B" --database "$DB" --config "$WORK/gateway-b.toml" gateway \
        >/dev/null 2>"$WORK/gateway-b.log" &
    GW_B_PID=$!
    PIDS+=($GW_B_PID)
    CASES+=(c2)
fi

wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no server at $1" >&2; exit 1; }
wait_for "http://127.0.0.1:$PORT_UP/api/orders"
wait_for "http://127.0.0.1:$PORT_NGINX/api/orders"
wait_for "http://127.0.0.1:$PORT_GW_ADMIN/healthz"
PORTS=($PORT_UP $PORT_NGINX $PORT_GW)
if [ -n "${KEYGATE_BIN_B:-}" ]; then
    wait_for "http://127.0.0.1:$PORT_GW_B_ADMIN/healthz"
    PORTS+=($PORT_GW_B)
fi

# Each case must answer 200 (not, say, a refusal or a 502) with the upstream's body.
for port in "${PORTS[@]}"; do
    body=$(curl -sf -H "Authorization: Api-Key $KEY" "http://127.0.0.1:$port/api/orders")
    [ "$body" = '{"orders":[{"id":1,"total":"12.50"},{"id":2,"total":"7.00"}]}' ] || { echo "bad answer on $port: $body" >&2; exit 1; }
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT_GW/api/orders")" = 401 ]

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))

# Prints "rps p50_ms p99_ms cpu_us_per_request non_2xx" for one wrk run; CPU of process $1.
measure() {
    local pid=$1; shift
    local before; before=$(cpu_ticks "$pid")
    local out; out=$("${PIN_CLIENT[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Api-Key $KEY" "$@")
    local after; after=$(cpu_ticks "$pid")
    echo "$out" | awk -v ticks=$((after - before)) -v tick_us="$TICK_US" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
        / requests in / { n = $1 } /Non-2xx/ { bad = $NF }
        END { printf "%.0f %.3f %.3f %.2f %d\n", rps, p50, p99, ticks * tick_us / n, bad }'
}

# Warm up every path (connections, pools, the key cache).
for port in "${PORTS[@]}"; do
    "${PIN_CLIENT[@]}" wrk -t1 -c"$CONNECTIONS" -d1s -H "Authorization: Api-Key $KEY" "http://127.0.0.1:$port/api/orders" >/dev/null
done

# Prints "p50_us p99_us p999_us" for one fixed-rate run against port $1.
latency() {
    "${PIN_CLIENT[@]}" target/release/examples/bench_latency "http://127.0.0.1:$1/api/orders" \
        "$RATE" "$CONNECTIONS" "$DURATION" "Authorization: Api-Key $KEY" |
        awk '{ print $4, $8, $10 }'
}
declare -A PORT_OF=([a]=$PORT_UP [b]=$PORT_NGINX [c]=$PORT_GW [c2]=${PORT_GW_B})
declare -A LABEL=([a]="(a) upstream directly" [b]="(b) nginx proxy_pass, no auth"
    [c]="(c) keygate gateway, valid key" [c2]="(c2) KEYGATE_BIN_B, valid key")

declare -A RESULT LATENCY
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    if [ "$RATE" != 0 ]; then
        # The proxies take turns going first (the VM's speed drifts within a round).
        order=("${CASES[@]:1}")
        [ $((round % 2)) = 1 ] || order=($(printf '%s\n' "${order[@]}" | tac))
        for k in a "${order[@]}"; do LATENCY[$k$round]=$(latency "${PORT_OF[$k]}"); done
    fi
    RESULT[a$round]=$(measure $UP_PID "http://127.0.0.1:$PORT_UP/api/orders")
    RESULT[b$round]=$(measure $NGINX_PID "http://127.0.0.1:$PORT_NGINX/api/orders")
    if [ -z "${KEYGATE_BIN_B:-}" ]; then
        RESULT[c$round]=$(measure $GW_PID "http://127.0.0.1:$PORT_GW/api/orders")
    elif [ $((round % 2)) = 1 ]; then
        RESULT[c$round]=$(measure $GW_PID "http://127.0.0.1:$PORT_GW/api/orders")
        RESULT[c2$round]=$(measure $GW_B_PID "http://127.0.0.1:$PORT_GW_B/api/orders")
    else
        RESULT[c2$round]=$(measure $GW_B_PID "http://127.0.0.1:$PORT_GW_B/api/orders")
        RESULT[c$round]=$(measure $GW_PID "http://127.0.0.1:$PORT_GW/api/orders")
    fi
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "%-44s %8s %7s %7s %9s %6s %-16s %6s %-16s\n" case "req/s" "p50 ms" "p99 ms" "CPU µs/r" "x/a" "(per round)" "x/b" "(per round)"
for k in "${CASES[@]}"; do
    label=${LABEL[$k]}
    rps=(); p50=(); p99=(); cpu=(); ra=(); rb=(); bad=0
    for round in $(seq "$ROUNDS"); do
        read -r r l50 l99 c n <<<"${RESULT[$k$round]}"
        read -r a _ _ _ _ <<<"${RESULT[a$round]}"
        read -r b _ _ _ _ <<<"${RESULT[b$round]}"
        rps+=("$r"); p50+=("$l50"); p99+=("$l99"); cpu+=("$c"); bad=$((bad + n))
        ra+=("$(awk -v x="$r" -v a="$a" 'BEGIN { printf "%.2f", x / a }')")
        rb+=("$(awk -v x="$r" -v b="$b" 'BEGIN { printf "%.2f", x / b }')")
    done
    [ "$bad" = 0 ] || { echo "$label: $bad non-2xx answers" >&2; exit 1; }
    printf "%-44s %8s %7s %7s %9s %6s %-16s %6s %-16s\n" "$label" \
        "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" \
        "$(printf '%s\n' "${p99[@]}" | median)" "$(printf '%s\n' "${cpu[@]}" | median)" \
        "$(printf '%s\n' "${ra[@]}" | median)" "${ra[*]}" "$(printf '%s\n' "${rb[@]}" | median)" "${rb[*]}"
done
echo "(medians of $ROUNDS rounds; servers pinned: ${PIN_SERVER[*]:-no}; wrk: ${PIN_CLIENT[*]:-no}; ${DURATION}s per case per round, $CONNECTIONS connections; access logs on for both proxies)"
echo "access log lines: nginx $(wc -l < "$WORK/nginx-access.log"), gateway $(grep -c 'keygate_gateway::access' "$WORK/gateway.log")"

[ "$RATE" != 0 ] || exit 0
echo
echo "latency at $RATE requests/s in all over $CONNECTIONS connections (open loop; µs; medians of $ROUNDS rounds)"
printf "%-44s %8s %8s %8s %12s %s\n" case p50 p99 p99.9 "added p99" "(per round)"
for k in "${CASES[@]}"; do
    label=${LABEL[$k]}
    p50=(); p99=(); p999=(); added=()
    for round in $(seq "$ROUNDS"); do
        read -r l50 l99 l999 <<<"${LATENCY[$k$round]}"
        read -r _ a99 _ <<<"${LATENCY[a$round]}"
        p50+=("$l50"); p99+=("$l99"); p999+=("$l999"); added+=($((l99 - a99)))
    done
    printf "%-44s %8s %8s %8s %12s %s\n" "$label" "$(printf '%s\n' "${p50[@]}" | median)" \
        "$(printf '%s\n' "${p99[@]}" | median)" "$(printf '%s\n' "${p999[@]}" | median)" \
        "$(printf '%s\n' "${added[@]}" | median)" "${added[*]}"
done
