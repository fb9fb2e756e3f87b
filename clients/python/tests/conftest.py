"""Session fixtures: one real ``keygate serve`` (temp SQLite file, port 0) for the session,
and keys issued with the real CLI."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from support import REFUSALS, AppServer, Keygate, keygate_cli


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keygate]:
    server = Keygate(tmp_path_factory.mktemp("keygate"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def verify_key(server: Keygate) -> str:
    """A key holding keygate:verify: what a service hands the client."""
    return server.create_key("orders service", ["keygate:verify"])["key"]


@pytest.fixture(scope="session")
def unknown_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A well-formed key (right prefix, checksum) issued by another keygate database."""
    db = tmp_path_factory.mktemp("other") / "other.db"
    done = keygate_cli(f"sqlite://{db}", "keys", "create", "--name", "elsewhere", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["key"]


@pytest.fixture
def client_key(server: Keygate) -> Dict[str, Any]:
    """A fresh key for one test: scope orders:read, an owner and metadata."""
    return server.create_key("billing", ["orders:read"], owner="acct_42", metadata={"plan": "pro"})


@pytest.fixture
def refused_key(server: Keygate, unknown_key: str) -> Callable[[str], Tuple[str, str]]:
    """``refused_key(reason)``: a key (scope orders:read) that keygate refuses for ``reason``
    (one of REFUSALS), and the code it answers."""

    def make(reason: str) -> Tuple[str, str]:
        if reason == "malformed":
            return "kg_not-a-key", REFUSALS[reason]
        if reason == "unknown":
            return unknown_key, REFUSALS[reason]
        if reason == "expired":
            return server.create_key("old", ["orders:read"], expires_at="2020-01-01T00:00:00Z")[
                "key"
            ], "EXPIRED"
        issued = server.create_key(reason, ["orders:read"])
        server.cli("keys", {"revoked": "revoke", "disabled": "disable"}[reason], issued["id"])
        return issued["key"], REFUSALS[reason]

    return make


@pytest.fixture(scope="module")
def start_app(server: Keygate, verify_key: str) -> Iterator[Callable[..., AppServer]]:
    """``start_app(kind, app, **env)``: the app served by gunicorn or uvicorn, configured by
    ``env`` over the session keygate's KEYGATE_URL and KEYGATE_VERIFY_KEY; each one started is
    stopped when the module is done."""
    started: List[AppServer] = []

    def start(kind: str, app: str, **env: str) -> AppServer:
        served = AppServer(kind, app, {"KEYGATE_URL": server.url, "KEYGATE_VERIFY_KEY": verify_key, **env})
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()
