#!/usr/bin/env python
"""Django's command line for the interop project (migrate, shell)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "celeriac_django.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
