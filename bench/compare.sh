#!/usr/bin/env bash
# Side-by-side benchmark: Python Celery (prefork -c 2, default settings) and celeriac
# (`celeriac bench`) on the same machine, same workload, same Redis; writes a table
# of both with ratios, the machine facts and this command into BENCHMARKS.md
# (between the <!-- bench/compare.sh:begin --> / end markers).
#
#   bash bench/compare.sh                    # issue 3: 20,000 no-op tasks
#   bash bench/compare.sh --tasks 100000     # issue 9
#   bash bench/compare.sh --quick            # 2,000 tasks, prints the table only
#
# Options:
#   --tasks N            tasks per enqueue / drain phase (default 20000)
#   --round-trips N      sequential send -> get round trips (default 500)
#   --quick              N=2000, 100 round trips, no results-stored drains; does not
#                        write BENCHMARKS.md (options after it still apply)
#   --redis-url URL      a Redis db of its own (default redis://127.0.0.1:6379/12);
#                        it is FLUSHDB'd (that db only) before and after; db 0 refused
#   --no-results-drain   skip the "results stored" drains
#   --no-sqlite          skip celeriac's embedded SQLite column
#   --mixed-tasks N      tasks of the mixed workload (90 % 1 ms tasks on short-task,
#                        10 % 200 ms tasks on long-task, 100 sent per second; default
#                        2000, --quick 500); 0 skips it
#   --celeriac PATH      use this celeriac binary (default: cargo build --release)
#   --label TEXT         what the celeriac binary is built from, for the table
#                        (default: the commit, or the --celeriac path)
#   --out FILE           write the section into FILE (default BENCHMARKS.md, not
#                        with --quick); --no-write prints it only
#
# Needs: python3 (3.8+) for the venv (scripts/python-env.sh), cargo, a Redis server.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

tasks=20000
round_trips=500
latency_samples=1000
mixed_tasks=2000
quick=0
redis_url=redis://127.0.0.1:6379/12
results_drain=1
sqlite=1
celeriac=""
label=""
out=BENCHMARKS.md
write=1
command_line="bash bench/compare.sh$(printf ' %q' "$@")"

die() { echo "compare.sh: $*" >&2; exit 2; }
say() { echo "compare.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --tasks) tasks=${2:?--tasks needs a number}; shift 2 ;;
    --round-trips) round_trips=${2:?--round-trips needs a number}; shift 2 ;;
    --quick) quick=1; tasks=2000; round_trips=100; latency_samples=200; results_drain=0; write=0; mixed_tasks=500; shift ;;
    --mixed-tasks) mixed_tasks=${2:?--mixed-tasks needs a number}; shift 2 ;;
    --redis-url) redis_url=${2:?--redis-url needs a URL}; shift 2 ;;
    --no-results-drain) results_drain=0; shift ;;
    --no-sqlite) sqlite=0; shift ;;
    --celeriac) celeriac=${2:?--celeriac needs a path}; shift 2 ;;
    --label) label=${2:?--label needs a text}; shift 2 ;;
    --out) out=${2:?--out needs a file}; write=1; shift 2 ;;
    --no-write) write=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $tasks =~ ^[1-9][0-9]*$ ]] || die "--tasks must be a positive number, got '$tasks'"
[[ $mixed_tasks =~ ^[0-9]+$ ]] || die "--mixed-tasks must be a number, got '$mixed_tasks'"
[[ $round_trips =~ ^[0-9]+$ ]] || die "--round-trips must be a number, got '$round_trips'"
db=${redis_url##*/}
[[ $redis_url =~ ^redis://[^/]+/[0-9]+$ ]] || die "--redis-url must name a db number, e.g. redis://127.0.0.1:6379/12 (got $redis_url)"
[[ $db != 0 ]] || die "refusing db 0 of $redis_url: the benchmark flushes its db; give it one of its own"

work=$(mktemp -d /tmp/celeriac-compare.XXXXXX)
worker_pid=""
cleanup() {
  if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then kill -TERM "$worker_pid" 2>/dev/null || true; fi
  if [[ -x .venv/bin/python ]]; then flushdb >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. Python Celery in .venv, celeriac in release.
say "python venv (scripts/python-env.sh)"
bash scripts/python-env.sh >&2
py=.venv/bin/python
if [[ -z $celeriac ]]; then
  say "cargo build --release --bin celeriac"
  cargo build --release --bin celeriac >&2
  celeriac=target/release/celeriac
fi
[[ -x $celeriac ]] || die "no celeriac binary at $celeriac"

flushdb() { "$py" -c 'import redis, sys; redis.Redis.from_url(sys.argv[1]).flushdb()' "$redis_url"; }
redis_version=$("$py" - "$redis_url" <<'PY'
import redis, sys
try:
    print(redis.Redis.from_url(sys.argv[1], socket_connect_timeout=2).info("server")["redis_version"])
except Exception as e:
    sys.exit(f"compare.sh: Redis does not answer at {sys.argv[1]}: {e}")
PY
)
flushdb

# 2. Machine facts.
if [[ -n $label ]]; then
  git_fact=$label
elif [[ $celeriac == target/release/celeriac ]]; then
  git_fact="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates Cargo.lock 2>/dev/null || echo ' + uncommitted changes')"
else
  git_fact="binary $celeriac"
fi
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$work/facts.json" <<PY
import json, sys
json.dump({
    "date": """$(date -u '+%Y-%m-%d %H:%M UTC')""",
    "nproc": $(nproc),
    "cpu": """$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')""",
    "mem_gib": $(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo),
    "kernel": """$(uname -r)""",
    "redis": """$redis_version""",
    "redis_url": """$redis_url""",
    "rustc": """$(rustc --version 2>/dev/null | cut -d' ' -f2 || echo unknown)""",
    "python": """$("$py" -c 'import platform; print(platform.python_version())')""",
    "load_start": """$load_start""",
    "tasks": $tasks,
}, open(sys.argv[1], "w"))
PY
# Texts that may hold any character go through the environment, not the heredoc.
GIT_FACT=$git_fact COMMAND_LINE=$command_line python3 - "$work/facts.json" <<'PY'
import json, os, sys
facts = json.load(open(sys.argv[1]))
facts["git"] = os.environ["GIT_FACT"]
facts["command"] = os.environ["COMMAND_LINE"]
json.dump(facts, open(sys.argv[1], "w"))
PY
say "load average at start: $load_start"

# 3. celeriac on Redis: results ignored (all phases), then the drain with results.
bench() { # out-file args...
  local file=$1
  shift
  if ! "$celeriac" --log warn "$@" --json >"$work/$file.out" 2>"$work/$file.err"; then
    cat "$work/$file.err" >&2
    die "celeriac $* failed"
  fi
  tail -n 1 "$work/$file.out" >"$work/$file.json"
}
say "celeriac on Redis: $tasks tasks"
bench celeriac-redis --broker "$redis_url" --backend "$redis_url" bench --tasks "$tasks" \
  --single-sends "$tasks" --latency-samples "$latency_samples" --round-trips "$round_trips"
if ((results_drain)); then
  say "celeriac on Redis: $tasks tasks, results stored"
  bench celeriac-redis-results --broker "$redis_url" --backend "$redis_url" bench --tasks "$tasks" \
    --with-results --single-sends 0 --latency-samples 0 --round-trips 0
fi

# The same drain with Celery's default prefetch (×4) instead of bench's ×128.
say "celeriac on Redis: $tasks tasks, prefetch x4"
bench celeriac-redis-prefetch4 --broker "$redis_url" --backend "$redis_url" bench --tasks "$tasks" \
  --prefetch-multiplier 4 --single-sends 0 --latency-samples 0 --round-trips 0

# celeriac worker RSS, idle: a `celeriac worker -c 2` consuming an empty queue.
say "celeriac worker, idle RSS"
"$celeriac" --log warn --broker "$redis_url" --backend "$redis_url" worker -Q celeriac-bench-idle -c 2 \
  >"$work/idle.log" 2>&1 &
worker_pid=$!
sleep 3
kill -0 "$worker_pid" 2>/dev/null || { cat "$work/idle.log" >&2; die "celeriac worker exited"; }
awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "{\"rss_mb\": %.1f, \"hwm_mb\": %.1f}\n", r/1024, h/1024}' \
  "/proc/$worker_pid/status" >"$work/celeriac-idle.json"
kill -TERM "$worker_pid"
wait "$worker_pid" || true
worker_pid=""

# The mixed workload: short-task / long-task in one worker, 2 slots each.
if ((mixed_tasks > 0)); then
  say "celeriac on Redis: mixed workload, $mixed_tasks tasks"
  bench celeriac-mixed --broker "$redis_url" bench --mixed --mixed-tasks "$mixed_tasks" \
    --short-slots 2 --long-slots 2
fi

if ((sqlite)); then
  say "celeriac on embedded SQLite: $tasks tasks"
  bench celeriac-sqlite --broker "sqlite://$work/bench.db" bench --tasks "$tasks" \
    --single-sends "$tasks" --latency-samples "$latency_samples" --round-trips "$round_trips"
fi

# 4. Python Celery, same workload.
flushdb
say "Python Celery on Redis: $tasks tasks (prefork -c 2)"
celery_args=(--redis-url "$redis_url" --tasks "$tasks" --round-trips "$round_trips" --worker-log "$work/celery-worker.log")
((results_drain)) && celery_args+=(--with-results)
if ! "$py" bench/celery_bench.py "${celery_args[@]}" >"$work/celery.json"; then
  tail -n 30 "$work/celery-worker.log" >&2 || true
  die "the Celery benchmark failed"
fi
if ((mixed_tasks > 0)); then
  flushdb
  say "Python Celery on Redis: mixed workload, $mixed_tasks tasks (prefork -c 4)"
  if ! "$py" bench/celery_bench.py --redis-url "$redis_url" --mixed "$mixed_tasks" --mixed-concurrency 4 \
    --worker-log "$work/celery-worker.log" >"$work/celery-mixed.json"; then
    tail -n 30 "$work/celery-worker.log" >&2 || true
    die "the Celery mixed workload failed"
  fi
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at end: $load_end"

# 5. The table.
render=(python3 bench/render.py --work "$work" --load-end "$load_end")
if ((write)); then
  "${render[@]}" --out "$out"
  say "wrote the section into $out"
else
  "${render[@]}"
fi
