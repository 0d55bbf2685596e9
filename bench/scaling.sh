#!/usr/bin/env bash
# Scaling with worker processes (issue 9 §4): the Redis drain rate of 1, 2, 3 and 4
# worker processes (each `celeriac bench --drain-only -c 2`, prefetch x128) on one
# Redis and one queue prefilled with --tasks no-op tasks. The rate of a run is all
# tasks over the span from the first worker's start to the last task run (each
# worker reports its start and its last progress). Every count is run --repeat times;
# the table keeps each run, the chart the median. Writes docs/scaling-workers.csv,
# docs/scaling-workers.png and a section of BENCHMARKS.md between the
# <!-- bench/scaling.sh:begin --> / end markers. The depth curve (10k → 1M) is
# bench/load.sh's.
#
#   bash bench/scaling.sh                    # 200,000 tasks, 1..4 workers, twice each
#   bash bench/scaling.sh --quick            # 20,000 tasks, once each; prints only
#
# Options:
#   --tasks N          tasks per run (default 200000)
#   --workers "1 2 3 4"
#   --repeat R         runs per worker count (default 2)
#   --redis-url URL    a Redis db of its own (default redis://127.0.0.1:6379/14);
#                      FLUSHDB'd before and after; db 0 refused
#   --celeriac PATH    the celeriac binary (default: cargo build --release)
#   --label TEXT       what the binary is built from (default: the commit)
#   --out FILE         write the section into FILE (default BENCHMARKS.md); --no-write
#                      prints it only (and leaves docs/ alone)
set -euo pipefail
cd "$(dirname "$0")/.."

tasks=200000
workers="1 2 3 4"
repeat=2
redis_url=redis://127.0.0.1:6379/14
celeriac=""
label=""
out=BENCHMARKS.md
write=1
command_line="bash bench/scaling.sh$(printf ' %q' "$@")"

die() { echo "scaling.sh: $*" >&2; exit 2; }
say() { echo "scaling.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --tasks) tasks=${2:?}; shift 2 ;;
    --workers) workers=${2:?}; shift 2 ;;
    --repeat) repeat=${2:?}; shift 2 ;;
    --quick) tasks=20000; repeat=1; write=0; shift ;;
    --redis-url) redis_url=${2:?}; shift 2 ;;
    --celeriac) celeriac=${2:?}; shift 2 ;;
    --label) label=${2:?}; shift 2 ;;
    --out) out=${2:?}; write=1; shift 2 ;;
    --no-write) write=0; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $tasks =~ ^[1-9][0-9]*$ ]] || die "--tasks must be a positive number"
[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "--repeat must be a positive number"
for w in $workers; do [[ $w =~ ^[1-9][0-9]*$ ]] || die "--workers: '$w' is not a positive number"; done
[[ $redis_url =~ ^redis://[^/]+/[0-9]+$ ]] || die "--redis-url must name a db number (got $redis_url)"
[[ ${redis_url##*/} != 0 ]] || die "refusing db 0 of $redis_url: the benchmark flushes its db"

work=$(mktemp -d /tmp/celeriac-scaling.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  if [[ -x .venv/bin/python ]]; then flushdb >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

source bench/common.sh
bench_prepare
redis_version=$(bench_redis_version) || exit 2
git_fact=$(bench_git_fact)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at start: $load_start"

queue=celeriac-scaling
for r in $(seq 1 "$repeat"); do
  for n in $workers; do
    flushdb
    "$celeriac" --log warn --broker "$redis_url" bench --enqueue-only --queue "$queue" --tasks "$tasks" --json \
      >"$work/enqueue.out" 2>"$work/enqueue.err" || { cat "$work/enqueue.err" >&2; die "enqueue failed"; }
    load1=$(cut -d' ' -f1 /proc/loadavg)
    say "run $r: $n worker process(es) drain $tasks tasks (load $load1)"
    pids=()
    for w in $(seq 1 "$n"); do
      "$celeriac" --log warn --broker "$redis_url" bench --drain-only --queue "$queue" -c 2 --json \
        >"$work/run$r-n$n-w$w.out" 2>"$work/run$r-n$n-w$w.err" &
      pids+=($!)
    done
    for pid in "${pids[@]}"; do
      wait "$pid" || { cat "$work"/run"$r"-n"$n"-w*.err >&2; die "a drain failed"; }
    done
    pids=()
    for w in $(seq 1 "$n"); do tail -n 1 "$work/run$r-n$n-w$w.out" >"$work/run$r-n$n-w$w.json"; done
    echo "{\"run\": $r, \"workers\": $n, \"tasks\": $tasks, \"load1\": $load1}" >"$work/run$r-n$n.json"
  done
done
flushdb
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at end: $load_end"

bench_facts "$work/facts.json" "{\"tasks\": $tasks}"

report=("$py" bench/load_report.py scaling --work "$work")
if ((write)); then
  "${report[@]}" --out "$out" --docs docs
  say "wrote the section into $out and the chart into docs/"
else
  "${report[@]}"
fi
