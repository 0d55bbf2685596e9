#!/usr/bin/env bash
# Creates (idempotently) the Python virtualenv used by the interop tests: `.venv` in
# the repository root with Celery 5.x (with its Redis extras) and pytest. Prints the
# Celery version. Fast when everything is already installed. Django,
# django-celery-beat and psycopg serve the Django interop test
# (tests/interop/test_django_beat.py). Selenium drives the
# dashboard browser tests (tests/browser). Matplotlib draws the scaling charts
# (bench/scaling.py).
#
#   bash scripts/python-env.sh          # then: .venv/bin/python -m pytest tests/interop
#
# PYTHON selects the interpreter that creates the venv (default python3, 3.8+).
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned ranges; a change here reinstalls on the next run.
requirements=("celery[redis]>=5.4,<6" "pytest>=7,<9"
  "django>=4.2,<6" "django-celery-beat>=2.5,<3" "psycopg[binary]>=3.1,<4" "selenium>=4.20,<5"
  "flower>=2,<3" "matplotlib>=3.7,<4" "ephem>=4.1,<5")

venv=.venv
python=${PYTHON:-python3}
stamp="$venv/.celeriac-requirements"
wanted=$(printf '%s\n' "${requirements[@]}")

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating $venv with $($python --version 2>&1)" >&2
  "$python" -m venv "$venv"
fi

if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "$wanted" ]] \
  || ! "$venv/bin/python" -c 'import celery, redis, pytest, django, django_celery_beat, psycopg, selenium, matplotlib, ephem' >/dev/null 2>&1; then
  echo "installing ${requirements[*]} into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s\n' "$wanted" >"$stamp"
fi

"$venv/bin/python" -c 'import celery; print("celery", celery.__version__)'
