"""keygate.drf's settings, checked in this process (the permission itself is tested in a real
Django project under gunicorn: test_drf.py)."""

from __future__ import annotations

import os
from typing import Any, Dict

import django
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework_api_key"]
    )
    django.setup()

from keygate import drf  # noqa: E402  (needs the settings above)

GOOD: Dict[str, Any] = {"URL": "http://127.0.0.1:1", "VERIFY_KEY": "kg_verifier"}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (None, "must be a dict"),
        ({"URL": "http://127.0.0.1:1"}, "needs URL and VERIFY_KEY"),
        ({**GOOD, "TIMEOUTT": 1}, "unknown settings \\['TIMEOUTT'\\]"),
        ({**GOOD, "TIMEOUT": -1}, "timeout must be a positive number"),
        ({**GOOD, "CACHE_TTL": 3600}, "cache_ttl must be between 0"),
        ({**GOOD, "URL": "127.0.0.1:8080"}, "http:// or https://"),
        ({**GOOD, "FAIL_OPEN": "no"}, "FAIL_OPEN'\\] must be True or False"),
        ({**GOOD, "HEADER": 42}, "request.META name"),
    ],
)
def test_bad_settings_are_improperly_configured(given: Any, message: str) -> None:
    with override_settings(KEYGATE=given), pytest.raises(ImproperlyConfigured, match=message):
        drf.get_client()


def test_settings_reach_the_client_and_changes_are_seen() -> None:
    with override_settings(KEYGATE={**GOOD, "TIMEOUT": 0.5}):
        first = drf.get_client()
        assert first.url == "http://127.0.0.1:1" and first._timeout == 0.5
        assert drf.get_client() is first  # one client per process
    with override_settings(KEYGATE={**GOOD, "URL": "http://127.0.0.1:2"}):
        assert drf.get_client().url == "http://127.0.0.1:2"


def test_the_custom_header_defaults_to_drf_api_keys_setting() -> None:
    with override_settings(KEYGATE=GOOD, API_KEY_CUSTOM_HEADER="HTTP_X_API_KEY"):
        assert drf._get_configured().header == "HTTP_X_API_KEY"
    with override_settings(KEYGATE={**GOOD, "HEADER": "HTTP_X_KEY"}, API_KEY_CUSTOM_HEADER="HTTP_X_API_KEY"):
        assert drf._get_configured().header == "HTTP_X_KEY"
    with override_settings(KEYGATE=GOOD):
        assert drf._get_configured().header is None


def test_a_forked_child_makes_its_own_client() -> None:
    # gunicorn --preload: a client made before the fork must not be shared by the workers
    with override_settings(KEYGATE=GOOD):
        parent = drf._get_configured()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave at once (no pytest teardown here)
            child = drf._get_configured()
            os.write(
                write, b"own" if child is not parent and child.client is not parent.client else b"shared"
            )
            os._exit(0)
        os.close(write)
        answer = os.read(read, 16)
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        assert answer == b"own"
        assert drf._get_configured() is parent


def test_has_keygate_scope_needs_scopes() -> None:
    assert drf.HasKeygateScope("orders:read", "users:read").required_scopes == ("orders:read", "users:read")
    assert drf.HasKeygateScope("orders:read").__name__ == "HasKeygateScope(orders:read)"
    for bad in [(), ("",), (42,)]:
        with pytest.raises(TypeError, match="one or more scope strings"):
            drf.HasKeygateScope(*bad)
