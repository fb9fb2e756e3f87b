"""keygate.fastapi.require_key in a real FastAPI app (tests/fastapiapp.py) served by uvicorn,
against the session's real ``keygate serve``."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import pytest
from support import REFUSALS, AppServer, Keygate, Reply, refused_url, with_key

from keygate import WWW_AUTHENTICATE


@pytest.fixture(scope="module")
def start_fastapi(start_app: Callable[..., AppServer]) -> Callable[..., AppServer]:
    """The app, configured by ``env`` over a correct keygate URL and verify key."""
    return lambda **env: start_app("uvicorn", "fastapiapp:app", **env)


@pytest.fixture(scope="module")
def fastapi_app(start_fastapi: Callable[..., AppServer]) -> AppServer:
    return start_fastapi()


def assert_refused(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    detail = reply.json()["detail"]
    assert detail["code"] == code and detail["message"], reply
    if status == 401:
        assert reply.headers.get("www-authenticate") == WWW_AUTHENTICATE, reply
    else:
        assert "www-authenticate" not in reply.headers, reply


def test_valid_key_is_handed_to_the_endpoint(fastapi_app: AppServer, client_key: Dict[str, Any]) -> None:
    for path in ["/api/public/", "/api/orders/"]:
        reply = fastapi_app.get(path, with_key(client_key["key"]))
        assert reply.status == 200, reply
        assert reply.json()["auth"] == {
            "id": client_key["id"],
            "name": "billing",
            "owner": "acct_42",
            "scopes": ["orders:read"],
            "metadata": {"plan": "pro"},
        }


def test_missing_key_is_401(fastapi_app: AppServer) -> None:
    for headers in [{}, {"Authorization": "Bearer abc"}, {"Authorization": "Api-Key"}]:
        assert_refused(fastapi_app.get("/api/public/", headers), 401, "MISSING")


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_refused_keys_are_401_with_keygates_code(
    fastapi_app: AppServer, refused_key: Callable[[str], Tuple[str, str]], reason: str
) -> None:
    key, code = refused_key(reason)
    for path in ["/api/public/", "/api/orders/"]:
        assert_refused(fastapi_app.get(path, with_key(key)), 401, code)


def test_wrong_scope_is_403(server: Keygate, fastapi_app: AppServer) -> None:
    key = server.create_key("writer", ["orders:write"])["key"]
    assert fastapi_app.get("/api/public/", with_key(key)).status == 200
    assert_refused(fastapi_app.get("/api/orders/", with_key(key)), 403, "INSUFFICIENT_SCOPE")


def test_keygate_down_fails_closed_with_503(
    start_fastapi: Callable[..., AppServer], client_key: Dict[str, Any]
) -> None:
    down = start_fastapi(KEYGATE_URL=refused_url())
    assert_refused(down.get("/api/public/", with_key(client_key["key"])), 503, "UNAVAILABLE")
    assert_refused(down.get("/api/public/"), 401, "MISSING")
    assert client_key["key"] not in down.wait_for_log("refusing a request, its key cannot be checked")


def test_fail_open(start_fastapi: Callable[..., AppServer], client_key: Dict[str, Any]) -> None:
    down = start_fastapi(KEYGATE_URL=refused_url(), KEYGATE_FAIL_OPEN="1")
    reply = down.get("/api/orders/", with_key(client_key["key"]))
    assert reply.status == 200 and reply.json()["auth"] is None, reply


def test_a_wrong_verify_key_is_a_loud_500(
    start_fastapi: Callable[..., AppServer], client_key: Dict[str, Any], unknown_key: str
) -> None:
    misconfigured = start_fastapi(KEYGATE_VERIFY_KEY=unknown_key)
    assert misconfigured.get("/api/public/", with_key(client_key["key"])).status == 500
    logs = misconfigured.wait_for_log("KeygateConfigurationError")
    assert "refused our verify key (401" in logs
    assert client_key["key"] not in logs and unknown_key not in logs


def test_custom_header(start_fastapi: Callable[..., AppServer], client_key: Dict[str, Any]) -> None:
    custom = start_fastapi(KEYGATE_HEADER="X-Api-Key")
    assert custom.get("/api/orders/", {"X-Api-Key": client_key["key"]}).status == 200
    assert_refused(custom.get("/api/orders/", with_key(client_key["key"])), 401, "MISSING")
