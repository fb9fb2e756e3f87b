"""HasKeygateKey in a real Django + DRF project (tests/djangoapp) served by gunicorn, and
keygate.fastapi.require_key in a real FastAPI app (tests/fastapiapp.py) served by uvicorn, the
same cases for both, against the session's real ``keygate serve``; then what only DRF has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import pytest
from support import REFUSALS, AppServer, Keygate, Reply, refused_url, with_key

from keygate import WWW_AUTHENTICATE


@dataclass(frozen=True)
class Integration:
    """One framework's app and how its refusals read."""

    kind: str  # the server that runs it
    app: str
    #: the KEYGATE_HEADER value that reads the key from X-Api-Key
    x_api_key: str
    #: the code and the sentence in a refusal's body
    refusal: Callable[[Any], Tuple[str, str]]


INTEGRATIONS = {
    # DRF's body: {"detail": "...", "code": "REVOKED"}; HEADER is a request.META name
    "drf": Integration("gunicorn", "djangoapp.wsgi", "HTTP_X_API_KEY", lambda b: (b["code"], b["detail"])),
    # FastAPI's body: {"detail": {"code": "REVOKED", "message": "..."}}
    "fastapi": Integration(
        "uvicorn", "fastapiapp:app", "X-Api-Key", lambda b: (b["detail"]["code"], b["detail"]["message"])
    ),
}


@pytest.fixture(scope="module", params=sorted(INTEGRATIONS))
def integration(request: pytest.FixtureRequest) -> Integration:
    return INTEGRATIONS[request.param]


@pytest.fixture(scope="module")
def start(integration: Integration, start_app: Callable[..., AppServer]) -> Callable[..., AppServer]:
    """The app, configured by ``env`` over a correct keygate URL and verify key."""
    return lambda **env: start_app(integration.kind, integration.app, URLLIB3_LOG_LEVEL="DEBUG", **env)


@pytest.fixture(scope="module")
def app(start: Callable[..., AppServer]) -> AppServer:
    return start()


def assert_refused(integration: Integration, reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply
    said, sentence = integration.refusal(reply.json())
    assert said == code and sentence, reply
    if status == 401:
        assert reply.headers.get("www-authenticate") == WWW_AUTHENTICATE, reply
    else:
        assert "www-authenticate" not in reply.headers, reply


def test_valid_key_reaches_the_view_with_its_key_info(app: AppServer, client_key: Dict[str, Any]) -> None:
    for path in ["/api/public/", "/api/orders/"]:
        reply = app.get(path, with_key(client_key["key"]))
        assert reply.status == 200, reply
        assert reply.json()["auth"] == {
            "id": client_key["id"],
            "name": "billing",
            "owner": "acct_42",
            "scopes": ["orders:read"],
            "metadata": {"plan": "pro"},
        }


def test_missing_key_is_401_with_www_authenticate(integration: Integration, app: AppServer) -> None:
    for headers in [
        {},
        {"Authorization": "Bearer abc"},
        {"Authorization": "Api-Key"},
        {"Authorization": "Api-Key "},
    ]:
        assert_refused(integration, app.get("/api/public/", headers), 401, "MISSING")


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_refused_keys_are_401_with_keygates_code(
    integration: Integration, app: AppServer, refused_key: Callable[[str], Tuple[str, str]], reason: str
) -> None:
    key, code = refused_key(reason)
    for path in ["/api/public/", "/api/orders/"]:
        assert_refused(integration, app.get(path, with_key(key)), 401, code)


def test_wrong_scope_is_403(integration: Integration, server: Keygate, app: AppServer) -> None:
    key = server.create_key("writer", ["orders:write"])["key"]
    assert app.get("/api/public/", with_key(key)).status == 200
    assert_refused(integration, app.get("/api/orders/", with_key(key)), 403, "INSUFFICIENT_SCOPE")


def test_keygate_down_fails_closed_with_503(
    integration: Integration, start: Callable[..., AppServer], client_key: Dict[str, Any]
) -> None:
    down = start(KEYGATE_URL=refused_url())
    reply = down.get("/api/public/", with_key(client_key["key"]))
    assert_refused(integration, reply, 503, "UNAVAILABLE")
    assert integration.refusal(reply.json())[1] == "the API key cannot be checked right now"
    # no key presented: refused without asking keygate
    assert_refused(integration, down.get("/api/public/"), 401, "MISSING")
    logs = down.wait_for_log("refusing a request, its key cannot be checked")
    assert client_key["key"] not in logs


def test_fail_open_lets_requests_through_unverified(
    start: Callable[..., AppServer], client_key: Dict[str, Any]
) -> None:
    down = start(KEYGATE_URL=refused_url(), KEYGATE_FAIL_OPEN="1")
    reply = down.get("/api/orders/", with_key(client_key["key"]))
    assert reply.status == 200, reply
    assert reply.json()["auth"] is None
    logs = down.wait_for_log("letting a request through unverified (fail open)")
    assert client_key["key"] not in logs


def test_a_wrong_verify_key_is_a_loud_500(
    start: Callable[..., AppServer], client_key: Dict[str, Any], unknown_key: str
) -> None:
    misconfigured = start(KEYGATE_VERIFY_KEY=unknown_key)
    assert misconfigured.get("/api/public/", with_key(client_key["key"])).status == 500
    logs = misconfigured.wait_for_log("KeygateConfigurationError")
    assert "refused our verify key (401" in logs
    assert client_key["key"] not in logs and unknown_key not in logs


def test_custom_header(
    integration: Integration, start: Callable[..., AppServer], client_key: Dict[str, Any]
) -> None:
    custom = start(KEYGATE_HEADER=integration.x_api_key)
    reply = custom.get("/api/orders/", {"X-Api-Key": client_key["key"]})
    assert reply.status == 200 and reply.json()["auth"]["owner"] == "acct_42", reply
    # the Authorization header is not read any more
    assert_refused(integration, custom.get("/api/orders/", with_key(client_key["key"])), 401, "MISSING")


def test_no_key_in_any_log(server: Keygate, app: AppServer, client_key: Dict[str, Any]) -> None:
    assert app.get("/api/public/", with_key(client_key["key"])).status == 200
    # the access log and urllib3's debug lines are there, the key is not
    logs = app.wait_for_log("GET /api/public/")
    assert "POST /v1/verify" in logs
    assert client_key["key"] not in logs
    assert client_key["key"] not in server.logs()


# --- DRF only -----------------------------------------------------------------------------


def test_drf_composes_like_has_api_key(
    server: Keygate, start_app: Callable[..., AppServer], client_key: Dict[str, Any]
) -> None:
    django_app = start_app("gunicorn", "djangoapp.wsgi")
    # HasKeygateKey | HasPartnerHeader: either one lets the request in, as with HasAPIKey
    partner = {"X-Partner": "yes"}
    revoked = server.create_key("gone", ["orders:read"])
    server.cli("keys", "revoke", revoked["id"])
    for path in ["/api/key-or-partner/", "/api/partner-or-scope/"]:
        assert django_app.get(path, with_key(client_key["key"])).json()["auth"]["id"] == client_key["id"]
        assert django_app.get(path, partner).status == 200
        assert django_app.get(path, {**partner, **with_key(revoked["key"])}).status == 200
        # neither: DRF's own refusal for a composed permission (no code of ours to give)
        refused = django_app.get(path, with_key(revoked["key"]))
        assert refused.status in (401, 403) and "code" not in refused.json(), refused
    writer = server.create_key("writer", ["orders:write"])["key"]
    assert django_app.get("/api/partner-or-scope/", with_key(writer)).status in (401, 403)
