"""Runs inside a venv with djangorestframework-api-key; drf_fixture.py drives it.

python keys.py make legacy|current   # migrate, create this release's keys, print them (JSON)
python keys.py check < probes.json   # [{"table", "key"}] -> [is_valid, ...] (JSON)
python keys.py copy-to-pg            # the same rows into the `pg` database (dumpdata/loaddata)
"""

import io
import json
import os
import sys
from datetime import timedelta
from typing import Any, Dict, List

# This project's own settings, whatever the caller exported (bench/drf.sh exports its app's).
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django  # noqa: E402

django.setup()

import rest_framework_api_key  # noqa: E402
from billing.models import Organization, OrganizationAPIKey  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework_api_key.models import APIKey  # noqa: E402

MODELS = {"rest_framework_api_key_apikey": APIKey, "billing_organizationapikey": OrganizationAPIKey}
DJANGO_32_HASHERS = [
    "hashers.Django32PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]


def create(model: Any, name: str, state: str = "active", **fields: Any) -> Dict[str, Any]:
    """One key made the way the release does, then revoked or dated as ``state`` says."""
    now = timezone.now()
    if state in ("expired", "revoked+expired"):
        fields["expiry_date"] = now - timedelta(days=1)
    elif state == "expires later":
        fields["expiry_date"] = (now + timedelta(days=30)).replace(microsecond=0)
    obj, key = model.objects.create_key(name=name, **fields)
    if state.startswith("revoked"):
        obj.revoked = True
        obj.save()
    return {
        "key": key,
        "table": model._meta.db_table,
        "pk": obj.pk,
        "name": name,
        "state": state,
        "hasher": obj.hashed_key.split("$", 1)[0],
        "hashed_key": obj.hashed_key,
        "expiry_date": obj.expiry_date.isoformat() if obj.expiry_date else None,
        "organization_id": getattr(obj, "organization_id", None),
        "plan": getattr(obj, "plan", None),
        "release": rest_framework_api_key.__version__,
    }


def make(release: str) -> List[Dict[str, Any]]:
    call_command("migrate", verbosity=0)
    made = []
    for state in ["active", "revoked", "expired", "expires later"]:
        made.append(create(APIKey, f"{release} {state}", state))
    if release == "legacy":
        with override_settings(PASSWORD_HASHERS=DJANGO_32_HASHERS):
            made.append(create(APIKey, "legacy, hashed on Django 3.2"))
        acme = Organization.objects.create(name="Acme")
        made.append(create(OrganizationAPIKey, "acme legacy", organization=acme, plan="pro"))
    else:
        made.append(create(APIKey, "current revoked+expired", "revoked+expired"))
        made.append(create(APIKey, "clé de test — 東京"))
        globex = Organization.objects.create(name="Globex")
        made.append(create(OrganizationAPIKey, "globex", organization=globex, plan="free"))
        made.append(create(OrganizationAPIKey, "globex revoked", "revoked", organization=globex, plan="pro"))
    return made


def check(probes: List[Dict[str, str]]) -> List[bool]:
    return [MODELS[p["table"]].objects.is_valid(p["key"]) for p in probes]


def copy_to_pg() -> None:
    call_command("migrate", database="pg", verbosity=0)
    dump = io.StringIO()
    call_command("dumpdata", "billing", "rest_framework_api_key", stdout=dump)
    path = os.environ["DRF_FIXTURE_DB"] + ".dump.json"
    with open(path, "w") as f:
        f.write(dump.getvalue())
    call_command("loaddata", path, database="pg", verbosity=0)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "make":
        print(json.dumps(make(sys.argv[2])))
    elif command == "check":
        print(json.dumps(check(json.load(sys.stdin))))
    elif command == "copy-to-pg":
        copy_to_pg()
    else:
        raise SystemExit(f"unknown command {command}")
