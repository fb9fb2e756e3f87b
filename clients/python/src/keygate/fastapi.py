"""FastAPI: a dependency that verifies the request's key with keygate.

    from fastapi import Depends, FastAPI
    from keygate import Client, KeyInfo
    from keygate.fastapi import require_key

    keygate = Client("http://127.0.0.1:8080", verify_key)
    app = FastAPI()

    @app.get("/api/orders/")
    def orders(key: KeyInfo = Depends(require_key(keygate, ["orders:read"]))):
        return {"owner": key.owner}

The key is read from ``Authorization: Api-Key <key>`` (or from the header named by
``header=``, e.g. ``"X-Api-Key"``). A refused key is answered 401 with
``WWW-Authenticate: Api-Key realm="keygate"`` (403 for ``INSUFFICIENT_SCOPE``, 429 for
limits); keygate unreachable is 503. The body is FastAPI's ``{"detail": {"code": "REVOKED",
"message": "..."}}``. With ``fail_open=True`` a request is let through while keygate cannot be
asked and the dependency gives ``None``. When keygate refuses our own verify key,
:class:`keygate.KeygateConfigurationError` propagates (a 500): a configuration error to fix.

The dependency is a plain function, so FastAPI runs it in its thread pool: the blocking
call to keygate never stalls the event loop.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from fastapi import HTTPException, Request

from ._integration import UNAVAILABLE_DETAIL, check_presented_key
from .client import (
    WWW_AUTHENTICATE,
    Client,
    KeygateUnavailable,
    KeyInfo,
    VerifyResult,
    key_from_authorization,
)

__all__ = ["require_key"]


def _refusal(result: VerifyResult) -> HTTPException:
    status = result.http_status
    headers = {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else None
    return HTTPException(
        status_code=status,
        detail={"code": result.code, "message": result.detail},
        headers=headers,
    )


def require_key(
    client: Client,
    scopes: Iterable[str] = (),
    *,
    header: Optional[str] = None,
    fail_open: bool = False,
) -> Callable[[Request], Optional[KeyInfo]]:
    """A dependency giving the verified key's :class:`keygate.KeyInfo`, or refusing the
    request. ``scopes``: every one must be held. ``header``: read the key from this header
    instead of ``Authorization: Api-Key``. ``fail_open``: let requests through (``None``)
    while keygate cannot be asked."""
    if isinstance(scopes, str):
        raise TypeError("scopes must be a list of scopes, not one string")
    required = tuple(scopes)

    def keygate_key(request: Request) -> Optional[KeyInfo]:
        if header is not None:
            key = request.headers.get(header) or None
        else:
            key = key_from_authorization(request.headers.get("authorization"))
        try:
            result = check_presented_key(client, key, required, fail_open=fail_open)
        except KeygateUnavailable as exc:
            raise HTTPException(
                status_code=503, detail={"code": "UNAVAILABLE", "message": UNAVAILABLE_DETAIL}
            ) from exc
        if result is None:  # keygate cannot be asked, and fail_open lets the request in
            return None
        if not result.valid:
            raise _refusal(result)
        return result.key

    return keygate_key
