"""A small FastAPI app for the tests, served by uvicorn; configured from the environment:
``KEYGATE_URL``, ``KEYGATE_VERIFY_KEY``, ``KEYGATE_FAIL_OPEN`` (``1``), ``KEYGATE_HEADER``,
``URLLIB3_LOG_LEVEL``."""

import logging
import os
from typing import Annotated, Any, Dict, Optional

from fastapi import Depends, FastAPI

from keygate import Client, KeyInfo
from keygate.fastapi import require_key

# like the Django project's LOGGING: keygate's lines and (when asked) urllib3's on stderr
logging.basicConfig(level=logging.WARNING)
logging.getLogger("keygate").setLevel(logging.DEBUG)
logging.getLogger("urllib3").setLevel(os.environ.get("URLLIB3_LOG_LEVEL", "WARNING"))

keygate = Client(os.environ["KEYGATE_URL"], os.environ["KEYGATE_VERIFY_KEY"])
options: Dict[str, Any] = {
    "fail_open": os.environ.get("KEYGATE_FAIL_OPEN") == "1",
    "header": os.environ.get("KEYGATE_HEADER") or None,
}
app = FastAPI()


def describe(key: Optional[KeyInfo]) -> Dict[str, Any]:
    if key is None:
        return {"auth": None}
    fields = {"id": key.id, "name": key.name, "owner": key.owner, "scopes": list(key.scopes)}
    return {"auth": {**fields, "metadata": dict(key.metadata)}}


#: The verified key (``None`` only when keygate cannot be asked and fail_open is set).
AnyKey = Annotated[Optional[KeyInfo], Depends(require_key(keygate, **options))]
OrdersKey = Annotated[Optional[KeyInfo], Depends(require_key(keygate, ["orders:read"], **options))]


@app.get("/api/public/")
def public(key: AnyKey) -> Dict[str, Any]:
    return {"message": "This is a public API that requires an API key.", **describe(key)}


@app.get("/api/orders/")
def orders(key: OrdersKey) -> Dict[str, Any]:
    return {"orders": [], **describe(key)}
