"""A Django database made by the real djangorestframework-api-key, and what it says of each key.

    python tests/drf_fixture.py OUTDIR [--postgres URL]    # prints OUTDIR/manifest.json

The database is made the way the people migrating to keygate made theirs: drf-api-key 2.3
(Django 4.2, the venv DIR/legacy that dev-venv.sh makes) migrates it and issues keys hashed by
Django's PBKDF2 hasher (600,000 iterations; one with Django 3.2's 260,000); then drf-api-key 3.1
(Django 5.2, this venv) upgrades the same file and issues SHA-512 keys. Both make active,
revoked, expired and later-expiring keys, in ``rest_framework_api_key_apikey`` and in a custom
model's table (``billing_organizationapikey``: ``AbstractAPIKey`` plus an ``organization``
foreign key and a ``plan`` column).

The manifest gives every plaintext key and whether drf-api-key 3.1's
``Model.objects.is_valid(key)`` accepts it, computed on a *copy* of the database (3.x rewrites a
PBKDF2 hash on a successful check; the database to import keeps the old ones), plus probes that
were never issued (a known prefix with a wrong secret, an unknown prefix). With ``--postgres``
the same rows are also loaded (dumpdata/loaddata) into a fresh schema ``kgtest_drf_*``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sqlite3
import string
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import quote, unquote, urlsplit

HERE = Path(__file__).resolve().parent
PROJECT = HERE / "drf_project"
ALPHABET = string.ascii_letters + string.digits  # Django's get_random_string


def legacy_python() -> Path:
    """The drf-api-key 2.x venv's python: ``KEYGATE_LEGACY_PYTHON``, else dev-venv.sh's."""
    path = Path(os.environ.get("KEYGATE_LEGACY_PYTHON", Path(sys.prefix) / "legacy" / "bin" / "python"))
    if not path.is_file():
        raise RuntimeError(f"no drf-api-key 2.x venv at {path}: run clients/python/dev-venv.sh")
    return path


def _run(python: Path, args: List[str], env: Dict[str, str], stdin: Optional[str] = None) -> str:
    done = subprocess.run(
        [str(python), str(PROJECT / "keys.py"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        cwd=PROJECT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python} keys.py {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def _expected_code(state: str) -> str:
    return {
        "active": "VALID",
        "expires later": "VALID",
        "revoked": "REVOKED",
        "revoked+expired": "REVOKED",
        "expired": "EXPIRED",
        "never issued": "NOT_FOUND",
    }[state]


def _random(n: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(n))


def _probes(keys: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Keys nobody was given: a real prefix with another secret (one per hasher), a new prefix."""
    probes = []
    for hasher in ("pbkdf2_sha256", "sha512"):
        real = next(k for k in keys if k["hasher"] == hasher and k["state"] == "active")
        prefix = real["key"].split(".", 1)[0]
        probes.append(
            {
                "key": f"{prefix}.{_random(32)}",
                "table": real["table"],
                "state": "never issued",
                "name": f"wrong secret for {real['name']}",
                "hasher": hasher,
            }
        )
    probes.append(
        {
            "key": f"{_random(8)}.{_random(32)}",
            "table": "rest_framework_api_key_apikey",
            "state": "never issued",
            "name": "unknown prefix",
            "hasher": None,
        }
    )
    return probes


def _postgres_schema(url: str, schema: str) -> Dict[str, Any]:
    """Makes ``schema`` in the database at ``url``; returns Django's settings for it."""
    import psycopg  # the dev venv has it

    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    parts = urlsplit(url)
    return {
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or 5432),
        "SCHEMA": schema,
    }


def drop_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def build(workdir: Path, postgres_url: Optional[str] = None) -> Dict[str, Any]:
    """Makes the database(s) in ``workdir`` and returns the manifest (also written to
    ``workdir/manifest.json``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "drf.db"
    env = {"DRF_FIXTURE_DB": str(db)}
    keys = json.loads(_run(legacy_python(), ["make", "legacy"], env))
    keys += json.loads(_run(Path(sys.executable), ["make", "current"], env))
    every = keys + _probes(keys)

    copy = workdir / "drf-copy-for-is-valid.db"
    shutil.copyfile(db, copy)
    accepted = json.loads(
        _run(Path(sys.executable), ["check"], {"DRF_FIXTURE_DB": str(copy)}, json.dumps(every))
    )
    for entry, accepts in zip(every, accepted):
        entry["drf_accepts"] = accepts
        entry["expected_code"] = _expected_code(entry["state"])
        if accepts != (entry["expected_code"] == "VALID"):
            raise RuntimeError(f"drf-api-key's answer for {entry['name']!r} is not what the fixture made")

    # the database to import still holds every PBKDF2 hash as 2.x wrote it
    with sqlite3.connect(db) as conn:
        held = {
            row[0]
            for table in ("rest_framework_api_key_apikey", "billing_organizationapikey")
            for row in conn.execute(f"SELECT hashed_key FROM {table}")
        }  # noqa: S608
    assert all(k["hashed_key"] in held for k in keys), "drf.db lost a hash it was made with"
    assert sum(h.startswith("pbkdf2_sha256$") for h in held) == sum(
        k["hasher"] == "pbkdf2_sha256" for k in keys
    )

    manifest: Dict[str, Any] = {"sqlite": str(db), "postgres": None, "keys": every}
    if postgres_url:
        schema = f"kgtest_drf_{secrets.token_hex(4)}"
        pg = _postgres_schema(postgres_url, schema)
        _run(Path(sys.executable), ["copy-to-pg"], {**env, "DRF_FIXTURE_PG": json.dumps(pg)})
        separator = "&" if "?" in postgres_url else "?"
        manifest["postgres"] = {
            "url": f"{postgres_url}{separator}options={quote(f'-csearch_path={schema}', safe='')}",
            "schema": schema,
            "server": postgres_url,
        }
    (workdir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--postgres", help="also load the keys into a fresh schema of this database")
    args = parser.parse_args()
    build(args.outdir, args.postgres)
    print(args.outdir / "manifest.json")


if __name__ == "__main__":
    main()
