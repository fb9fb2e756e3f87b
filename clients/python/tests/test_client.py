"""keygate.Client against a real ``keygate serve``: every code, scopes, the cache, failures."""

from __future__ import annotations

import http.server
import logging
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest
from support import REFUSALS, Keygate, listening_socket, refused_url, wait_until

import keygate
from keygate import (
    Client,
    KeygateConfigurationError,
    KeygateError,
    KeygateUnavailable,
    KeyInfo,
    VerifyResult,
)


class FixedClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def client(server: Keygate, verify_key: str) -> Iterator[Client]:
    with Client(server.url, verify_key, timeout=10) as c:
        yield c


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    """Neither the exception's message, its repr nor its whole formatted chain holds a secret."""
    text = str(exc) + repr(exc) + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for secret in secrets:
        assert secret not in text


# --- every code --------------------------------------------------------------------------


def test_valid_key_gives_the_key_info(client: Client, client_key: Dict[str, Any]) -> None:
    result = client.verify(client_key["key"], ["orders:read"])
    assert result.valid and result.code == "VALID" and result.http_status == 200
    assert result.key == KeyInfo(
        id=client_key["id"],
        name="billing",
        owner="acct_42",
        scopes=("orders:read",),
        metadata={"plan": "pro"},
        expires_at=None,
        rotated_to=None,
    )
    assert client_key["key"] not in repr(result)


def test_expiry_is_a_datetime(server: Keygate, client: Client) -> None:
    when = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=123000)
    issued = server.create_key("dated", expires_at=when.isoformat().replace("+00:00", "Z"))
    result = client.verify(issued["key"])
    assert result.valid
    assert result.key is not None and result.key.expires_at == when


@pytest.mark.parametrize("reason", sorted(REFUSALS))
def test_each_refusal_code(
    client: Client, refused_key: Callable[[str], Tuple[str, str]], reason: str
) -> None:
    key, code = refused_key(reason)
    result = client.verify(key, ["orders:read"])
    assert (result.valid, result.code, result.http_status) == (False, code, 401)
    # keygate found the key, and says which, for every reason but these two
    assert (result.key is None) == (reason in ("malformed", "unknown"))
    assert result.detail and key not in result.detail


def test_missing_and_insufficient_scope(server: Keygate, client: Client) -> None:
    missing = client.verify("", ["orders:read"])
    assert (missing.valid, missing.code, missing.http_status, missing.key) == (False, "MISSING", 401, None)
    issued = server.create_key("reader", ["orders:read"])
    narrow = client.verify(issued["key"], ["orders:write"])
    assert (narrow.valid, narrow.code, narrow.http_status) == (False, "INSUFFICIENT_SCOPE", 403)
    assert narrow.key is not None and narrow.key.id == issued["id"]


def test_missing_key_is_answered_without_asking(server: Keygate, client: Client) -> None:
    before = server.verifications()
    assert client.verify("").code == "MISSING"
    assert server.verifications() == before


def test_keys_no_key_can_be_are_answered_without_asking(server: Keygate, client: Client) -> None:
    before = server.verifications()
    assert client.verify("k" * (keygate.MAX_KEY_LENGTH + 1)).code == "MALFORMED"
    assert client.verify("kg_\udc80surrogate").code == "MALFORMED"
    assert server.verifications() == before
    # the longest key that is sent is keygate's to judge
    assert client.verify("k" * keygate.MAX_KEY_LENGTH).code == "MALFORMED"
    assert server.verifications() == before + 2


def test_scopes(server: Keygate, client: Client) -> None:
    key = server.create_key("wide", ["orders:*", "users:read"])["key"]
    assert client.verify(key, ["orders:read"]).valid
    assert client.verify(key, ("orders:write", "users:read")).valid
    assert client.verify(key, iter(["users:read"])).valid
    denied = client.verify(key, ["orders:read", "users:write"])
    assert (denied.code, denied.http_status) == ("INSUFFICIENT_SCOPE", 403)
    with pytest.raises(TypeError, match="not one string"):
        client.verify(key, "orders:read")
    with pytest.raises(TypeError, match="must be a string"):
        client.verify(key, [42])  # type: ignore[list-item]


def test_a_rotated_key_names_its_successor(
    server: Keygate, client: Client, client_key: Dict[str, Any]
) -> None:
    rotated = server.admin("POST", f"/v1/keys/{client_key['id']}/rotate", {"grace_period": "1h"})
    assert rotated.status == 201, rotated
    result = client.verify(client_key["key"], ["orders:read"])
    assert result.valid
    assert result.key is not None and result.key.rotated_to == rotated.json()["id"]
    assert result.key.expires_at is not None


# --- answers this version does not know ---------------------------------------------------


def test_unknown_codes_and_fields_are_refusals_kept_whole() -> None:
    later = VerifyResult.from_json(
        {
            "valid": False,
            "code": "GEO_BLOCKED",
            "detail": "not from there",
            "limits": {"rpm": 10},
            "key": {
                "id": "key_1",
                "name": "n",
                "owner": None,
                "scopes": [],
                "metadata": {},
                "expires_at": None,
                "rotated_to": None,
                "plan": "pro",
            },
        }
    )
    assert (later.valid, later.code, later.http_status) == (False, "GEO_BLOCKED", 403)
    assert later.extra == {"limits": {"rpm": 10}}
    assert later.key is not None and later.key.extra == {"plan": "pro"}
    limited = VerifyResult.from_json({"valid": False, "code": "RATE_LIMITED", "detail": "slow down"})
    assert limited.http_status == 429
    # a contradiction is a refusal
    assert not VerifyResult.from_json({"valid": True, "code": "RATE_LIMITED", "detail": ""}).valid
    with pytest.raises(ValueError):
        VerifyResult.from_json({"valid": "yes", "code": "VALID"})


# --- the cache ----------------------------------------------------------------------------


def test_cache_hit_asks_nothing_until_the_ttl_passes(
    server: Keygate, verify_key: str, client_key: Dict[str, Any]
) -> None:
    clock = FixedClock()
    key = client_key["key"]
    with Client(server.url, verify_key, cache_ttl=1.0, clock=clock) as cached:
        before = server.verifications()
        assert cached.verify(key, ["orders:read"]).valid
        asked = server.verifications()
        assert asked == before + 2

        clock.advance(0.9)
        assert cached.verify(key, ["orders:read"]).valid
        assert server.verifications() == asked  # a hit: no request

        # another scope set is another entry
        assert cached.verify(key).valid
        assert server.verifications() == asked + 2

        revoked = server.admin("POST", f"/v1/keys/{client_key['id']}/revoke", {"reason": "leaked"})
        assert revoked.status == 200, revoked
        # within the TTL the revocation is not seen here: the documented staleness bound
        assert cached.verify(key, ["orders:read"]).valid
        clock.advance(0.1)
        refused = cached.verify(key, ["orders:read"])
        assert (refused.valid, refused.code) == (False, "REVOKED")


def test_refusals_are_never_cached(server: Keygate, verify_key: str, unknown_key: str) -> None:
    with Client(server.url, verify_key, cache_ttl=1.0, clock=FixedClock()) as cached:
        before = server.verifications()
        for _ in range(3):
            assert cached.verify(unknown_key).code == "NOT_FOUND"
        assert server.verifications() == before + 6


def test_cache_holds_no_key_and_is_bounded(server: Keygate, verify_key: str) -> None:
    keys = [server.create_key(f"k{i}")["key"] for i in range(3)]
    with Client(server.url, verify_key, cache_ttl=1.0, cache_size=2, clock=FixedClock()) as cached:
        for key in keys:
            assert cached.verify(key).valid
        entries = cached._cache._entries  # type: ignore[union-attr]
        assert len(entries) == 2
        held = repr(list(entries.items()))
        assert not any(key in held for key in keys)
        before = server.verifications()
        assert cached.verify(keys[2]).valid and cached.verify(keys[1]).valid
        assert server.verifications() == before  # the two most recent: hits
        assert cached.verify(keys[0]).valid
        assert server.verifications() == before + 2  # the first went out


def test_cache_never_outlives_the_key(server: Keygate, verify_key: str) -> None:
    soon = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    key = server.create_key("brief", expires_at=soon.isoformat().replace("+00:00", "Z"))["key"]
    # the clock stands still: only the key's own expiry can end the entry
    with Client(server.url, verify_key, cache_ttl=60, clock=FixedClock()) as cached:
        assert cached.verify(key).valid
        wait_until(lambda: cached.verify(key).code == "EXPIRED", "the cached key to expire", timeout=10)


def test_cost_always_asks(server: Keygate, verify_key: str, client_key: Dict[str, Any]) -> None:
    # keygate's usage counting must see every call that carries a cost: no cache for those.
    with Client(server.url, verify_key, cache_ttl=1.0, clock=FixedClock()) as cached:
        assert cached.verify(client_key["key"]).valid
        before = server.verifications()
        try:
            assert cached.verify(client_key["key"], cost=1).valid
        except KeygateConfigurationError as exc:
            assert "(400" in str(exc)  # a keygate from before `cost`: it refuses the field
        assert server.verifications() > before


# --- when keygate cannot be asked, or refuses us ------------------------------------------


def test_connection_refused_fails_closed(client_key: Dict[str, Any], verify_key: str) -> None:
    with (
        Client(refused_url(), verify_key, timeout=5) as down,
        pytest.raises(KeygateUnavailable, match="cannot be asked") as raised,
    ):
        down.verify(client_key["key"])
    assert "refused" in str(raised.value).lower()
    assert_no_secret(raised.value, client_key["key"], verify_key)


def test_a_server_that_does_not_answer_times_out(client_key: Dict[str, Any], verify_key: str) -> None:
    # The kernel accepts the connection into the backlog; nothing ever reads or answers.
    silent = listening_socket()
    try:
        port = silent.getsockname()[1]
        with (
            Client(f"http://127.0.0.1:{port}", verify_key, timeout=0.3) as hung,
            pytest.raises(KeygateUnavailable, match="(?i)timed out|timeout") as raised,
        ):
            hung.verify(client_key["key"])
        assert_no_secret(raised.value, client_key["key"], verify_key)
    finally:
        silent.close()


def test_a_wrong_verify_key_is_a_configuration_error(
    server: Keygate, client_key: Dict[str, Any], unknown_key: str
) -> None:
    with (
        Client(server.url, unknown_key) as wrong,
        pytest.raises(KeygateConfigurationError, match="refused our verify key \\(401") as raised,
    ):
        wrong.verify(client_key["key"])
    assert_no_secret(raised.value, client_key["key"], unknown_key)
    # a client key is no verify key: keygate says 403
    with (
        Client(server.url, client_key["key"]) as not_a_verifier,
        pytest.raises(KeygateConfigurationError, match="refused our verify key \\(403"),
    ):
        not_a_verifier.verify(client_key["key"])


def test_a_bad_request_or_url_is_a_configuration_error(
    server: Keygate, client: Client, verify_key: str, client_key: Dict[str, Any]
) -> None:
    with pytest.raises(KeygateConfigurationError, match="refused the request \\(400") as raised:
        client.verify(client_key["key"], ["Not A Scope!"])
    assert_no_secret(raised.value, client_key["key"], verify_key)
    with (
        Client(server.url + "/not-keygate", verify_key) as elsewhere,
        pytest.raises(KeygateConfigurationError, match="\\(404"),
    ):
        elsewhere.verify(client_key["key"])


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Stands for what may sit between us and keygate (a proxy, a load balancer): outside
    our control, so a stand-in is fair here."""

    answers: Dict[str, Any] = {}

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        status, content_type, body = self.answers[self.path]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_answers_that_are_not_keygates_fail_closed(
    proxy: str, verify_key: str, client_key: Dict[str, Any]
) -> None:
    _Proxy.answers = {
        "/html/v1/verify": (200, "text/html", b"<html>login</html>"),
        "/bad-gateway/v1/verify": (502, "text/html", b"<html>bad gateway</html>"),
        "/busy/v1/verify": (503, "application/problem+json", b'{"code":"UNAVAILABLE","detail":"store down"}'),
        "/huge/v1/verify": (200, "application/json", b" " * ((1 << 20) + 10)),
    }
    for path, message in [
        ("/html", "not a verify answer"),
        ("/bad-gateway", "answered 502"),
        ("/busy", "answered 503: UNAVAILABLE - store down"),
        ("/huge", "over 1048576 bytes"),
    ]:
        with (
            Client(proxy + path, verify_key) as behind,
            pytest.raises(KeygateUnavailable, match=message) as raised,
        ):
            behind.verify(client_key["key"])
            assert_no_secret(raised.value, client_key["key"], verify_key)


def test_errors_share_one_base() -> None:
    assert issubclass(KeygateUnavailable, KeygateError)
    assert issubclass(KeygateConfigurationError, KeygateError)


# --- concurrency, configuration, hygiene --------------------------------------------------


def test_threads_share_one_bounded_pool(server: Keygate, verify_key: str) -> None:
    keys = [server.create_key(f"t{i}", ["orders:read"])["key"] for i in range(4)]
    with Client(server.url, verify_key, pool_size=2, timeout=30) as shared:
        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = list(pool.map(lambda i: shared.verify(keys[i % 4], ["orders:read"]).code, range(200)))
        assert codes == ["VALID"] * 200
        # block=True: threads wait for one of the two connections instead of opening more
        assert shared._pool.num_connections <= 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"url": "http://user:pw@127.0.0.1:1"}, "without credentials"),
        ({"verify_key": ""}, "verify_key"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"cache_ttl": 61}, "cache_ttl"),
        ({"cache_size": 0}, "cache_size"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs: Dict[str, Any], message: str) -> None:
    args: Dict[str, Any] = {"url": "http://127.0.0.1:1", "verify_key": "kg_x", **kwargs}
    with pytest.raises(ValueError, match=message):
        Client(args.pop("url"), args.pop("verify_key"), **args)


def test_no_key_in_logs(
    server: Keygate, verify_key: str, client_key: Dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Client(server.url, verify_key) as c:
        assert c.verify(client_key["key"]).valid
        assert c.verify(client_key["key"], ["orders:write"]).code == "INSUFFICIENT_SCOPE"
    with Client(refused_url(), verify_key) as down, pytest.raises(KeygateUnavailable):
        down.verify(client_key["key"])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/verify" in logged  # urllib3's debug lines were captured
    assert client_key["key"] not in logged and verify_key not in logged
    # keygate's own log, at debug level, after everything this session asked it
    server_log = server.logs()
    assert "/v1/verify" in server_log
    assert client_key["key"] not in server_log and verify_key not in server_log


def test_key_from_authorization_reads_like_drf_api_key() -> None:
    read = keygate.key_from_authorization
    assert read("Api-Key abc.def") == "abc.def"
    assert read("api-key abc") == "abc"
    assert read("API-KEY abc def") == "abc def"
    for value in [None, "", "Api-Key", "Api-Key ", "Bearer abc", "Api-Keyabc", "Basic dXNlcjpwdw=="]:
        assert read(value) is None


@pytest.fixture(scope="module")
def drf_api_key_parser() -> Any:
    """drf-api-key's own KeyParser (its module needs Django's app registry)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework_api_key"]
        )
        django.setup()
    from rest_framework_api_key.permissions import KeyParser

    return KeyParser()


@pytest.mark.parametrize(
    "value",
    [
        "Api-Key abc.def",
        "api-key x",
        "Api-Key  two-spaces",
        "Api-Key",
        "Api-Key ",
        "Token abc",
        "",
        "Api-Key a b",
    ],
)
def test_header_parsing_matches_drf_api_key(drf_api_key_parser: Any, value: str) -> None:
    class Request:
        META = {"HTTP_AUTHORIZATION": value}

    assert keygate.key_from_authorization(value) == (
        drf_api_key_parser.get_from_authorization(Request()) or None
    )
