"""A minimal Django project with django-celery-beat, for celeriac's interop tests."""
