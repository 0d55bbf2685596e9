#!/usr/bin/env bash
# Interop with Python Celery on Redis: builds the `interop` example (release), makes
# sure the Python venv exists (scripts/python-env.sh), and runs the Python suite in
# tests/interop against Redis. Exits non-zero when a case fails.
#
#   bash scripts/interop.sh                 # all cases
#   bash scripts/interop.sh -k results -x   # extra arguments go to pytest
#
# Redis: CELERIAC_INTEROP_REDIS_URL (default redis://127.0.0.1:6379/13; nothing is
# flushed, every case uses its own task ids and queues). When Redis does not answer,
# the suite is skipped, or fails with CELERIAC_REQUIRE_SERVICES=1.
# The Django case (test_django_beat.py) migrates a throwaway database on the PostgreSQL
# at CELERIAC_INTEROP_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres) with
# the real django-celery-beat; skipped when PostgreSQL does not answer (failed with
# CELERIAC_REQUIRE_SERVICES=1).
# RabbitMQ: CELERIAC_INTEROP_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//) for
# the same cases over AMQP (tests/interop/test_amqp.py, results on Redis); each case
# deletes its queue. Skipped when RabbitMQ does not answer, failed with
# CELERIAC_REQUIRE_SERVICES=1.
# Cases that need celeriac's Redis broker are skipped, with the reason printed, only
# while `interop queues --broker redis://...` says the broker lacks Redis support.
set -euo pipefail
cd "$(dirname "$0")/.."

export CELERIAC_INTEROP_REDIS_URL=${CELERIAC_INTEROP_REDIS_URL:-redis://127.0.0.1:6379/13}
export CELERIAC_INTEROP_AMQP_URL=${CELERIAC_INTEROP_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}
bin=target/release/examples/interop

say() { printf -- '--> %s\n' "$*"; }

say "building the interop and broadcast examples (release)"
cargo build --release --example interop
cargo build --release -p celeriac-broker --example broadcast

say "Python environment"
bash scripts/python-env.sh

say "Redis at $CELERIAC_INTEROP_REDIS_URL"
if ! .venv/bin/python - "$CELERIAC_INTEROP_REDIS_URL" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).ping()
except redis.RedisError as error:
    print(f"Redis does not answer at {sys.argv[1]}: {error}", file=sys.stderr)
    sys.exit(1)
PY
then
  if [[ "${CELERIAC_REQUIRE_SERVICES:-}" == "1" ]]; then
    echo "interop: Redis is required (CELERIAC_REQUIRE_SERVICES=1) but does not answer" >&2
    exit 1
  fi
  echo "interop: SKIPPED, Redis does not answer (set CELERIAC_INTEROP_REDIS_URL)"
  exit 0
fi

say "celeriac broker support for Redis"
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
if probe_out=$(cd "$probe" && RUST_BACKTRACE=0 "$OLDPWD/$bin" --log error queues \
  --broker "$CELERIAC_INTEROP_REDIS_URL" 2>&1); then
  echo "the celeriac broker speaks Redis: every case runs"
elif grep -Eq 'not built into this version|expected sqlite://' <<<"$probe_out"; then
  echo "SKIPPING the broker cases (tests/interop/test_broker.py): celeriac_broker has no Redis support yet:"
  echo "    $(grep -v '^\s*$' <<<"$probe_out" | tail -n 1 | sed 's/^ *//')"
else
  echo "the celeriac broker accepts redis:// but the probe failed; the broker cases will show why:"
  echo "$probe_out" | sed 's/^/    /'
fi

say "Python suite (tests/interop)"
cd tests/interop
exec ../../.venv/bin/python -m pytest -v "$@"
