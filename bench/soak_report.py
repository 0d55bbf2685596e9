"""Report of bench/soak.sh: joins the producer's send record, the worker's run record,
the worker's RSS samples and the producer's queue-depth samples; prints a Markdown
section (with --out: written between the <!-- bench/soak.sh:begin broker=B --> / end
markers of that file) and exits 1 when a check fails. Standard library only.

    python bench/soak_report.py --work DIR [--out BENCHMARKS.md]

Checks: every task sent ran exactly once (the `flaky` ones exactly twice: the failed
first run and its retry), no run of a task that was not sent, every stored result
right (checked by the producer); the worker's RSS did not trend upward (largest
sample of the last minute ≤ 1.2 × that of the first minute).
"""

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

RSS_GROWTH_LIMIT = 1.2
KINDS = ["short", "long", "result", "flaky", "fail"]


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def ms(x):
    return "–" if x is None else f"{x:.2f} ms"


def check(ok):
    return "✅" if ok else "❌"


def read_lines(path):
    p = Path(path)
    return [line.split() for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def analyse(work):
    work = Path(work)
    facts = json.loads((work / "facts.json").read_text())
    prod = json.loads((work / "producer.json").read_text())
    wpath = work / "worker.json"
    worker = json.loads(wpath.read_text()) if wpath.exists() and wpath.read_text().strip() else {}
    sent = {}  # id -> (kind, sent_unix)
    for kind, tid, at in read_lines(work / "sent.log"):
        sent[tid] = (kind, float(at))
    runs = defaultdict(list)  # id -> [(retries, start)]
    run_rows = []
    for kind, tid, retries, start, sent_at in read_lines(work / "runs.log"):
        runs[tid].append((int(retries), float(start)))
        run_rows.append((kind, tid, int(retries), float(start), None if sent_at == "-" else float(sent_at)))
    rss = [(float(t), float(r), float(l)) for t, r, l in read_lines(work / "rss.log")]

    # Exactly once.
    problems = Counter()
    for tid, (kind, _) in sent.items():
        got = sorted(r for r, _ in runs.get(tid, []))
        want = [0, 1] if kind == "flaky" else [0]
        if got != want:
            if not got:
                problems[f"{kind}: never ran"] += 1
            elif len(got) > len(want):
                problems[f"{kind}: ran {len(got)} times"] += 1
            else:
                problems[f"{kind}: runs {got}"] += 1
    unknown = sum(1 for tid in runs if tid not in sent)
    if unknown:
        problems["runs of tasks not sent"] = unknown
    wrong_results = sum(v.get("wrong", 0) for v in (prod.get("results_checked") or {}).values())
    checked_results = sum(v.get("ok", 0) + v.get("wrong", 0) for v in (prod.get("results_checked") or {}).values())

    # Per minute, from the first send.
    t0 = min(at for _, at in sent.values())
    minutes = max(1, round(prod["minutes"]))
    def minute_of(t):
        return min(int((t - t0) // 60), minutes)  # the tail after sending joins row `minutes`
    rows = defaultdict(lambda: {"sent": 0, "runs": 0, "short_waits": [], "long_waits": [], "rss": [], "load": [],
                                "short_depth": 0, "long_depth": 0})
    for kind, at in sent.values():
        rows[minute_of(at)]["sent"] += 1
    for kind, tid, retries, start, sent_at in run_rows:
        row = rows[minute_of(start)]
        row["runs"] += 1
        if retries == 0 and sent_at is not None:
            (row["long_waits"] if kind == "long" else row["short_waits"]).append((start - sent_at) * 1000)
    for t, r, l in rss:
        if t >= t0:
            rows[minute_of(t)]["rss"].append(r)
            rows[minute_of(t)]["load"].append(l)
    # Depth samples are seconds since the producer's start (≈ t0).
    for secs, sr, sh, lr, lh in prod.get("depths", []):
        row = rows[min(int(secs // 60), minutes)]
        row["short_depth"] = max(row["short_depth"], sr + sh)
        row["long_depth"] = max(row["long_depth"], lr + lh)
    all_short = [w for r in rows.values() for w in r["short_waits"]]
    all_long = [w for r in rows.values() for w in r["long_waits"]]
    full = [m for m in sorted(rows) if m < minutes and rows[m]["rss"]]
    first_rss = max(rows[full[0]]["rss"]) if full else None
    last_rss = max(rows[full[-1]]["rss"]) if full else None
    rss_ok = bool(full) and last_rss <= RSS_GROWTH_LIMIT * first_rss
    ok_once = not problems
    ok_results = wrong_results == 0 and prod.get("send_errors", 0) == 0
    return {
        "facts": facts, "prod": prod, "worker": worker, "rows": rows, "minutes": minutes,
        "sent": sent, "runs": runs, "run_rows": run_rows, "problems": problems,
        "wrong_results": wrong_results, "checked_results": checked_results,
        "all_short": all_short, "all_long": all_long, "first_rss": first_rss, "last_rss": last_rss,
        "rss_ok": rss_ok, "ok_once": ok_once, "ok_results": ok_results, "rss": rss,
        "ok": ok_once and ok_results and rss_ok,
    }


def render(a):
    f, prod, rows = a["facts"], a["prod"], a["rows"]
    broker = f["broker"]
    names = {"redis": "Redis", "sqlite": "embedded SQLite", "amqp": "RabbitMQ (results on Redis)"}
    lines = [f"<!-- bench/soak.sh:begin broker={broker} (generated; rerun the command below to update) -->", ""]
    lines.append(f"### Soak: {prod['minutes']:g} minutes on {names[broker]} ({f['date']})")
    lines.append("")
    lines += ["```sh", f["command"], "```", ""]
    redis = f"Redis {f['redis']} ({f['redis_url']}, flushed before and after); " if f.get("redis") else ""
    lines.append(
        f"Machine: {f['nproc']} cores ({f['cpu']}), {f['mem_gib']} GiB, Linux {f['kernel']}; {redis}celeriac "
        f"{f['git']} (rustc {f['rustc']}, release). **Load average (1/5/15 min): {f['load_start']} at start, "
        f"{f['load_end']} at end** (a CI run and other builds share the 2 cores)."
    )
    lines.append("")
    s = prod["sent"]
    lines.append(
        f"One worker process (`celeriac bench --soak-worker`: `short-task` {prod['short_slots']} slots, prefetch "
        f"×{prod['prefetch_multiplier']}; `long-task` {prod['long_slots']} slots, prefetch ×1) and one producer "
        f"(`celeriac bench --soak`) sending {prod['rate_per_s']:g} tasks/s one `send_task` at a time "
        f"(achieved {prod['sent_per_s']:.1f}/s): {s['short']:,} short 1 ms, {s['result']:,} with a stored result, "
        f"{s['flaky']:,} that fail once and retry after 1 s, {s['fail']:,} that always fail (FAILURE stored) on "
        f"`short-task`; {s['long']:,} of 200 ms on `long-task`. Wait = task start − send time (first runs). "
        f"Depth = ready + held, the largest of the minute's 1 s samples. RSS = the worker process's VmRSS, "
        f"sampled every second."
    )
    lines.append("")
    lines.append("| minute | sent | runs | runs/s | short-task wait p50 / p99 / max | long-task wait p99 "
                 "| max depth short / long | worker RSS min–max | load (1 min) |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for m in sorted(rows):
        r = rows[m]
        label = f"{m + 1}" if m < a["minutes"] else "after sending"
        sw = r["short_waits"]
        rss = f"{min(r['rss']):.1f}–{max(r['rss']):.1f} MiB" if r["rss"] else "–"
        load = f"{max(r['load']):.2f}" if r["load"] else "–"
        secs = (min(60.0, prod["send_secs"] - 60 * m) if m < a["minutes"]
                else max(prod.get("drain_after_send_secs", 60), 1))
        secs = max(secs, 1.0)
        lines.append(
            f"| {label} | {r['sent']:,} | {r['runs']:,} | {r['runs'] / secs:,.1f} | "
            f"{ms(pct(sw, 50))} / {ms(pct(sw, 99))} / {ms(max(sw) if sw else None)} | {ms(pct(r['long_waits'], 99))} | "
            f"{r['short_depth']:,} / {r['long_depth']:,} | {rss} | {load} |"
        )
    lines.append("")
    total_sent = len(a["sent"])
    total_runs = len(a["run_rows"])
    flaky = s["flaky"]
    lines.append("Checks:")
    lines.append("")
    lines.append(
        f"- every task accounted for: {total_sent:,} sent, {total_runs:,} runs (= sent + {flaky:,} retries "
        f"of the flaky tasks: {total_sent + flaky:,}); "
        + ("each ran exactly once, each flaky task exactly twice ✅" if a["ok_once"]
           else "PROBLEMS: " + ", ".join(f"{k} × {v}" for k, v in a["problems"].items()) + " ❌")
    )
    lines.append(
        f"- stored results: {a['checked_results']:,} checked (result and flaky tasks SUCCESS with their value, "
        f"failing tasks FAILURE), {a['wrong_results']} wrong; send errors {prod.get('send_errors', 0)} "
        f"{check(a['ok_results'])}"
    )
    lines.append(
        f"- worker RSS flat: largest sample {a['first_rss']:.1f} MiB in the first minute, {a['last_rss']:.1f} MiB in "
        f"the last (limit ×{RSS_GROWTH_LIMIT}) {check(a['rss_ok'])}; peak (VmHWM) "
        f"{a['worker'].get('peak_rss_mb', 0):.1f} MiB"
    )
    lines.append(
        f"- short-task wait over the whole soak: p50 {ms(pct(a['all_short'], 50))}, p99 {ms(pct(a['all_short'], 99))}, "
        f"p99.9 {ms(pct(a['all_short'], 99.9))}, max {ms(max(a['all_short']) if a['all_short'] else None)} "
        f"({len(a['all_short']):,} first runs); long-task wait p99 {ms(pct(a['all_long'], 99))}"
    )
    lines.append(
        f"- after the last send the queues were empty within {prod.get('drain_after_send_secs', 0):.1f} s "
        f"(including the 3 s of quiet the producer waits for late retries)"
    )
    lines.append("")
    lines.append(f"<!-- bench/soak.sh:end broker={broker} -->")
    return "\n".join(lines) + "\n"


def insert(path, broker, section):
    begin, end = f"<!-- bench/soak.sh:begin broker={broker}", f"<!-- bench/soak.sh:end broker={broker} -->"
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    elif "<!-- bench/soak.sh:end" in text:
        i = text.rindex("<!-- bench/soak.sh:end")
        i = text.index("-->", i) + 3
        text = text[:i] + "\n\n" + section.rstrip("\n") + text[i:]
    elif "## RabbitMQ (AMQP)" in text:
        i = text.index("## RabbitMQ (AMQP)")
        text = text[:i] + section + "\n" + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    a = analyse(args.work)
    section = render(a)
    print(section)
    if args.out:
        insert(args.out, a["facts"]["broker"], section)
    if not a["ok"]:
        print("soak_report.py: a check failed (see the section)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
