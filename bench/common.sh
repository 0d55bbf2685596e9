# Shared setup of the bench scripts (load.sh, scaling.sh, soak.sh): sourced, not run.
# The sourcing script defines `die` and `say` (messages prefixed with its name) and
# the variables named below before calling these.

py=.venv/bin/python

# Makes the Python venv (sets `py`), builds `celeriac` in release unless `celeriac`
# names a binary already, and defines `flushdb` (FLUSHDB of `redis_url`'s db only).
bench_prepare() {
  bash scripts/python-env.sh >&2
  py=.venv/bin/python
  if [[ -z $celeriac ]]; then
    say "cargo build --release --bin celeriac"
    cargo build --release -p celeriac-cli --bin celeriac >&2
    celeriac=${CARGO_TARGET_DIR:-target}/release/celeriac
  fi
  [[ -x $celeriac ]] || die "no celeriac binary at $celeriac"
}

flushdb() { "$py" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1]).flushdb()' "$redis_url"; }

# Prints the version of the Redis at `redis_url`, or dies when it does not answer.
bench_redis_version() {
  "$py" -c 'import redis, sys; print(redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).info("server")["redis_version"])' "$redis_url" \
    || die "Redis does not answer at $redis_url"
}

# Prints `label`, or the commit (noting uncommitted changes to the code).
bench_git_fact() {
  if [[ -n $label ]]; then
    echo "$label"
  else
    echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
  fi
}

# Writes the machine facts of a report to FILE as JSON: the date, CPU, memory,
# kernel, Redis (`redis_version`, `redis_url`), rustc, `load_start`, `load_end`,
# `git_fact`, `command_line`, plus the fields of EXTRA (a JSON object).
bench_facts() {
  local file=$1 extra=${2:-"{}"}
  GIT_FACT=$git_fact COMMAND_LINE=$command_line EXTRA=$extra "$py" - "$file" <<PY
import json, os, sys
facts = {
    "date": """$(date -u '+%Y-%m-%d %H:%M UTC')""",
    "nproc": $(nproc),
    "cpu": """$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')""",
    "mem_gib": $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo),
    "kernel": """$(uname -r)""",
    "redis": """$redis_version""",
    "redis_url": """$redis_url""",
    "rustc": """$(rustc --version 2>/dev/null | cut -d' ' -f2 || echo unknown)""",
    "load_start": """$load_start""",
    "load_end": """$load_end""",
}
facts.update(json.loads(os.environ["EXTRA"]))
facts["git"] = os.environ["GIT_FACT"]
facts["command"] = os.environ["COMMAND_LINE"]
json.dump(facts, open(sys.argv[1], "w"))
PY
}
