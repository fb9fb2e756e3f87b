"""What the DRF permission and the FastAPI dependency share: one step from a presented key to
a decision, with the fail-open choice made once."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from .client import Client, KeygateUnavailable, VerifyResult

#: The refusal text for a request refused because keygate cannot be asked.
UNAVAILABLE_DETAIL = "the API key cannot be checked right now"

logger = logging.getLogger("keygate")


def check_presented_key(
    client: Client, key: Optional[str], scopes: Sequence[str], *, fail_open: bool
) -> Optional[VerifyResult]:
    """keygate's answer for ``key`` (``MISSING`` when there is none, without asking).

    When keygate cannot be asked: ``None`` if ``fail_open`` (the request goes through
    unverified, with a warning in the log), else :class:`keygate.KeygateUnavailable` is raised
    (with an error in the log). Log lines carry keygate's URL and the failure, never the key.
    """
    try:
        return client.verify(key or "", scopes)
    except KeygateUnavailable as exc:
        if fail_open:
            logger.warning("letting a request through unverified (fail open): %s", exc)
            return None
        logger.error("refusing a request, its key cannot be checked: %s", exc)
        raise
