"""keygate for Python: verify API keys with a keygate server.

    from keygate import Client

    keygate = Client("http://127.0.0.1:8080", verify_key)   # a key with keygate:verify
    result = keygate.verify(presented_key, ["orders:read"])
    if result.valid:
        print(result.key.id, result.key.owner, result.key.scopes)
    else:
        print(result.code, result.http_status)                # e.g. REVOKED 401

Django REST Framework: :mod:`keygate.drf` (``HasKeygateKey``, ``HasKeygateScope``).
FastAPI: :mod:`keygate.fastapi` (``require_key``).
"""

from ._version import __version__
from .client import (
    MAX_CACHE_TTL,
    MAX_KEY_LENGTH,
    WWW_AUTHENTICATE,
    Client,
    KeygateConfigurationError,
    KeygateError,
    KeygateUnavailable,
    KeyInfo,
    VerifyResult,
    key_from_authorization,
)

__all__ = [
    "__version__",
    "MAX_CACHE_TTL",
    "MAX_KEY_LENGTH",
    "WWW_AUTHENTICATE",
    "Client",
    "KeyInfo",
    "KeygateConfigurationError",
    "KeygateError",
    "KeygateUnavailable",
    "VerifyResult",
    "key_from_authorization",
]
