"""Calling keygate's /v1/verify from Python (any language works the same way).

    KEYGATE_URL=http://127.0.0.1:8080 KEYGATE_VERIFY_KEY=kg_... python3 examples/verify_client.py kg_the_client_key orders:read

KEYGATE_VERIFY_KEY is an admin key with the scope keygate:verify (or keygate:admin):
    keygate keys create --name "orders service" --scope keygate:verify
"""

import os
import sys

import requests

KEYGATE_URL = os.environ.get("KEYGATE_URL", "http://127.0.0.1:8080")
VERIFY_KEY = os.environ["KEYGATE_VERIFY_KEY"]


def verify(api_key, scopes=()):
    """Returns keygate's answer: {"valid": bool, "code": "...", "detail": "...", "key": {...}}."""
    response = requests.post(
        f"{KEYGATE_URL}/v1/verify",
        json={"key": api_key, "scopes": list(scopes)},
        headers={"Authorization": f"Api-Key {VERIFY_KEY}"},
        timeout=2,
    )
    response.raise_for_status()  # 401/403: our own VERIFY_KEY is wrong; 400: bad request
    return response.json()


if __name__ == "__main__":
    answer = verify(sys.argv[1], sys.argv[2:])
    if answer["valid"]:
        key = answer["key"]
        print(f"VALID: {key['name']} (owner {key['owner']}, scopes {key['scopes']})")
    else:
        print(answer["code"], "-", answer["detail"])
        sys.exit(1)
