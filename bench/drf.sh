#!/usr/bin/env bash
# A DRF view behind gunicorn, protected three ways, side by side over loopback with wrk.
#
#   bench/drf.sh [SECONDS] [CONNECTIONS] [ROUNDS] [WORKERS]
#
# The same view (clients/python/tests/djangoapp: views.Hello) under gunicorn, WORKERS (default
# 2) sync workers, DEBUG off, DRF's default authentication classes:
#   (a) no permission                                     GET /api/open/   (the key header sent, ignored)
#   (b) drf-api-key's HasAPIKey, keys in SQLite           GET /api/drf/    (3.x, SHA-512 hashes)
#   (c) keygate's HasKeygateKey, cache off                GET /api/public/ (a POST /v1/verify per request
#       to a local `keygate serve`, release build, on SQLite)
#   (d) HasKeygateKey with its 1 s positive cache         GET /api/public/ (a second gunicorn, CACHE_TTL=1)
# and prints requests/s, p50 and p99, the ratios x/a and c/b, d/b, and the CPU time per request
# of everything on the app's side (gunicorn's master and workers, plus keygate serve): that
# figure is steadier than requests/s on a shared VM, since time stolen by the hypervisor is not
# charged to a process. Cases run in ROUNDS (default 3) rounds of a-b-c-d, SECONDS (default 6)
# each; ratios are taken within a round and the median over rounds is reported. gunicorn and
# keygate serve share CPU 0 (the verify round trip is paid from the app's CPU budget), wrk has
# CPU 1. CONNECTIONS defaults to 8 (sync workers serve one request at a time; more only queue).
#
# Then, once `keygate import drf-api-key` exists: the first use of an imported PBKDF2-hashed key
# (Django's 600,000 iterations) against the same key after keygate's lazy rehash. And the
# client's own cost per verify: the urllib3 pool keygate.Client uses against requests.Session.
# Only 127.0.0.1 is touched. Installs wrk if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-6}"
CONNECTIONS="${2:-8}"
ROUNDS="${3:-3}"
WORKERS="${4:-2}"
ROOT="$PWD"

if ! command -v wrk >/dev/null; then
    echo "installing wrk" >&2
    apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
fi
PIN_SERVER=(); PIN_CLIENT=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c 0); PIN_CLIENT=(taskset -c 1)
fi

cargo build --release -q -p keygate-server --bin keygate
clients/python/dev-venv.sh >&2
PY="$ROOT/clients/python/.venv/bin/python"
KG="$ROOT/target/release/keygate"

WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# A free port on 127.0.0.1 (bound and released; the servers below take it at once).
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 200); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no server at $1" >&2; exit 1; }
json_field() { "$PY" -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }

# keygate: a verify key for the app, a client key for the requests.
KG_DB="sqlite://$WORK/keygate.db"
VERIFIER=$($KG --database "$KG_DB" keys create --name bench-app --scope keygate:verify --json | json_field key)
KG_KEY=$($KG --database "$KG_DB" keys create --name bench-client --json | json_field key)
KG_PORT=$(free_port)
"${PIN_SERVER[@]}" $KG serve --database "$KG_DB" --listen "127.0.0.1:$KG_PORT" >/dev/null 2>"$WORK/serve.log" &
KG_PID=$!
PIDS+=("$KG_PID")
wait_for "http://127.0.0.1:$KG_PORT/healthz"

# drf-api-key: its table in the Django project's SQLite file, one key.
export PYTHONPATH="$ROOT/clients/python/tests" DJANGO_SETTINGS_MODULE=djangoapp.settings DJANGOAPP_DB="$WORK/django.db"
"$PY" -m django migrate -v 0
DRF_KEY=$("$PY" -c 'import django; django.setup()
from rest_framework_api_key.models import APIKey
print(APIKey.objects.create_key(name="bench-client")[1])')

# Two gunicorns: cache off (a, b, c) and cache 1 s (d). start_gunicorn PORT CACHE_TTL sets STARTED.
start_gunicorn() {
    KEYGATE_URL="http://127.0.0.1:$KG_PORT" KEYGATE_VERIFY_KEY="$VERIFIER" KEYGATE_CACHE_TTL="$2" \
        "${PIN_SERVER[@]}" "$PY" -m gunicorn --bind "127.0.0.1:$1" --workers "$WORKERS" --worker-class sync \
        --chdir "$ROOT/clients/python/tests" --error-logfile "$WORK/gunicorn-$1.log" djangoapp.wsgi &
    STARTED=$!
    PIDS+=("$STARTED")
}
PORT_NOCACHE=$(free_port); start_gunicorn "$PORT_NOCACHE" 0; G_NOCACHE=$STARTED
PORT_CACHE=$(free_port); start_gunicorn "$PORT_CACHE" 1; G_CACHE=$STARTED
wait_for "http://127.0.0.1:$PORT_NOCACHE/api/open/"
wait_for "http://127.0.0.1:$PORT_CACHE/api/open/"

url() { case $1 in a) echo "http://127.0.0.1:$PORT_NOCACHE/api/open/";; b) echo "http://127.0.0.1:$PORT_NOCACHE/api/drf/";;
                   c) echo "http://127.0.0.1:$PORT_NOCACHE/api/public/";; d) echo "http://127.0.0.1:$PORT_CACHE/api/public/";; esac; }
key() { case $1 in b) echo "$DRF_KEY";; *) echo "$KG_KEY";; esac; }
gunicorn_of() { case $1 in d) echo "$G_CACHE";; *) echo "$G_NOCACHE";; esac; }

# Each protected case answers 200 with its key, and refuses without it (not, say, all 200s).
for k in a b c d; do
    got=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Api-Key $(key $k)" "$(url $k)")
    [ "$got" = 200 ] || { echo "($k) answered $got with a valid key" >&2; exit 1; }
done
for k in b c d; do
    got=$(curl -s -o /dev/null -w '%{http_code}' "$(url $k)")
    [ "$got" = 401 ] || [ "$got" = 403 ] || { echo "($k) answered $got without a key" >&2; exit 1; }
done

# CPU time (user + system, clock ticks) of gunicorn master $1, its workers, and keygate serve.
cpu_ticks() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1") "$KG_PID"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
    done
    echo "$total"
}
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))

# Prints "rps p50_ms p99_ms cpu_us_per_request" for one wrk run of case $1.
measure() {
    local k=$1
    local before; before=$(cpu_ticks "$(gunicorn_of "$k")")
    local out; out=$("${PIN_CLIENT[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -H "Authorization: Api-Key $(key "$k")" "$(url "$k")")
    local after; after=$(cpu_ticks "$(gunicorn_of "$k")")
    if echo "$out" | grep -q "Non-2xx"; then echo "($k) had non-2xx answers:" >&2; echo "$out" >&2; exit 1; fi
    echo "$out" | awk -v ticks=$((after - before)) -v tick_us="$TICK_US" '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
        / requests in / { n = $1 }
        END { printf "%.0f %.2f %.2f %.0f\n", rps, p50, p99, ticks * tick_us / n }'
}

# Warm up every case (imports, connections, caches).
for k in a b c d; do "${PIN_CLIENT[@]}" wrk -t1 -c2 -d1s -H "Authorization: Api-Key $(key $k)" "$(url $k)" >/dev/null; done

declare -A RESULT
for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    for k in a b c d; do RESULT[$k$round]=$(measure "$k"); done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# ratio CASE BASE: per-round requests/s ratios, then their median
ratios() {
    local r out=()
    for r in $(seq "$ROUNDS"); do
        read -r x _ _ _ <<<"${RESULT[$1$r]}"; read -r y _ _ _ <<<"${RESULT[$2$r]}"
        out+=("$(awk -v x="$x" -v y="$y" 'BEGIN { printf "%.2f", x / y }')")
    done
    echo "${out[*]}"
}
printf "%-46s %7s %7s %7s %6s %-16s %10s\n" case "req/s" "p50 ms" "p99 ms" "x/a" "(per round)" "CPU µs/req"
for k in a b c d; do
    case $k in
        a) label="(a) no permission";;
        b) label="(b) HasAPIKey (drf-api-key 3.1, SQLite)";;
        c) label="(c) HasKeygateKey, cache off";;
        d) label="(d) HasKeygateKey, 1 s positive cache";;
    esac
    rps=(); p50=(); p99=(); cpu=()
    for round in $(seq "$ROUNDS"); do
        read -r r l5 l9 c <<<"${RESULT[$k$round]}"
        rps+=("$r"); p50+=("$l5"); p99+=("$l9"); cpu+=("$c")
    done
    per_round=$(ratios "$k" a)
    printf "%-46s %7s %7s %7s %6s %-16s %10s\n" "$label" \
        "$(printf '%s\n' "${rps[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" \
        "$(printf '%s\n' "${p99[@]}" | median)" "$(tr ' ' '\n' <<<"$per_round" | median)" "$per_round" \
        "$(printf '%s\n' "${cpu[@]}" | median)"
done
for pair in "c b" "d b"; do
    read -r x y <<<"$pair"
    per_round=$(ratios "$x" "$y")
    echo "$x/$y = $(tr ' ' '\n' <<<"$per_round" | median) (per round: $per_round)"
done
echo "(medians of $ROUNDS rounds; $WORKERS sync gunicorn workers + keygate serve pinned: ${PIN_SERVER[*]:-no}; wrk: ${PIN_CLIENT[*]:-no}; ${DURATION}s per case per round, $CONNECTIONS connections)"

# --- the client's own cost per verify: urllib3 (what keygate.Client uses) vs requests ------
"${PIN_SERVER[@]}" "$PY" - "http://127.0.0.1:$KG_PORT" "$VERIFIER" "$KG_KEY" <<'PY'
import json, statistics, sys, time
import requests
from keygate import Client
url, verifier, key = sys.argv[1:4]
client = Client(url, verifier)
session = requests.Session()
session.trust_env = False  # no proxy or netrc look-up per call: requests at its fastest
headers = {"Authorization": f"Api-Key {verifier}", "Content-Type": "application/json"}
body = json.dumps({"key": key, "scopes": []})
def with_requests():
    r = session.post(url + "/v1/verify", data=body, headers=headers, timeout=2)
    assert r.status_code == 200 and r.json()["valid"]
def with_client():
    assert client.verify(key).valid
def cpu_per_call(f, n=2000):
    for _ in range(100):
        f()
    start = time.process_time()
    for _ in range(n):
        f()
    return (time.process_time() - start) / n * 1e6
rounds = {"keygate.Client (urllib3)": [], "requests.Session": []}
for _ in range(3):
    rounds["keygate.Client (urllib3)"].append(cpu_per_call(with_client))
    rounds["requests.Session"].append(cpu_per_call(with_requests))
for name, values in rounds.items():
    print(f"client CPU per verify, {name:26s} {statistics.median(values):6.0f} µs  (rounds: {' '.join(f'{v:.0f}' for v in values)})")
PY

# --- an imported PBKDF2 key: first use, then after the rehash ---------------------------
if ! $KG import drf-api-key --help >/dev/null 2>&1; then
    echo "PBKDF2 first use vs after rehash: not measured — keygate import drf-api-key does not exist yet"
    exit 0
fi
"$PY" "$ROOT/clients/python/tests/drf_fixture.py" "$WORK/drf" >/dev/null
IMPORT_DB="sqlite://$WORK/imported.db"
$KG --database "$IMPORT_DB" import drf-api-key --from "$WORK/drf/drf.db" --json >/dev/null
IMPORT_VERIFIER=$($KG --database "$IMPORT_DB" keys create --name bench-app --scope keygate:verify --json | json_field key)
IMPORT_PORT=$(free_port)
# cache off: every verify reads the database, so "after" is what a keygate key costs there
"${PIN_SERVER[@]}" $KG serve --database "$IMPORT_DB" --listen "127.0.0.1:$IMPORT_PORT" --cache-size 0 >/dev/null 2>"$WORK/import-serve.log" &
PIDS+=($!)
wait_for "http://127.0.0.1:$IMPORT_PORT/healthz"
"${PIN_CLIENT[@]}" "$PY" - "http://127.0.0.1:$IMPORT_PORT" "$IMPORT_VERIFIER" "$WORK/drf/manifest.json" <<'PY'
import json, statistics, sys, time
from keygate import Client
url, verifier, manifest = sys.argv[1:4]
keys = json.load(open(manifest))["keys"]
pbkdf2 = next(k for k in keys if k["hasher"] == "pbkdf2_sha256" and "$600000$" in k["hashed_key"] and k["drf_accepts"])
sha512 = next(k for k in keys if k["hasher"] == "sha512" and k["drf_accepts"])
client = Client(url, verifier, timeout=60)
def timed(key):
    start = time.perf_counter()
    assert client.verify(key["key"]).valid
    return (time.perf_counter() - start) * 1000
first = timed(pbkdf2)
after = statistics.median(timed(pbkdf2) for _ in range(200))
sha_first = timed(sha512)
sha_after = statistics.median(timed(sha512) for _ in range(200))
print(f"imported PBKDF2 key (600,000 iterations): first use {first:.1f} ms, after the rehash {after:.2f} ms (median of 200)")
print(f"imported SHA-512 key: first use {sha_first:.2f} ms, then {sha_after:.2f} ms (median of 200)")
PY
