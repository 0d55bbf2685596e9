"""Redis's own CPU per message for the Redis broker's fetch and ack (issue 9).

Runs the broker's real `claim.lua` and `ack.lua` (crates/celeriac-broker/src/redis/lua/)
against a Redis db of its own, on messages of the shape `celeriac bench` sends, in a
steady state like a worker's (claim a batch, keep two batches held, ack the oldest), and
reads Redis's own time for each call from INFO commandstats: what Redis spends per
message, without the client's share and without the wait of a loaded machine. For
comparison it does the same with the commands kombu's Redis transport sends for a
message (BRPOP as RPOP of a batch, HSET unacked + ZADD unacked_index in MULTI, then
ZREM + HDEL): the layout without celeriac's leases.

The figure bounds a Redis drain: one Redis core spends this much per message whatever
the workers do, so 1e6 / (claim + ack) tasks/s is the most one Redis can drain.

    .venv/bin/python bench/redis_scripts.py                 # batches 16, 64, 256
    .venv/bin/python bench/redis_scripts.py --messages 50000 --batches 64

Options: --redis-url (default redis://127.0.0.1:6379/15; FLUSHDB'd before and after,
db 0 refused), --messages N per batch size (default 20000), --batches "16 64 256",
--sample FILE (one envelope as `celeriac bench` stores it; default: the built-in one).
Needs the venv's redis package (scripts/python-env.sh).
"""

import argparse
import json
import pathlib
import statistics
import sys
import uuid

import redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
LUA = ROOT / "crates/celeriac-broker/src/redis/lua"

# A no-op task's envelope as `celeriac bench` publishes it to Redis (kombu's layout);
# TAG and ID are replaced per message.
SAMPLE = (
    '{"body":"W1tdLHt9LHsiY2FsbGJhY2tzIjpudWxsLCJlcnJiYWNrcyI6bnVsbCwiY2hhaW4iOm51bGws'
    'ImNob3JkIjpudWxsfV0=","content-encoding":"utf-8","content-type":"application/json",'
    '"headers":{"lang":"rust","task":"celeriac.bench.noop","id":"ID","shadow":null,'
    '"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,'
    '"timelimit":[null,null],"root_id":"ID","parent_id":null,"argsrepr":"()",'
    '"kwargsrepr":"{}","origin":"gen1@host","ignore_result":true,'
    '"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}},"properties":'
    '{"correlation_id":"ID","reply_to":"","delivery_mode":2,"delivery_info":'
    '{"exchange":"","routing_key":"bench"},"priority":0,"body_encoding":"base64",'
    '"delivery_tag":"TAG"}}'
)

QUEUE = "bench"
# The queue's lists: the queue itself and kombu's priority lists 3, 6, 9.
LISTS = [QUEUE] + [f"{QUEUE}\x06\x16{p}" for p in (3, 6, 9)]
HELD_KEYS = ["unacked", "unacked_index", "celeriac.leases"]
CLAIM_KEYS = HELD_KEYS + ["celeriac.lost_claim:1", "celeriac.dead_letters", "celeriac.dead_letter_counts"] + LISTS


def script_usec(r):
    """Redis's time in EVALSHA calls so far (the commands a script calls are counted
    within it)."""
    return r.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)


def command_usec(r):
    """Redis's time in commands so far, scripts and INFO's own calls left out."""
    stats = r.info("commandstats")
    return sum(v["usec"] for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_evalsha"))


def prefill(r, template, n):
    r.flushdb()
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.lpush(QUEUE, template.replace("TAG", str(uuid.uuid4())).replace("ID", str(uuid.uuid4())))
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def run_celeriac(r, template, n, batch, lua=LUA):
    """claim.lua / ack.lua in a worker's steady state: Redis µs per message."""
    prefill(r, template, n)
    claim = r.register_script((lua / "claim.lua").read_text())
    ack = r.register_script((lua / "ack.lua").read_text())
    held, claim_us, ack_us, claimed, number = [], 0, 0, 0, 1

    def ack_oldest():
        nonlocal held, ack_us
        args = held[:batch]
        before = script_usec(r)
        ack(keys=HELD_KEYS, args=args)
        ack_us += script_usec(r) - before
        held = held[batch:]

    while True:
        before = script_usec(r)
        out = claim(keys=CLAIM_KEYS, args=[batch, 300000, number] + [json.dumps(QUEUE)] * len(LISTS))
        claim_us += script_usec(r) - before
        if not out:
            break
        # Two entries per message; the k-th is held as claim * 1000 + k.
        held += [str(number * 1000 + k) for k in range(1, len(out) // 2 + 1)]
        claimed += len(out) // 2
        number += 1
        while len(held) > 2 * batch:
            ack_oldest()
    while held:
        ack_oldest()
    if claimed != n or r.hlen("unacked") != 0:
        sys.exit(f"redis_scripts: claimed {claimed} of {n}, {r.hlen('unacked')} left held")
    return claim_us / n, ack_us / n


def run_kombu(r, template, n, batch):
    """kombu's commands for the same messages: Redis µs per message."""
    prefill(r, template, n)
    held, claim_us, ack_us, claimed = [], 0, 0, 0

    def ack_oldest():
        nonlocal held, ack_us
        before = command_usec(r)
        pipe = r.pipeline(transaction=True)
        tags = held[:batch]
        pipe.zrem("unacked_index", *tags)
        pipe.hdel("unacked", *tags)
        pipe.execute()
        ack_us += command_usec(r) - before
        held = held[batch:]

    while True:
        before = command_usec(r)
        items = r.rpop(QUEUE, batch)
        if not items:
            break
        tags = [json.loads(m)["properties"]["delivery_tag"] for m in items]
        pipe = r.pipeline(transaction=True)
        for tag, m in zip(tags, items):
            pipe.zadd("unacked_index", {tag: 1.0})
            pipe.hset("unacked", tag, b"[" + m + b', "", "bench"]')
        pipe.execute()
        claim_us += command_usec(r) - before
        held += tags
        claimed += len(items)
        while len(held) > 2 * batch:
            ack_oldest()
    while held:
        ack_oldest()
    return claim_us / claimed, ack_us / claimed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batches", default="16 64 256")
    parser.add_argument("--sample", type=pathlib.Path)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is kept")
    parser.add_argument("--lua-dir", type=pathlib.Path, default=LUA,
                        help="claim.lua and ack.lua from here (to compare a change with the committed ones)")
    parser.add_argument("--no-kombu", action="store_true", help="skip kombu's commands")
    args = parser.parse_args()
    r = redis.Redis.from_url(args.redis_url)
    if r.connection_pool.connection_kwargs.get("db", 0) == 0:
        sys.exit("redis_scripts: give it a db of its own (not 0): it is flushed")
    template = args.sample.read_text().strip() if args.sample else SAMPLE
    if args.sample:
        envelope = json.loads(template)
        tag, tid = envelope["properties"]["delivery_tag"], envelope["headers"]["id"]
        template = template.replace(tag, "TAG").replace(tid, "ID")
    print(f"Envelope of {len(template.replace('TAG', 'x' * 36).replace('ID', 'x' * 36))} bytes, "
          f"{args.messages} messages per run, median of {args.repeat}, Redis "
          f"{r.info('server')['redis_version']}.")
    print()
    print("| batch | celeriac claim.lua | ack.lua | sum | one Redis core drains at most | kombu's commands (claim + ack) |")
    print("|---|---|---|---|---|---|")
    try:
        for batch in (int(b) for b in args.batches.split()):
            ours = [run_celeriac(r, template, args.messages, batch, args.lua_dir) for _ in range(args.repeat)]
            theirs = [] if args.no_kombu else [run_kombu(r, template, args.messages, batch) for _ in range(args.repeat)]
            claim = statistics.median(c for c, _ in ours)
            ack = statistics.median(a for _, a in ours)
            kombu = f"{statistics.median(c + a for c, a in theirs):.1f} µs" if theirs else "–"
            print(f"| {batch} | {claim:.1f} µs | {ack:.1f} µs | {claim + ack:.1f} µs | "
                  f"{1e6 / (claim + ack):,.0f}/s | {kombu} |")
    finally:
        r.flushdb()


if __name__ == "__main__":
    main()
