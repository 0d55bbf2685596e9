#!/usr/bin/env bash
# Checks that the machine's services answer and starts any that does not.
# Used by .ci/run; safe to run by hand. Never restarts a service that answers.
set -uo pipefail

answer() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && exec 3>&- 3<&-
}

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    answer "$2" "$3" && { echo "services: $1 answers on $2:$3"; return 0; }
    sleep 0.1
  done
  echo "services: $1 does not answer on $2:$3" >&2
  return 1
}

ensure() { # name host port seconds start-command...
  local name=$1 host=$2 port=$3 secs=$4
  shift 4
  if answer "$host" "$port"; then
    echo "services: $name answers on $host:$port"
    return 0
  fi
  echo "services: starting $name"
  "$@" >/dev/null 2>&1 || true
  wait_for "$name" "$host" "$port" "$secs"
}

status=0
if command -v redis-server >/dev/null; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  ensure redis 127.0.0.1 6379 10 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 \
    --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || status=1
fi
if command -v rabbitmq-server >/dev/null; then
  ensure rabbitmq 127.0.0.1 5672 60 rabbitmq-server -detached || status=1
fi
if command -v pg_ctlcluster >/dev/null; then
  ensure postgresql 127.0.0.1 5432 30 bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || status=1
fi
exit $status
