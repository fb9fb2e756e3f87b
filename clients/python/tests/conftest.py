"""Session fixtures: one real ``keygate serve`` (temp SQLite file, port 0) for the session,
and keys issued with the real CLI."""

from __future__ import annotations

import json
import subprocess
from typing import Any, Dict, Iterator

import pytest
from support import Keygate, clean_env, keygate_binary


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
    done = subprocess.run(
        [
            str(keygate_binary()),
            "--database",
            f"sqlite://{db}",
            "keys",
            "create",
            "--name",
            "elsewhere",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=True,
    )
    return json.loads(done.stdout)["key"]


@pytest.fixture
def client_key(server: Keygate) -> Dict[str, Any]:
    """A fresh key for one test: scope orders:read, an owner and metadata."""
    return server.create_key("billing", ["orders:read"], owner="acct_42", metadata={"plan": "pro"})
