"""``keygate import drf-api-key`` on a database the real djangorestframework-api-key made
(tests/drf_fixture.py): every key drf-api-key accepted, keygate accepts; every one it refused,
keygate refuses, with the reason.

The command is keygate's (crates/keygate-server/src/cli/import.rs; docs/IMPORT.md). A
keygate binary without it fails every test here with ``ImportCommandMissing``.

What the tests hold the command to, beyond the brief:
- ``--json`` prints one JSON object with an integer ``imported``: keys this run wrote (0 when
  all were imported before; with ``--dry-run``, the keys it would write);
- the first successful check of a PBKDF2-hashed key is observable as one audit event of type
  ``key.rehashed`` for that key (REHASH_EVENT below; see the TODO there);
- ``key.imported`` events name the source table (the origin) and hold no key or hash (so not
  drf-api-key's ``id`` column either: it is ``<prefix>.<hashed_key>``);
- an imported row's extra columns are in the key's metadata under their column names
  (``plan``), and the owner column's value, as a string, is the key's owner.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import drf_fixture
import pytest
from support import AppServer, Keygate, http, keygate_cli, with_key

DEFAULT_TABLE = "rest_framework_api_key_apikey"
CUSTOM_TABLE = "billing_organizationapikey"

# The observable effect of the lazy rehash: an audit event of this type, once per key, on its
# first successful check (no key or hash in it).
REHASH_EVENT = "key.rehashed"


class ImportCommandMissing(Exception):
    """``keygate import drf-api-key`` does not exist in this keygate binary."""


pytestmark = [pytest.mark.drf_import]


def run_import(database: str, source: str, *args: str) -> Dict[str, Any]:
    """Runs the import; returns its --json output."""
    done = keygate_cli(database, "import", "drf-api-key", "--from", source, *args, "--json")
    if done.returncode == 2 and "unrecognized subcommand 'import'" in done.stderr:
        raise ImportCommandMissing(
            f"keygate import drf-api-key is not implemented yet ({done.stderr.strip()})"
        )
    assert done.returncode == 0, f"import exited {done.returncode}: {done.stderr}"
    answer = json.loads(done.stdout)
    assert isinstance(answer, dict) and isinstance(answer.get("imported"), int), done.stdout
    return answer


def all_keys(database: str) -> List[Dict[str, Any]]:
    done = keygate_cli(database, "keys", "list", "--status", "all", "--limit", "1000", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def audit(database: str, kind: Optional[str] = None) -> List[Dict[str, Any]]:
    args = ["audit", "--json"] + (["--type", kind] if kind else [])
    done = keygate_cli(database, *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    built = drf_fixture.build(tmp_path_factory.mktemp("drf"), os.environ.get("KEYGATE_TEST_POSTGRES"))
    yield built
    if built["postgres"]:
        drf_fixture.drop_postgres_schema(built["postgres"]["server"], built["postgres"]["schema"])


def rows(manifest: Dict[str, Any], table: str) -> List[Dict[str, Any]]:
    return [k for k in manifest["keys"] if k["table"] == table and k["state"] != "never issued"]


class Target:
    """A fresh keygate database to import into, on the backend under test."""

    def __init__(self, backend: str, workdir: Path, manifest: Dict[str, Any]) -> None:
        self.schema: Optional[str] = None
        if backend == "sqlite":
            self.database = f"sqlite://{workdir / 'keygate.db'}"
            self.source = manifest["sqlite"]
        else:
            server = os.environ["KEYGATE_TEST_POSTGRES"]
            self.schema = f"kgtest_py_{secrets.token_hex(4)}"
            import psycopg

            with psycopg.connect(server, connect_timeout=10, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA "{self.schema}"')
            separator = "&" if "?" in server else "?"
            self.database = f"{server}{separator}options=-csearch_path%3D{self.schema}"
            self.source = manifest["postgres"]["url"]
        self.workdir = workdir
        self.imported = False
        # a key of keygate's own, made before the import: the verifier
        done = keygate_cli(
            self.database, "keys", "create", "--name", "verifier", "--scope", "keygate:verify", "--json"
        )
        assert done.returncode == 0, done.stderr
        self.verify_key: str = json.loads(done.stdout)["key"]

    def ensure_imported(self) -> None:
        """Both tables imported (once; the tests sharing this target may run in any order)."""
        if not self.imported:
            run_import(self.database, self.source)
            run_import(self.database, self.source, *CUSTOM_IMPORT)
            self.imported = True

    def drop(self) -> None:
        if self.schema:
            drf_fixture.drop_postgres_schema(os.environ["KEYGATE_TEST_POSTGRES"], self.schema)


CUSTOM_IMPORT = ("--table", CUSTOM_TABLE, "--owner-column", "organization_id")


def make_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, manifest: Dict[str, Any]
) -> Iterator[Target]:
    if request.param == "postgres" and not manifest["postgres"]:
        pytest.skip("KEYGATE_TEST_POSTGRES is not set: the PostgreSQL import is not tested")
    made = Target(request.param, tmp_path_factory.mktemp(f"import-{request.param}"), manifest)
    yield made
    made.drop()


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, manifest: Dict[str, Any]
) -> Iterator[Target]:
    """A keygate database nothing was imported into, for this test alone."""
    yield from make_target(request, tmp_path_factory, manifest)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, manifest: Dict[str, Any]
) -> Iterator[Target]:
    """A keygate database shared by the module's tests; ``ensure_imported`` before use."""
    yield from make_target(request, tmp_path_factory, manifest)


def verify(server: Keygate, verify_key: str, key: str) -> Dict[str, Any]:
    reply = http(
        "POST",
        server.url + "/v1/verify",
        headers={"Authorization": f"Api-Key {verify_key}"},
        body={"key": key, "scopes": []},
        timeout=120,
    )
    assert reply.status == 200, reply
    return reply.json()


def test_dry_run_writes_nothing(fresh_target: Target) -> None:
    target = fresh_target
    before_keys, before_audit = all_keys(target.database), audit(target.database)
    run_import(target.database, target.source, "--dry-run")
    run_import(target.database, target.source, *CUSTOM_IMPORT, "--dry-run")
    assert all_keys(target.database) == before_keys
    assert audit(target.database) == before_audit


def test_import_then_reimport_imports_nothing_twice(fresh_target: Target, manifest: Dict[str, Any]) -> None:
    target = fresh_target
    source_digest = file_digest(manifest["sqlite"])
    before = len(all_keys(target.database))
    default_rows, custom_rows = rows(manifest, DEFAULT_TABLE), rows(manifest, CUSTOM_TABLE)

    assert run_import(target.database, target.source)["imported"] == len(default_rows)
    assert run_import(target.database, target.source, *CUSTOM_IMPORT)["imported"] == len(custom_rows)
    assert len(all_keys(target.database)) == before + len(default_rows) + len(custom_rows)

    assert run_import(target.database, target.source)["imported"] == 0
    assert run_import(target.database, target.source, *CUSTOM_IMPORT)["imported"] == 0
    assert run_import(target.database, target.source, "--dry-run")["imported"] == 0
    assert len(all_keys(target.database)) == before + len(default_rows) + len(custom_rows)
    # the Django database is read, never written (3.x would have rewritten PBKDF2 hashes)
    assert file_digest(manifest["sqlite"]) == source_digest


def test_every_key_answers_as_drf_api_key_did(target: Target, manifest: Dict[str, Any]) -> None:
    target.ensure_imported()
    server = Keygate(target.workdir, target.database, bootstrap=False)
    try:
        for entry in manifest["keys"]:
            answer = verify(server, target.verify_key, entry["key"])
            where = f"{entry['name']!r} ({entry['hasher']}, {entry['state']})"
            assert answer["valid"] == entry["drf_accepts"], f"{where}: {answer}"
            assert answer["code"] == entry["expected_code"], f"{where}: {answer}"
            if entry["state"] == "never issued":
                assert "key" not in answer, where
                continue
            key = answer["key"]
            assert key["name"] == entry["name"], where
            if entry["expiry_date"] is None:
                assert key["expires_at"] is None, where
            else:
                imported = datetime.fromisoformat(key["expires_at"].replace("Z", "+00:00"))
                assert abs(imported - datetime.fromisoformat(entry["expiry_date"])).total_seconds() < 0.001, (
                    where
                )
            if entry["table"] == CUSTOM_TABLE:
                assert key["owner"] == str(entry["organization_id"]), where
                assert key["metadata"].get("plan") == entry["plan"], where
            else:
                assert key["owner"] is None, where
        logs = server.logs()
    finally:
        server.stop()
    for entry in manifest["keys"]:
        assert entry["key"] not in logs and entry.get("hashed_key", entry["key"]) not in logs


def test_imported_audit_events_name_their_origin(target: Target, manifest: Dict[str, Any]) -> None:
    target.ensure_imported()
    events = audit(target.database, "key.imported")
    imported_rows = rows(manifest, DEFAULT_TABLE) + rows(manifest, CUSTOM_TABLE)
    assert len(events) == len(imported_rows)
    assert len({e["key_id"] for e in events}) == len(imported_rows)
    text = json.dumps(events)
    assert sum(DEFAULT_TABLE in json.dumps(e) for e in events) == len(rows(manifest, DEFAULT_TABLE))
    assert sum(CUSTOM_TABLE in json.dumps(e) for e in events) == len(rows(manifest, CUSTOM_TABLE))
    for entry in imported_rows:
        assert entry["key"] not in text and entry["hashed_key"] not in text
        assert entry["hashed_key"].rsplit("$", 1)[-1] not in text


def rehash_events(database: str, key_id: str) -> List[Dict[str, Any]]:
    return [e for e in audit(database, REHASH_EVENT) if e["key_id"] == key_id]


def test_a_pbkdf2_key_is_rehashed_once_on_first_use(fresh_target: Target, manifest: Dict[str, Any]) -> None:
    target = fresh_target
    target.ensure_imported()
    pbkdf2 = [k for k in rows(manifest, DEFAULT_TABLE) if k["hasher"] == "pbkdf2_sha256"]
    # one on Django 4.2's iterations, one on Django 3.2's: each hash names its own count
    chosen = [
        next(k for k in pbkdf2 if "$600000$" in k["hashed_key"] and k["drf_accepts"]),
        next(k for k in pbkdf2 if "$260000$" in k["hashed_key"]),
    ]
    for done, entry in enumerate(chosen):
        wrong = entry["key"].split(".")[0] + "." + "x" * 32
        server = Keygate(target.workdir, target.database, bootstrap=False)
        try:
            # a wrong secret under the key's prefix is no key, and rehashes nothing
            assert verify(server, target.verify_key, wrong)["code"] == "NOT_FOUND"
            assert len(audit(target.database, REHASH_EVENT)) == done
            first = verify(server, target.verify_key, entry["key"])
            assert first["code"] == "VALID"
            events = rehash_events(target.database, first["key"]["id"])
            assert len(events) == 1, events
            assert entry["key"] not in json.dumps(events) and entry["hashed_key"] not in json.dumps(events)
            assert verify(server, target.verify_key, entry["key"])["code"] == "VALID"
        finally:
            server.stop()
        # a restart forgets every cache: the key now verifies by its SHA-256 index, and the
        # wrong secret is still refused
        server = Keygate(target.workdir, target.database, bootstrap=False)
        try:
            assert verify(server, target.verify_key, entry["key"])["code"] == "VALID"
            assert verify(server, target.verify_key, wrong)["code"] == "NOT_FOUND"
        finally:
            server.stop()
        assert len(rehash_events(target.database, first["key"]["id"])) == 1
    # the refused PBKDF2 keys stay refused, with their reasons
    server = Keygate(target.workdir, target.database, bootstrap=False)
    try:
        for entry in pbkdf2:
            assert verify(server, target.verify_key, entry["key"])["code"] == entry["expected_code"]
    finally:
        server.stop()


def test_has_keygate_key_accepts_the_imported_drf_keys(target: Target, manifest: Dict[str, Any]) -> None:
    """The migration end to end: the client's drf-api-key key, unchanged, through HasKeygateKey."""
    target.ensure_imported()
    server = Keygate(target.workdir, target.database, bootstrap=False)
    app = AppServer(
        "gunicorn", "djangoapp.wsgi", {"KEYGATE_URL": server.url, "KEYGATE_VERIFY_KEY": target.verify_key}
    )
    try:
        for entry in rows(manifest, DEFAULT_TABLE):
            reply = app.get("/api/public/", with_key(entry["key"]))
            if entry["drf_accepts"]:
                assert reply.status == 200 and reply.json()["auth"]["name"] == entry["name"], reply
            else:
                assert reply.status == 401 and reply.json()["code"] == entry["expected_code"], reply
    finally:
        app.stop()
        server.stop()
