"""Minimal Django settings: django-celery-beat on a PostgreSQL database.

Environment:
  CELERIAC_DJANGO_DB   database name (default celeriac_django)
  CELERIAC_PG_HOST     host (default 127.0.0.1), CELERIAC_PG_PORT (5432),
  CELERIAC_PG_USER     user (default postgres), CELERIAC_PG_PASSWORD (empty)
"""

import os

SECRET_KEY = "celeriac-interop-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_celery_beat",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CELERIAC_DJANGO_DB", "celeriac_django"),
        "HOST": os.environ.get("CELERIAC_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("CELERIAC_PG_PORT", "5432"),
        "USER": os.environ.get("CELERIAC_PG_USER", "postgres"),
        "PASSWORD": os.environ.get("CELERIAC_PG_PASSWORD", ""),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
