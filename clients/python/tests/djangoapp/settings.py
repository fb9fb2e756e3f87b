"""A small Django + DRF project for the tests and bench/drf.sh, configured from the environment:

- ``KEYGATE_URL``, ``KEYGATE_VERIFY_KEY``: settings.KEYGATE's URL and VERIFY_KEY;
- ``KEYGATE_CACHE_TTL`` (seconds, default 0), ``KEYGATE_FAIL_OPEN`` (``1`` for True),
  ``KEYGATE_HEADER`` (a request.META name);
- ``DJANGOAPP_DB``: the SQLite file drf-api-key's keys live in (default: in memory).
"""

import os

SECRET_KEY = "test-only, not secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "djangoapp.urls"
WSGI_APPLICATION = "djangoapp.wsgi.application"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework_api_key",
]
MIDDLEWARE: list = []
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGOAPP_DB", ":memory:"),
        # one connection per worker, kept: drf-api-key's HasAPIKey at its best in bench/drf.sh
        # (Django's default, 0, opens and closes a connection per request)
        "CONN_MAX_AGE": None,
    }
}
REST_FRAMEWORK = {
    # DRF's default authentication classes (session, basic) stay: the project looks like the
    # ones HasKeygateKey drops into. JSON only: no browsable API templates.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}

KEYGATE = {
    "URL": os.environ.get("KEYGATE_URL", "http://127.0.0.1:8080"),
    "VERIFY_KEY": os.environ.get("KEYGATE_VERIFY_KEY", ""),
    "CACHE_TTL": float(os.environ.get("KEYGATE_CACHE_TTL", "0")),
    "FAIL_OPEN": os.environ.get("KEYGATE_FAIL_OPEN") == "1",
    "HEADER": os.environ.get("KEYGATE_HEADER") or None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        # a 500 (keygate refusing our verify key) shows its traceback; keygate's own lines
        # (fail open, unavailable) are on stderr, where the tests look for keys that must
        # not be there
        "django.request": {"handlers": ["stderr"], "level": "ERROR"},
        "keygate": {"handlers": ["stderr"], "level": "DEBUG"},
        "urllib3": {"handlers": ["stderr"], "level": os.environ.get("URLLIB3_LOG_LEVEL", "WARNING")},
    },
}
