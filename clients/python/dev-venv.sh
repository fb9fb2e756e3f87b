#!/usr/bin/env bash
# Makes the Python venv the client's tests and bench/drf.sh run in, or brings it up to date.
#
#   clients/python/dev-venv.sh [DIR]          # default: clients/python/.venv
#
# DIR gets requirements-dev.txt (pinned), the keygate package itself installed the way a user
# installs it (pip install ./clients/python), and a urllib3 wheel in DIR/wheels for the test
# that installs the package offline into a fresh venv. DIR/legacy is a second venv with
# djangorestframework-api-key 2.x (requirements-legacy.txt) for the PBKDF2-hashed fixture keys.
# Idempotent: when nothing it installs from has changed since the last run, it does nothing.
# Needs python3 (>= 3.9) with venv, and PyPI on first run.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="${1:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
LEGACY="$DIR/legacy"
PIP_OPTS=(-q --disable-pip-version-check --timeout 60 --retries 3)

# What the venv is made from: when this digest matches the one stored, the venv is current.
digest() {
    (cd "$HERE" && cat requirements-dev.txt requirements-legacy.txt pyproject.toml README.md &&
        find src -type f ! -name '*.pyc' | LC_ALL=C sort | xargs cat) | sha256sum | cut -d' ' -f1
}
"$PYTHON" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 9)' 2>/dev/null ||
    { echo "dev-venv: $PYTHON must be Python >= 3.9 with venv and ensurepip (Debian: apt-get install python3-venv)" >&2; exit 1; }
WANT="$(digest)"
if [ -f "$DIR/.keygate-digest" ] && [ "$(cat "$DIR/.keygate-digest")" = "$WANT" ] &&
    [ -x "$DIR/bin/python" ] && [ -x "$LEGACY/bin/python" ]; then
    echo "dev-venv: $DIR is up to date"
    exit 0
fi

# Requirements (and the package's own dependencies): reinstalled only when their files changed
# (pip is slow even with nothing to do).
REQS="$(cd "$HERE" && cat requirements-dev.txt requirements-legacy.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if ! [ -f "$DIR/.requirements-digest" ] || [ "$(cat "$DIR/.requirements-digest")" != "$REQS" ] ||
    ! [ -x "$DIR/bin/python" ] || ! [ -x "$LEGACY/bin/python" ]; then
    echo "dev-venv: installing requirements into $DIR"
    "$PYTHON" -m venv "$DIR"
    "$DIR/bin/pip" install "${PIP_OPTS[@]}" -r "$HERE/requirements-dev.txt" "$HERE"
    rm -rf "$DIR/wheels"
    "$DIR/bin/pip" download "${PIP_OPTS[@]}" --no-deps -d "$DIR/wheels" \
        "urllib3==$("$DIR/bin/python" -c 'import urllib3; print(urllib3.__version__)')"
    echo "dev-venv: installing requirements-legacy.txt into $LEGACY"
    "$PYTHON" -m venv "$LEGACY"
    "$LEGACY/bin/pip" install "${PIP_OPTS[@]}" -r "$HERE/requirements-legacy.txt"
    echo "$REQS" >"$DIR/.requirements-digest"
fi

echo "dev-venv: installing the keygate package from $HERE (pip install ./clients/python)"
"$DIR/bin/pip" install "${PIP_OPTS[@]}" --no-deps --force-reinstall "$HERE"
"$DIR/bin/pip" check >/dev/null
echo "$WANT" >"$DIR/.keygate-digest"
echo "dev-venv: $DIR is ready"
