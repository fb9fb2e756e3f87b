#!/usr/bin/env bash
# Admin web UI page times against a large key table, over loopback, one request at a time.
#
#   bench/admin_ui.sh [KEYS] [REQUESTS]
#
# Builds release binaries, fills a fresh SQLite database with KEYS keys (default 100,000),
# starts `keygate serve`, signs in with an admin key (and sets and uses a password), and for
# each page makes REQUESTS (default 200) requests on one keep-alive connection, printing p50,
# p90 and p99 in milliseconds: the keys list (first page with status counts), a search, a
# status filter, a key's page, the audit log, and a password sign-in (argon2id). Only
# 127.0.0.1 is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS="${1:-100000}"
REQUESTS="${2:-200}"
PORT=3929

cargo build --release -q -p keygate-store --features bench --example fill
cargo build --release -q -p keygate-server --bin keygate

WORK="$(mktemp -d)"
SERVE_PID=""
cleanup() { [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
DB="sqlite://$WORK/bench.db"
KG=target/release/keygate

target/release/examples/fill "$DB" "$KEYS" 1 "$WORK/hot.txt" >/dev/null
ADMIN=$($KG --database "$DB" keys create --name bench-admin --scope keygate:admin --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
echo "a long bench password" | $KG --database "$DB" admin set-password bench --password-stdin >/dev/null
$KG serve --database "$DB" --listen "127.0.0.1:$PORT" >/dev/null 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done

python3 - "$PORT" "$ADMIN" "$REQUESTS" "$KEYS" <<'PY'
import http.client, re, sys, time, urllib.parse

port, admin, n, keys = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port)
cookies = {}

def request(method, path, fields=None):
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    body = None
    if fields is not None:
        body = urllib.parse.urlencode(fields)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    text = r.read().decode()
    for name, value in r.getheaders():
        if name.lower() == "set-cookie":
            k, v = value.split(";")[0].split("=", 1)
            cookies[k] = v
    return r.status, text

def csrf(text):
    return re.search(r'name="csrf" value="([^"]*)"', text).group(1)

def sign_in(method, **fields):
    cookies.pop("keygate_session", None)
    _, form = request("GET", "/admin/login")
    status, _ = request("POST", "/admin/login", {"csrf": csrf(form), "method": method, **fields})
    assert status == 303, status

def measure(label, path, count=n):
    times = []
    for _ in range(count):
        t = time.perf_counter()
        status, _ = request("GET", path)
        times.append((time.perf_counter() - t) * 1000)
        assert status == 200, (path, status)
    times.sort()
    pick = lambda p: times[min(len(times) - 1, int(round((len(times) - 1) * p)))]
    print(f"{label:<44} p50 {pick(0.5):7.2f} ms   p90 {pick(0.9):7.2f} ms   p99 {pick(0.99):7.2f} ms")

sign_in("key", key=admin)
_, page = request("GET", "/admin/keys")
key_path = re.search(r'href="(/admin/keys/key_[^"]+)"', page).group(1)
start = re.search(r"<code>(kg_[A-Za-z0-9]{4})", page).group(1)
print(f"{keys} keys, {n} requests per page, one connection")
measure("keys list, first page + status counts", "/admin/keys")
measure("keys list, status=revoked", "/admin/keys?status=revoked")
measure(f"search by start ({start}: LIKE over the table)", f"/admin/keys?q={start}")
measure("a key's page (record, chain, events)", key_path)
measure("audit log, newest first", "/admin/audit")
times = []
for _ in range(20):
    t = time.perf_counter()
    sign_in("password", username="bench", password="a long bench password")
    times.append((time.perf_counter() - t) * 1000)
times.sort()
print(f"{'password sign-in (GET form + POST, argon2id)':<44} p50 {times[10]:7.2f} ms   max {times[-1]:7.2f} ms")
PY
