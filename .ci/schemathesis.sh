#!/usr/bin/env bash
# Schemathesis over keygate's own OpenAPI document: a debug `keygate serve` on a fresh SQLite
# file, every operation with generated inputs (bounded examples, fixed seed), all checks —
# status codes and bodies as documented, no 5xx, problem+json for errors. Exits non-zero on
# any failure.
#
#   .ci/schemathesis.sh KEYGATE_BIN ST_BIN [EXAMPLES] [SEED]
set -euo pipefail
BIN="$1"; ST="$2"; EXAMPLES="${3:-20}"; SEED="${4:-1}"
WORK="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" serve --database "sqlite://$WORK/st.db" --listen 127.0.0.1:0 >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 100); do
    ADDR="$(grep -o 'addr=[0-9.:]*' "$WORK/err" | head -1 | cut -d= -f2 || true)"
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { echo "keygate serve did not start:" >&2; cat "$WORK/err" >&2; exit 1; }
# The bootstrap admin key is printed once on stdout as the database starts empty.
for _ in $(seq 50); do ADMIN="$(grep -E '^kg_' "$WORK/out" || true)"; [ -n "$ADMIN" ] && break; sleep 0.1; done
[ -n "$ADMIN" ] || { echo "no bootstrap key printed" >&2; exit 1; }
timeout 600 "$ST" run "http://$ADDR/openapi.json" --checks all \
    -H "Authorization: Api-Key $ADMIN" --max-examples "$EXAMPLES" --seed "$SEED" --no-shrink
