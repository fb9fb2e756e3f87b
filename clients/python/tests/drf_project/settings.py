"""The throwaway Django project drf_fixture.py makes drf-api-key keys in, with drf-api-key 2.x
(the legacy venv, Django 4.2) and then 3.x (the dev venv, Django 5.2), like a real upgrade.

``DRF_FIXTURE_DB``: the SQLite file. ``DRF_FIXTURE_PG`` (optional): a PostgreSQL database as
JSON ``{"NAME", "USER", "PASSWORD", "HOST", "PORT", "SCHEMA"}``, the database alias ``pg``.
"""

import json
import os

SECRET_KEY = "fixture only"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework_api_key",
    "billing",
]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["DRF_FIXTURE_DB"]},
}
if os.environ.get("DRF_FIXTURE_PG"):
    pg = json.loads(os.environ["DRF_FIXTURE_PG"])
    DATABASES["pg"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": pg["NAME"],
        "USER": pg["USER"],
        "PASSWORD": pg["PASSWORD"],
        "HOST": pg["HOST"],
        "PORT": pg["PORT"],
        "OPTIONS": {"options": f"-c search_path={pg['SCHEMA']}"},
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
