"""The keygate client: one ``POST /v1/verify`` per check, over a pooled keep-alive connection."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Optional, Tuple

import urllib3
from urllib3.exceptions import HTTPError as _Urllib3Error

from ._version import __version__

__all__ = [
    "Client",
    "KeyInfo",
    "VerifyResult",
    "KeygateError",
    "KeygateUnavailable",
    "KeygateConfigurationError",
    "WWW_AUTHENTICATE",
    "key_from_authorization",
]

_USER_AGENT = f"keygate-python/{__version__}"

#: The ``WWW-Authenticate`` value sent with every 401, as keygate itself sends it.
WWW_AUTHENTICATE = 'Api-Key realm="keygate"'

#: The ``Authorization`` scheme that carries a key (compared case-insensitively).
_SCHEME = "api-key"

#: A presented key longer than this is answered ``MALFORMED`` without asking keygate: no key
#: is this long, and the body must stay far below keygate's 64 KiB limit.
MAX_KEY_LENGTH = 4096

#: keygate's answers are a few hundred bytes; anything past this is not keygate talking.
_MAX_ANSWER_BYTES = 1 << 20

#: The positive cache's TTL may not exceed this: it is the staleness bound (a revoked key
#: keeps passing for up to the TTL in this process), and a long one is not "short".
MAX_CACHE_TTL = 60.0

#: The HTTP status an API should answer for each refusal code; any code not here (a code
#: added by a later keygate) is a refusal answered 403.
_STATUS_BY_CODE = {
    "VALID": 200,
    "MISSING": 401,
    "MALFORMED": 401,
    "NOT_FOUND": 401,
    "REVOKED": 401,
    "EXPIRED": 401,
    "DISABLED": 401,
    "INSUFFICIENT_SCOPE": 403,
    "IP_NOT_ALLOWED": 403,
    "RATE_LIMITED": 429,
    "USAGE_EXCEEDED": 429,
}


def key_from_authorization(value: Optional[str]) -> Optional[str]:
    """The key in an ``Authorization: Api-Key <key>`` header value, else ``None``.

    Parsed exactly as djangorestframework-api-key's ``KeyParser`` does: split at the first
    space, scheme compared case-insensitively, the rest is the key (``None`` when empty).
    """
    if not value:
        return None
    scheme, found, key = value.partition(" ")
    if not found or scheme.lower() != _SCHEME:
        return None
    return key or None


class KeygateError(Exception):
    """Base class of the client's errors. Messages never contain a presented key."""


class KeygateUnavailable(KeygateError):
    """keygate could not be asked: connection refused, timeout, 5xx, or an answer that is not
    keygate's. Fail closed: treat the request as refused (the integrations answer 503)."""


class KeygateConfigurationError(KeygateError):
    """keygate refused *our* request: the verify key is wrong or lacks ``keygate:verify``
    (401/403), the URL is not keygate's (404), or the request itself was refused (400, e.g. a
    malformed scope in the code). Not the caller's fault: fix the configuration."""


def _parse_time(value: Any) -> Optional[datetime]:
    """An RFC 3339 time as keygate writes it (``2025-01-02T03:04:05.678Z``), or ``None``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a time must be a string")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class KeyInfo:
    """What keygate knows about a key it found (never the key itself)."""

    #: Public id (``key_...``): use it in logs and URLs.
    id: str
    #: Name given at issue.
    name: str
    #: Owner id, if any.
    owner: Optional[str]
    #: Scopes the key holds.
    scopes: Tuple[str, ...]
    #: Metadata given at issue (an object).
    metadata: Mapping[str, Any]
    #: When the key expires, if ever (UTC).
    expires_at: Optional[datetime]
    #: While the key is in a rotation's grace period: its successor's id.
    rotated_to: Optional[str]
    #: Fields this client version does not know, as keygate sent them.
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KNOWN = frozenset({"id", "name", "owner", "scopes", "metadata", "expires_at", "rotated_to"})

    @classmethod
    def from_json(cls, data: Any) -> KeyInfo:
        """Reads keygate's ``key`` object; ``ValueError`` when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("key is not an object")
        id_, name, owner = data.get("id"), data.get("name"), data.get("owner")
        scopes, metadata = data.get("scopes", []), data.get("metadata", {})
        rotated_to = data.get("rotated_to")
        if not isinstance(id_, str) or not isinstance(name, str):
            raise ValueError("key.id and key.name must be strings")
        if owner is not None and not isinstance(owner, str):
            raise ValueError("key.owner must be a string or null")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("key.scopes must be a list of strings")
        if not isinstance(metadata, dict):
            raise ValueError("key.metadata must be an object")
        if rotated_to is not None and not isinstance(rotated_to, str):
            raise ValueError("key.rotated_to must be a string or null")
        return cls(
            id=id_,
            name=name,
            owner=owner,
            scopes=tuple(scopes),
            metadata=metadata,
            expires_at=_parse_time(data.get("expires_at")),
            rotated_to=rotated_to,
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )


@dataclass(frozen=True)
class VerifyResult:
    """keygate's answer for one key. ``valid`` is true only for the code ``VALID``: any other
    code, including one this client does not know, is a refusal."""

    #: Whether the key may be used for this request.
    valid: bool
    #: keygate's stable outcome code (``VALID``, ``NOT_FOUND``, ``REVOKED``, ...).
    code: str
    #: Why, in a sentence (never the key).
    detail: str
    #: The key, when keygate found one (also for ``REVOKED``, ``EXPIRED``, ...).
    key: Optional[KeyInfo]
    #: Top-level fields this client version does not know (e.g. limit details).
    extra: Mapping[str, Any] = field(default_factory=dict)

    _KNOWN = frozenset({"valid", "code", "detail", "key"})

    @property
    def http_status(self) -> int:
        """The status an API answers for this result: 200, 401, 403 or 429 (403 for a code
        this client does not know)."""
        if self.valid:
            return 200
        status = _STATUS_BY_CODE.get(self.code, 403)
        return 403 if status == 200 else status

    @classmethod
    def refused(cls, code: str, detail: str) -> VerifyResult:
        """A refusal decided without asking keygate (no key presented, or one no key can be)."""
        return cls(valid=False, code=code, detail=detail, key=None)

    @classmethod
    def from_json(cls, data: Any) -> VerifyResult:
        """Reads a ``/v1/verify`` answer; ``ValueError`` when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("the answer is not an object")
        valid, code, detail = data.get("valid"), data.get("code"), data.get("detail", "")
        if not isinstance(valid, bool) or not isinstance(code, str) or not isinstance(detail, str):
            raise ValueError("valid, code and detail must be a boolean and strings")
        key = data.get("key")
        return cls(
            valid=valid and code == "VALID",
            code=code,
            detail=detail,
            key=None if key is None else KeyInfo.from_json(key),
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )


class _PositiveCache:
    """Bounded LRU of VALID answers, keyed by (SHA-256 of the key, scopes, ip).

    An entry lives ``ttl`` seconds on the monotonic ``clock``, and never past the key's own
    expiry (on the wall clock). Only a digest of the key is held, never the key."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        # slot -> (monotonic deadline, the key's expiry as a Unix time or None, answer)
        self._entries: OrderedDict[Tuple[Any, ...], Tuple[float, Optional[float], VerifyResult]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, slot: Tuple[Any, ...]) -> Optional[VerifyResult]:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(slot)
            if entry is None:
                return None
            deadline, expires, result = entry
            if deadline <= now or (expires is not None and expires <= time.time()):
                del self._entries[slot]
                return None
            self._entries.move_to_end(slot)
            return result

    def put(self, slot: Tuple[Any, ...], result: VerifyResult) -> None:
        expires_at = result.key.expires_at if result.key is not None else None
        entry = (self._clock() + self._ttl, None if expires_at is None else expires_at.timestamp(), result)
        with self._lock:
            self._entries[slot] = entry
            self._entries.move_to_end(slot)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Client:
    """Asks a keygate server whether a key may be used.

    ``Client("http://127.0.0.1:8080", verify_key)`` where ``verify_key`` holds the scope
    ``keygate:verify``. Thread-safe; keep one per process and reuse it (it holds a pool of up
    to ``pool_size`` keep-alive connections; a caller waits at most ``timeout`` for one).

    - ``timeout``: seconds for the whole call (connect, send, answer). Past it the call raises
      :class:`KeygateUnavailable`.
    - ``cache_ttl``: seconds a ``VALID`` answer is reused for the same key, scopes and ip
      without asking keygate; ``0`` (the default) turns the cache off. This is the staleness
      bound: a key revoked, disabled or narrowed in keygate keeps passing in this process for
      at most ``cache_ttl`` more (plus keygate's own propagation, ≤ 1 s). Refusals are never
      cached. A hit is not seen by keygate, so it does not count towards keygate's rate
      limits or usage; calls with ``cost`` always ask. At most ``MAX_CACHE_TTL`` (60 s).
    - ``cache_size``: most answers held (least recently used go first).
    - ``clock``: the monotonic clock the cache uses (tests pass a fixed one).
    """

    def __init__(
        self,
        url: str,
        verify_key: str,
        *,
        timeout: float = 2.0,
        cache_ttl: float = 0.0,
        cache_size: int = 10_000,
        pool_size: int = 10,
        ca_certs: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if not isinstance(verify_key, str) or not verify_key:
            raise ValueError("verify_key must be a non-empty string (a key with keygate:verify)")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        if not (isinstance(cache_ttl, (int, float)) and 0 <= cache_ttl <= MAX_CACHE_TTL):
            raise ValueError(f"cache_ttl must be between 0 (off) and {MAX_CACHE_TTL:g} seconds")
        if not (isinstance(cache_size, int) and cache_size > 0):
            raise ValueError("cache_size must be a positive integer")
        if not (isinstance(pool_size, int) and pool_size > 0):
            raise ValueError("pool_size must be a positive integer")
        parsed = urllib3.util.parse_url(url)
        if parsed.auth or parsed.query or parsed.fragment or not parsed.host:
            raise ValueError("url must be scheme://host[:port][/path], without credentials")
        self.url = url.rstrip("/")
        self._verify_url = self.url + "/v1/verify"
        self._verify_path = (parsed.path or "").rstrip("/") + "/v1/verify"
        self._timeout = float(timeout)
        self._call_timeout = urllib3.Timeout(total=self._timeout)
        pool_options: dict[str, Any] = {"maxsize": pool_size, "block": True}
        if ca_certs is not None:
            pool_options["ca_certs"] = ca_certs
        self._pool = urllib3.connection_from_url(self.url, **pool_options)
        self._headers = {
            "Authorization": f"Api-Key {verify_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
        }
        self._cache = _PositiveCache(float(cache_ttl), cache_size, clock) if cache_ttl > 0 else None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def verify(
        self,
        key: str,
        scopes: Iterable[str] = (),
        *,
        cost: Optional[int] = None,
        ip: Optional[str] = None,
    ) -> VerifyResult:
        """Asks keygate whether ``key`` may be used for a request needing every one of
        ``scopes``. ``cost`` and ``ip`` are sent only when given (for keygate's usage and IP
        rules).

        Returns the answer, refusals included. Raises :class:`KeygateUnavailable` when keygate
        cannot be asked and :class:`KeygateConfigurationError` when it refuses our own request.
        """
        if isinstance(scopes, str):
            raise TypeError("scopes must be a list of scopes, not one string")
        wanted = tuple(scopes)
        if not all(isinstance(s, str) for s in wanted):
            raise TypeError("every scope must be a string")
        if not isinstance(key, str) or not key:
            return VerifyResult.refused("MISSING", "no API key was presented")
        if len(key) > MAX_KEY_LENGTH:
            return VerifyResult.refused("MALFORMED", "the API key is too long")
        try:
            key_bytes = key.encode("utf-8")
        except UnicodeEncodeError:
            return VerifyResult.refused("MALFORMED", "the API key is not valid text")

        slot = None
        if self._cache is not None and cost is None:
            slot = (hashlib.sha256(key_bytes).digest(), tuple(sorted(set(wanted))), ip)
            hit = self._cache.get(slot)
            if hit is not None:
                return hit

        body: dict[str, Any] = {"key": key, "scopes": list(wanted)}
        if cost is not None:
            body["cost"] = cost
        if ip is not None:
            body["ip"] = ip
        result = self._ask(json.dumps(body).encode("utf-8"))
        if slot is not None and result.valid:
            self._cache.put(slot, result)  # type: ignore[union-attr]
        return result

    def clear_cache(self) -> None:
        """Forgets every cached answer."""
        if self._cache is not None:
            self._cache.clear()

    def close(self) -> None:
        """Closes the pooled connections."""
        self._pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, payload: bytes) -> VerifyResult:
        where = self._verify_url
        try:
            response = self._pool.urlopen(
                "POST",
                self._verify_path,
                body=payload,
                headers=self._headers,
                retries=False,
                redirect=False,
                timeout=self._call_timeout,
                pool_timeout=self._timeout,  # type: ignore[arg-type]  # a float works; stubs say int
                preload_content=False,
            )
            try:
                raw = response.read(_MAX_ANSWER_BYTES + 1)
            finally:
                response.release_conn()
        except (_Urllib3Error, OSError) as exc:
            # urllib3's messages name the host and the failure, never the request body.
            raise KeygateUnavailable(
                f"keygate at {where} cannot be asked: {type(exc).__name__}: {exc}"
            ) from exc
        status = response.status
        if len(raw) > _MAX_ANSWER_BYTES:
            raise KeygateUnavailable(f"keygate at {where} answered over {_MAX_ANSWER_BYTES} bytes")
        if status == 200:
            try:
                return VerifyResult.from_json(json.loads(raw))
            except ValueError as exc:
                raise KeygateUnavailable(
                    f"keygate at {where} answered 200 with something that is not a verify answer ({exc})"
                ) from exc
        problem = _problem_text(raw)
        if status in (401, 403):
            raise KeygateConfigurationError(
                f"keygate at {where} refused our verify key ({status}{problem}): it must be a "
                "live key holding keygate:verify"
            )
        if status >= 500 or status == 429:
            raise KeygateUnavailable(f"keygate at {where} answered {status}{problem}")
        raise KeygateConfigurationError(f"keygate at {where} refused the request ({status}{problem})")


def _problem_text(raw: bytes) -> str:
    """`: CODE - detail` from a problem+json body, when there is one (keygate's problems
    never repeat a presented key)."""
    try:
        problem = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(problem, dict):
        return ""
    code, detail = problem.get("code"), problem.get("detail")
    parts = [p for p in (code, detail) if isinstance(p, str)]
    return (": " + " - ".join(parts)) if parts else ""
