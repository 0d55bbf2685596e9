#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/) from
PROTOCOL.md's captured messages (section 7) and a few hand-written cases.

Usage: python3 fuzz/seeds.py [PATH/TO/PROTOCOL.md]   (default: /work/shared/PROTOCOL.md)
The corpus is committed; run this again only to refresh it from the spec. Files named
regression-* are inputs that once crashed a target; they are kept by hand.
"""
import base64
import hashlib
import json
import pathlib
import re
import sys

here = pathlib.Path(__file__).resolve().parent
spec = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/PROTOCOL.md").read_text()
section7 = spec[spec.index("## 7. Real captured examples"):]


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    folder = here / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


envelopes, bodies, keys = [], [], set()
for block in re.findall(r"```json\n(.*?)```", section7, re.S):
    try:
        value = json.loads(block)
    except ValueError:
        continue
    if isinstance(value, dict) and "body" in value and "properties" in value:
        envelopes.append(value)
        info = value["properties"].get("delivery_info") or {}
        if info.get("routing_key"):
            keys.add(info["routing_key"])
        if isinstance(value["body"], str):
            try:
                bodies.append(base64.b64decode(value["body"]))
            except ValueError:
                pass
        else:
            bodies.append(json.dumps(value["body"]).encode())
    elif isinstance(value, list) and len(value) == 3:
        bodies.append(json.dumps(value).encode())

for envelope in envelopes:
    compact = json.dumps(envelope, separators=(",", ":"))
    write("kombu_envelope", compact)
    write("task_message", compact)
for body in bodies:
    write("task_message", body)
# Hostile shapes the decoder must refuse with a reason.
for extra in [
    b"[[1, 2], {}]",
    b'{"task": "tasks.add", "id": "v1", "args": [1, 2], "kwargs": {}}',
    b"[" * 200 + b"]" * 200,
    b'[["\xff\xfe"], {}, null]',
    b'[[], {}, {"chain": [{"task": "t", "args": [], "kwargs": {}, "options": {}}]}]',
]:
    write("task_message", extra)
write("kombu_envelope", b'{"body": "not base64!", "properties": {"body_encoding": "base64"}}')
write("kombu_envelope", b'{"body": [1, 2], "headers": {"task": "t"}, "properties": {}}')

for cron in [
    "* * * * *", "*/15 * * * *", "0 9 * * mon-fri", "0 0 1 * *", "30 3 * * 1,3,5",
    "0 */2 1-15 jan,jul *", "0 0 29 2 *", "5-55/10 8-18/2 */3 */2 sun", "0 0 31 4 *",
    "59 23 31 12 sat",
]:
    write("crontab", cron)

for pattern, key in [
    ("#", "celery"), ("*", "celery"), ("long.#", "long.files.process"),
    ("short.*", "short.notify"), ("*.heartbeat", "worker.heartbeat"), ("task.#", "task.multi"),
    ("worker.#", "worker.online"), ("#.#.#.x", "a.b.c.d.e.f"), ("a.*.#.b", "a.x.b"), ("", ""),
]:
    write("routing_key", f"{pattern}\n{key}")
for key in sorted(keys):
    write("routing_key", f"#\n{key}")
print({t.name: len(list(t.iterdir())) for t in sorted((here / "corpus").iterdir())})
