"""Django REST Framework: ``HasKeygateKey``, a drop-in for drf-api-key's ``HasAPIKey``.

    # settings.py
    KEYGATE = {
        "URL": "http://127.0.0.1:8080",
        "VERIFY_KEY": os.environ["KEYGATE_VERIFY_KEY"],   # a key with keygate:verify
    }

    # views.py
    from keygate.drf import HasKeygateKey, HasKeygateScope

    class PublicAPIView(APIView):
        permission_classes = [HasKeygateKey]

    class OrdersView(APIView):
        permission_classes = [HasKeygateScope("orders:read")]

        def get(self, request):
            key = request.auth          # keygate.KeyInfo: id, name, owner, scopes, metadata
            ...

The key is read where ``HasAPIKey`` reads it: ``Authorization: Api-Key <key>``, or the
``request.META`` name in ``KEYGATE["HEADER"]`` (default: drf-api-key's
``API_KEY_CUSTOM_HEADER``, when set). A refused key is answered 401 with
``WWW-Authenticate: Api-Key realm="keygate"`` (403 for ``INSUFFICIENT_SCOPE``, 429 for
limits) and a body ``{"detail": "...", "code": "REVOKED"}``. When keygate cannot be asked the
request is refused with 503 ``UNAVAILABLE`` unless ``KEYGATE["FAIL_OPEN"]`` is true. When
keygate refuses *our* verify key, the error propagates (a 500 and a traceback in the log):
that is a configuration error to fix, not a client to refuse. It composes like ``HasAPIKey``:
in ``HasKeygateKey | IsAuthenticated`` a signed-in user gets in without a key.

Settings (``settings.KEYGATE``; unknown names are an error):

- ``URL`` (required), ``VERIFY_KEY`` (required);
- ``TIMEOUT``: seconds for one verification, default 2;
- ``CACHE_TTL``: seconds a VALID answer is reused, default 0 (off); the staleness bound of a
  revocation in this process (see :class:`keygate.Client`);
- ``CACHE_SIZE`` (default 10,000), ``POOL_SIZE`` (keep-alive connections, default 10);
- ``FAIL_OPEN``: default ``False``; ``True`` lets requests through (``request.auth`` is
  ``None``, a warning is logged) while keygate cannot be asked;
- ``HEADER``: a ``request.META`` name such as ``"HTTP_X_API_KEY"`` to read the key from
  instead of ``Authorization``.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping, Optional, Tuple, Type

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.permissions import BasePermission

from ._integration import UNAVAILABLE_DETAIL, check_presented_key
from .client import (
    WWW_AUTHENTICATE,
    Client,
    KeygateUnavailable,
    VerifyResult,
    key_from_authorization,
)

__all__ = [
    "HasKeygateKey",
    "HasKeygateScope",
    "KeygateRefused",
    "KeygateUnavailableError",
    "get_client",
]

_DEFAULTS: Mapping[str, Any] = {
    "URL": None,
    "VERIFY_KEY": None,
    "TIMEOUT": 2.0,
    "CACHE_TTL": 0.0,
    "CACHE_SIZE": 10_000,
    "POOL_SIZE": 10,
    "FAIL_OPEN": False,
    "HEADER": None,
}


class _Configured:
    """The client and options built from ``settings.KEYGATE``, once per process."""

    def __init__(self) -> None:
        given = getattr(settings, "KEYGATE", None)
        if not isinstance(given, dict):
            raise ImproperlyConfigured("settings.KEYGATE must be a dict with URL and VERIFY_KEY")
        unknown = sorted(set(given) - set(_DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"settings.KEYGATE has unknown settings {unknown}; known: {sorted(_DEFAULTS)}"
            )
        options = {**_DEFAULTS, **given}
        if not options["URL"] or not options["VERIFY_KEY"]:
            raise ImproperlyConfigured("settings.KEYGATE needs URL and VERIFY_KEY")
        try:
            self.client = Client(
                options["URL"],
                options["VERIFY_KEY"],
                timeout=options["TIMEOUT"],
                cache_ttl=options["CACHE_TTL"],
                cache_size=options["CACHE_SIZE"],
                pool_size=options["POOL_SIZE"],
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"settings.KEYGATE: {exc}") from exc
        if not isinstance(options["FAIL_OPEN"], bool):
            raise ImproperlyConfigured("settings.KEYGATE['FAIL_OPEN'] must be True or False")
        self.fail_open: bool = options["FAIL_OPEN"]
        header = options["HEADER"] or getattr(settings, "API_KEY_CUSTOM_HEADER", None)
        if header is not None and not isinstance(header, str):
            raise ImproperlyConfigured("settings.KEYGATE['HEADER'] must be a request.META name")
        self.header: Optional[str] = header
        self.pid = os.getpid()


_configured: Optional[_Configured] = None
_configured_lock = threading.Lock()


def _get_configured() -> _Configured:
    """The process's configuration, built on first use. A forked child (gunicorn with
    ``--preload``) builds its own, so no two processes share a connection."""
    global _configured
    current = _configured
    if current is not None and current.pid == os.getpid():
        return current
    with _configured_lock:
        if _configured is None or _configured.pid != os.getpid():
            _configured = _Configured()
        return _configured


def _forget_configuration(*, setting: str, **_: Any) -> None:
    """Rebuild from settings after ``override_settings`` changes KEYGATE."""
    global _configured
    if setting in ("KEYGATE", "API_KEY_CUSTOM_HEADER"):
        with _configured_lock:
            old, _configured = _configured, None
        if old is not None and old.pid == os.getpid():
            old.client.close()


setting_changed.connect(_forget_configuration)


def get_client() -> Client:
    """The process's :class:`keygate.Client`, configured from ``settings.KEYGATE`` (for calls
    outside a permission class, e.g. checking another scope inside a view)."""
    return _get_configured().client


class KeygateRefused(APIException):
    """A key keygate refused, answered with its status and code: 401 (with
    ``WWW-Authenticate``), 403 or 429. The body is ``{"detail": ..., "code": ...}``."""

    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "the API key was refused"
    default_code = "NOT_FOUND"

    def __init__(self, result: VerifyResult) -> None:
        super().__init__(detail={"detail": result.detail, "code": result.code})
        self.status_code = result.http_status
        if self.status_code == status.HTTP_401_UNAUTHORIZED:
            # DRF's exception handler turns this into the WWW-Authenticate header.
            self.auth_header = WWW_AUTHENTICATE


class KeygateUnavailableError(APIException):
    """keygate could not be asked: 503 ``UNAVAILABLE`` (fail closed)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = UNAVAILABLE_DETAIL
    default_code = "UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__(detail={"detail": str(self.default_detail), "code": self.default_code})


class HasKeygateKey(BasePermission):
    """Allows a request whose key keygate says is ``VALID`` (for ``required_scopes``, if any)
    and sets ``request.auth`` to its :class:`keygate.KeyInfo`. Use :func:`HasKeygateScope`
    for scopes.

    ``has_permission`` answers ``True``/``False`` like ``HasAPIKey``, so ``HasKeygateKey |
    IsAuthenticated`` lets a signed-in user through without a key. When the refusal is this
    class's alone (it sits at the top of ``permission_classes`` and said no), DRF reads its
    ``message`` to build the 403, and that is where keygate's answer is raised instead: 401
    with ``WWW-Authenticate`` and the code, 403 ``INSUFFICIENT_SCOPE``, 503 ``UNAVAILABLE``.
    """

    #: Scopes the key must hold, every one of them.
    required_scopes: Tuple[str, ...] = ()

    def __init__(self) -> None:
        # DRF makes a new instance per request: this is the refusal of this request.
        self._refusal: Optional[APIException] = None

    def get_key(self, request: Any) -> Optional[str]:
        """The presented key, read as drf-api-key's ``KeyParser`` reads it."""
        header = _get_configured().header
        if header is not None:
            return request.META.get(header) or None
        return key_from_authorization(request.META.get("HTTP_AUTHORIZATION"))

    def has_permission(self, request: Any, view: Any) -> bool:
        configured = _get_configured()
        try:
            result = check_presented_key(
                configured.client,
                self.get_key(request),
                self.required_scopes,
                fail_open=configured.fail_open,
            )
        except KeygateUnavailable:
            self._refusal = KeygateUnavailableError()
            return False
        if result is None:  # keygate cannot be asked, and FAIL_OPEN lets the request in
            return True
        if not result.valid:
            self._refusal = KeygateRefused(result)
            return False
        request.auth = result.key
        return True

    @property
    def message(self) -> str:
        """Read by DRF's ``check_permissions`` only when this permission refused the request
        at the top level: raises the refusal, so the answer is keygate's rather than DRF's
        generic 403 (inside ``&``, ``|`` or ``~`` nothing reads it and ``False`` stands)."""
        if self._refusal is not None:
            raise self._refusal
        return str(KeygateRefused.default_detail)


def HasKeygateScope(*scopes: str) -> Type[HasKeygateKey]:  # noqa: N802 (reads as a class)
    """A permission class requiring a valid key that holds every one of ``scopes``:
    ``permission_classes = [HasKeygateScope("orders:read")]``. A key without them gets 403
    ``INSUFFICIENT_SCOPE``. Composes with DRF's ``&``, ``|`` and ``~`` like any class."""
    if not scopes or not all(isinstance(s, str) and s for s in scopes):
        raise TypeError("HasKeygateScope needs one or more scope strings")
    required = tuple(scopes)

    class Scoped(HasKeygateKey):
        required_scopes = required

    Scoped.__name__ = Scoped.__qualname__ = f"HasKeygateScope({', '.join(required)})"
    return Scoped
