#!/usr/bin/env bash
# Load (issue 9 §4, issue 10 §2): a million no-op tasks waiting, drained by ONE
# worker process; its resident memory must not grow with the queue's depth.
#
# For each broker (Redis on a db of its own, embedded SQLite in a temp file) and each
# depth (default 10,000, 100,000 and 1,000,000):
#   1. a producer process enqueues DEPTH no-op tasks, batched
#      (`celeriac bench --enqueue-only`, batches of 1,000);
#   2. at the largest depth only: an idle `celeriac worker -c 2` on another queue runs
#      for 5 s while the DEPTH tasks wait (its RSS: "idle, 1M waiting elsewhere");
#   3. one worker process (`celeriac bench --drain-only -c 2`, prefetch x128: a
#      process that runs only a worker on that queue) drains them, sampling its own
#      RSS and processed count every 100 ms.
# Then it reports per broker: RSS before the worker starts (1M waiting), with ~1M
# waiting (the first 5 % drained), peak (VmHWM), at the end; the drain rate; the drain
# rate against depth (docs/scaling-depth.png, docs/scaling-depth.csv), the RSS over
# the 1M drain (docs/load-rss.png); and checks that the worker's peak RSS at the
# largest depth is within max(2 MiB, 10 %) of its peak at the smallest. The section
# goes into BENCHMARKS.md between the <!-- bench/load.sh:begin --> / end markers.
# Exit status 1 when a memory check fails (the section and charts are written anyway):
# the peak RSS, or its anonymous part (heap), of the largest depth beyond max(2 MiB,
# 10 %) of the smallest depth's, or, within the largest run, the RSS with the queue
# full beyond that bound above the RSS with it empty.
#
#   bash bench/load.sh                       # 1M on Redis and SQLite (~10 minutes)
#   bash bench/load.sh --quick               # depths 2,000 and 20,000; prints only
#
# Options:
#   --depths "A B C"   queue depths, ascending (default "10000 100000 1000000")
#   --brokers "..."    any of redis sqlite (default "redis sqlite")
#   --redis-url URL    a Redis db of its own (default redis://127.0.0.1:6379/14);
#                      FLUSHDB'd before and after; db 0 refused
#   --celeriac PATH    the celeriac binary (default: cargo build --release, into
#                      $CARGO_TARGET_DIR or target/)
#   --label TEXT       what the binary is built from (default: the commit)
#   --out FILE         write the section into FILE (default BENCHMARKS.md); --no-write
#                      prints it only (and leaves docs/ alone)
#   --keep DIR         keep the raw JSON of every run in DIR
#
# Needs: a Redis server, python3 (the .venv of scripts/python-env.sh, for redis-py and
# matplotlib), cargo unless --celeriac.
set -euo pipefail
cd "$(dirname "$0")/.."

depths="10000 100000 1000000"
brokers="redis sqlite"
redis_url=redis://127.0.0.1:6379/14
celeriac=""
label=""
out=BENCHMARKS.md
write=1
keep=""
command_line="bash bench/load.sh$(printf ' %q' "$@")"

die() { echo "load.sh: $*" >&2; exit 2; }
say() { echo "load.sh: $*" >&2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --depths) depths=${2:?}; shift 2 ;;
    --brokers) brokers=${2:?}; shift 2 ;;
    --quick) depths="2000 20000"; write=0; shift ;;
    --redis-url) redis_url=${2:?}; shift 2 ;;
    --celeriac) celeriac=${2:?}; shift 2 ;;
    --label) label=${2:?}; shift 2 ;;
    --out) out=${2:?}; write=1; shift 2 ;;
    --no-write) write=0; shift ;;
    --keep) keep=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
for d in $depths; do [[ $d =~ ^[1-9][0-9]*$ ]] || die "--depths: '$d' is not a positive number"; done
for b in $brokers; do [[ $b == redis || $b == sqlite ]] || die "--brokers: '$b' is not redis or sqlite"; done
[[ $redis_url =~ ^redis://[^/]+/[0-9]+$ ]] || die "--redis-url must name a db number (got $redis_url)"
[[ ${redis_url##*/} != 0 ]] || die "refusing db 0 of $redis_url: the benchmark flushes its db"
max_depth=$(tr ' ' '\n' <<<"$depths" | sort -n | tail -n 1)

work=$(mktemp -d /tmp/celeriac-load.XXXXXX)
idle_pid=""
cleanup() {
  if [[ -n $idle_pid ]] && kill -0 "$idle_pid" 2>/dev/null; then kill -TERM "$idle_pid" 2>/dev/null || true; fi
  if [[ -x .venv/bin/python ]]; then flushdb >/dev/null 2>&1 || true; fi
  if [[ -n $keep ]]; then mkdir -p "$keep" && cp "$work"/*.json "$keep"/ 2>/dev/null || true; fi
  rm -rf "$work" # the SQLite files of a million tasks (≈ 1 GB) live here
}
trap cleanup EXIT

source bench/common.sh
bench_prepare
if [[ $brokers == *redis* ]]; then
  redis_version=$(bench_redis_version) || exit 2
else
  redis_version=""
fi

git_fact=$(bench_git_fact)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at start: $load_start"

rss_of() { awk '/^VmRSS/ {printf "%.3f", $2/1024}' "/proc/$1/status"; }

run=0
for broker in $brokers; do
  for depth in $depths; do
    run=$((run + 1))
    queue="celeriac-load-$depth"
    if [[ $broker == redis ]]; then
      url=$redis_url
      flushdb
    else
      rm -f "$work"/load.db*
      url="sqlite://$work/load.db"
    fi
    say "$broker: enqueue $depth tasks (load $(cut -d' ' -f1 /proc/loadavg))"
    "$celeriac" --log warn --broker "$url" bench --enqueue-only --queue "$queue" --tasks "$depth" --json \
      >"$work/$broker-$depth-enqueue.out" 2>"$work/$broker-$depth-enqueue.err" \
      || { cat "$work/$broker-$depth-enqueue.err" >&2; die "enqueue failed"; }
    tail -n 1 "$work/$broker-$depth-enqueue.out" >"$work/$broker-$depth-enqueue.json"

    if [[ $depth == "$max_depth" ]]; then
      say "$broker: idle worker on another queue while $depth tasks wait"
      "$celeriac" --log warn --broker "$url" worker -Q celeriac-load-idle -c 2 >"$work/idle.log" 2>&1 &
      idle_pid=$!
      sleep 2
      idle_2=$(rss_of "$idle_pid") || { cat "$work/idle.log" >&2; die "the idle worker exited"; }
      sleep 3
      idle_5=$(rss_of "$idle_pid") || { cat "$work/idle.log" >&2; die "the idle worker exited"; }
      kill -TERM "$idle_pid"
      wait "$idle_pid" || true
      idle_pid=""
      echo "{\"rss_2s_mb\": $idle_2, \"rss_5s_mb\": $idle_5}" >"$work/$broker-idle.json"
    fi

    load_before=$(cut -d' ' -f1 /proc/loadavg)
    say "$broker: drain $depth tasks with one worker process (-c 2)"
    "$celeriac" --log warn --broker "$url" bench --drain-only --queue "$queue" -c 2 --json \
      >"$work/$broker-$depth-drain.out" 2>"$work/$broker-$depth-drain.err" \
      || { cat "$work/$broker-$depth-drain.err" >&2; die "drain failed"; }
    tail -n 1 "$work/$broker-$depth-drain.out" >"$work/$broker-$depth-drain.json"
    load_after=$(cut -d' ' -f1 /proc/loadavg)
    "$py" - "$work/$broker-$depth-drain.json" "$load_before" "$load_after" <<'PY'
import json, sys
path, before, after = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.load(open(path))
d["load1_before"], d["load1_after"] = float(before), float(after)
json.dump(d, open(path, "w"))
print(f"load.sh:   {d['processed']:,} of {d['waiting_at_start']:,} in {d['secs']:.1f} s = {d['drain_per_s']:,.0f}/s; "
      f"RSS before {d['rss_mb']['before_worker']:.1f}, peak {d['peak_rss_mb']:.1f}, end {d['rss_mb']['last']:.1f} MiB",
      file=sys.stderr)
PY
    if [[ $broker == sqlite ]]; then rm -f "$work"/load.db*; fi
  done
done
if [[ $brokers == *redis* ]]; then flushdb; fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
say "load average at end: $load_end"

bench_facts "$work/facts.json" "$("$py" -c 'import json, sys; print(json.dumps({"depths": [int(d) for d in sys.argv[1].split()], "brokers": sys.argv[2].split()}))' "$depths" "$brokers")"

report=("$py" bench/load_report.py load --work "$work")
status=0
if ((write)); then
  "${report[@]}" --out "$out" --docs docs || status=$?
  say "wrote the section into $out and the charts into docs/"
else
  "${report[@]}" || status=$?
fi
exit "$status"
