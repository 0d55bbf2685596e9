"""Renders bench/compare.sh's measurements as a Markdown section; with --out, replaces
the section between the markers in that file (inserted before "## Store-level
throughput", or appended, the first time). Standard library only."""

import argparse
import json
import sys
from pathlib import Path

MARK = "<!-- bench/compare.sh:"


def markers(tasks):
    """One generated section per task count, so the 20,000 and 100,000 runs coexist."""
    return (
        f"{MARK}begin tasks={tasks} (generated; rerun the command below to update) -->",
        f"{MARK}end tasks={tasks} -->",
    )


def load(work, name):
    path = Path(work) / f"{name}.json"
    if not path.exists():
        return None
    text = path.read_text().strip()
    return json.loads(text) if text else None


def rate(x):
    return "–" if x is None else f"{x:,.0f}/s"


def ms(x):
    return "–" if x is None else f"{x:.2f} ms"


def mb(x):
    return "–" if x is None else f"{x:.1f} MiB"


def ratio(a, b):
    """a / b as 'N×'."""
    if not a or not b:
        return "–"
    r = a / b
    return f"**{r:,.1f}×**" if r < 100 else f"**{r:,.0f}×**"


def check(ok):
    return "✅" if ok else "❌"


def render(work, load_end):
    f = load(work, "facts")
    cr = load(work, "celeriac-redis")
    crr = load(work, "celeriac-redis-results")
    cs = load(work, "celeriac-sqlite")
    idle = load(work, "celeriac-idle")
    py = load(work, "celery")
    if not (f and cr and py):
        sys.exit("render.py: measurements missing in " + str(work))
    n = f["tasks"]
    begin, end = markers(n)
    lines = [begin, ""]
    lines.append(f"### {n:,} tasks, Redis {f['redis']} on loopback ({f['date']})")
    lines.append("")
    lines.append("```sh")
    lines.append(f["command"])
    lines.append("```")
    lines.append("")
    lines.append(
        f"Machine: {f['nproc']} cores ({f['cpu']}), {f['mem_gib']} GiB, Linux {f['kernel']}; "
        f"Redis {f['redis']} ({f['redis_url']}, flushed before and after); Python Celery "
        f"{py['celery']} on Python {f['python']}; celeriac: {f['git']} (rustc {f['rustc']}, release). "
        f"**Load average (1/5/15 min): {f['load_start']} at start, {load_end} at end** "
        f"(other builds share the 2 cores)."
    )
    lines.append("")
    lines.append(
        f"Workload: {n:,} no-op tasks, JSON, one queue, `-c 2` on both sides "
        f"(Celery: `celery worker --pool prefork -c 2`, default settings, prefetch ×4; "
        f"celeriac: `celeriac bench`, prefetch ×{cr['prefetch_multiplier']}). Ratio = celeriac ÷ Celery "
        f"for rates, Celery ÷ celeriac for times and memory."
    )
    lines.append("")
    sq = cs or {}
    has_sqlite = cs is not None
    head = "| workload | Python Celery | celeriac (Redis) | ratio | target (issue) |"
    sep = "|---|---|---|---|---|"
    if has_sqlite:
        head += " celeriac (SQLite) |"
        sep += "---|"
    lines += [head, sep]

    def row(name, celery, celeriac, rat, target, sqlite="–"):
        line = f"| {name} | {celery} | {celeriac} | {rat} | {target} |"
        if has_sqlite:
            line += f" {sqlite} |"
        lines.append(line)

    # Enqueue.
    e1c, e1r = py.get("enqueue_single_per_s"), cr.get("enqueue_single_per_s")
    r1 = (e1r / e1c) if e1c and e1r else 0
    row(
        "enqueue, one call at a time (`delay()` / `send_task`)",
        rate(e1c), rate(e1r), ratio(e1r, e1c),
        f"≥ 20× (9) {check(r1 >= 20)}",
        rate(sq.get("enqueue_single_per_s")),
    )
    e1d = cr.get("enqueue_single_deferred_per_s")
    r1d = (e1d / e1c) if e1c and e1d else 0
    row(
        "enqueue, one call at a time, deferred confirms (`PublishConfirms::Deferred`)",
        rate(e1c), rate(e1d), ratio(e1d, e1c),
        f"≥ 20× (9) {check(r1d >= 20)}",
        rate(sq.get("enqueue_single_deferred_per_s")),
    )
    ebc, ebr = py.get("enqueue_group_per_s"), cr.get("enqueue_per_s")
    rb = (ebr / ebc) if ebc and ebr else 0
    row(
        f"enqueue, batched (Celery: `group().apply_async()` per {py['batch']:,}; celeriac: `send_batch` per {cr['batch']:,})",
        rate(ebc), rate(ebr), ratio(ebr, ebc),
        f"≥ 10× (3) {check(rb >= 10)}; ≥ 100× (9) {check(rb >= 100)}",
        rate(sq.get("enqueue_per_s")),
    )
    # Drain.
    dc, dr = py["drain"]["drain_per_s"], cr.get("drain_per_s")
    rd = (dr / dc) if dc and dr else 0
    row(
        "drain prefilled, results ignored",
        rate(dc), rate(dr), ratio(dr, dc),
        f"≥ 20× (3) {check(rd >= 20)}; ≥ 100× and ≈ 50,000/s (9) {check(rd >= 100 and dr >= 50000)}",
        rate(sq.get("drain_per_s")),
    )
    crp = load(work, "celeriac-redis-prefetch4")
    if crp:
        dr4 = crp.get("drain_per_s")
        row("drain prefilled, results ignored, celeriac at Celery's prefetch ×4", rate(dc), rate(dr4),
            ratio(dr4, dc), "–", "–")
    if py.get("drain_results") and crr:
        dc2, dr2 = py["drain_results"]["drain_per_s"], crr.get("drain_per_s")
        row("drain prefilled, results stored", rate(dc2), rate(dr2), ratio(dr2, dc2), "–", "–")
    # Round trip.
    rtc, rtr = py.get("round_trip_ms") or {}, cr.get("round_trip_ms") or {}
    if rtc and rtr:
        p50c, p50r, p99c, p99r = rtc.get("p50"), rtr.get("p50"), rtc.get("p99"), rtr.get("p99")
        sqr = sq.get("round_trip_ms") or {}
        row(
            f"round trip send → result, p50 ({rtr.get('samples', 0)} sequential; `delay().get()` / `send_task` + `get`)",
            ms(p50c), ms(p50r), ratio(p50c, p50r),
            f"< 1 ms (3) {check(p50r < 1)}; ≤ 0.5 ms (9) {check(p50r <= 0.5)}",
            ms(sqr.get("p50")),
        )
        row("round trip, p90", ms(rtc.get("p90")), ms(rtr.get("p90")), ratio(rtc.get("p90"), rtr.get("p90")), "–",
            ms(sqr.get("p90")))
        row("round trip, p99", ms(p99c), ms(p99r), ratio(p99c, p99r), f"≤ 2 ms (9) {check(p99r <= 2)}",
            ms(sqr.get("p99")))
    lat = cr.get("latency_ms") or {}
    sql = sq.get("latency_ms") or {}
    row("send → task start, p50 / p99 (celeriac only)", "–",
        f"{lat.get('p50', 0):.2f} / {lat.get('p99', 0):.2f} ms", "–", "–",
        f"{sql.get('p50', 0):.2f} / {sql.get('p99', 0):.2f} ms" if sql else "–")
    # Memory.
    idle_c = py.get("idle_rss_sum_mb")
    idle_r = idle["rss_mb"] if idle else None
    row(
        "worker RSS, idle (Celery: parent + 2 children summed)",
        f"{mb(idle_c)} (PSS {mb(py.get('idle_pss_sum_mb'))})", mb(idle_r), ratio(idle_c, idle_r),
        f"≤ 20 MB (9) {check(idle_r is not None and idle_r <= 20 * 1e6 / 2**20)}",
    )
    load_c = py["drain"]["rss"]
    row(
        "peak RSS draining (celeriac: the whole bench process, producer + worker)",
        f"{mb(load_c['peak_rss_sum_mb'])} (PSS {mb(load_c['peak_pss_sum_mb'])})",
        mb(cr.get("peak_rss_mb")), ratio(load_c["peak_rss_sum_mb"], cr.get("peak_rss_mb")), "–",
        mb(sq.get("peak_rss_mb")),
    )
    cm, pm = load(work, "celeriac-mixed"), load(work, "celery-mixed")
    if cm and pm:
        pm = pm["mixed"]
        sw_c, sw_r = pm["short_wait_ms"] or {}, cm["short_wait_ms"]
        row(
            f"mixed: short-task wait p99 ({cm['short_tasks']:,} × 1 ms on `short-task` + {cm['long_tasks']:,} × 200 ms "
            f"on `long-task`, {cm['rate_per_s']:.0f}/s)",
            ms(sw_c.get("p99")), ms(sw_r.get("p99")), ratio(sw_c.get("p99"), sw_r.get("p99")),
            f"< 10 ms (9) {check(sw_r.get('p99', 1e9) < 10)}",
        )
        row("mixed: short-task wait p50 / max", f"{sw_c.get('p50', 0):.2f} / {sw_c.get('max', 0):.2f} ms",
            f"{sw_r['p50']:.2f} / {sw_r['max']:.2f} ms", "–", "–")
        row("mixed: long-task slots busy (celeriac: 2 long-task slots; Celery: processes running a long task, of 4)",
            f"{pm.get('long_busy_processes') or 0:.2f} of {pm['concurrency']}",
            f"{cm['long_slots_busy'] * 100:.0f} % of {cm['long_slots']}", "–", "–")
    lines.append("")
    d = py["drain"]
    lines.append(
        "How each figure is taken. *Enqueue*: wall time of N sequential calls into one queue (Celery "
        "has no batch publish; `group().apply_async()` is its closest, and still one `LPUSH` per "
        "message). *Enqueue, deferred confirms*: the same N sequential `send_task` calls from an app "
        "with `PublishConfirms::Deferred`, timed until the final `App::flush()` returned, i.e. every "
        "message stored. *Drain*: the queue is prefilled; celeriac: from worker start until it has run "
        "all N; Celery: from the first message received until the N-th task finished, counted in "
        "the worker's parent process at no cost to the tasks (`bench/celery_app.py`), i.e. its "
        f"start-up is left out (counted from process start it drains {d['drain_from_process_start_per_s']:,}/s; "
        f"start-up {d['startup_s']:.1f} s). *Round trip*: sequential send then wait for the stored "
        "result (Celery: 10 untimed warm-up calls first; celeriac: its worker is already warm from "
        "the drain). *RSS*: Celery sums VmRSS over the prefork parent and its children (shared pages "
        "counted in each; PSS alongside); celeriac's idle figure is a `celeriac worker -c 2` on an "
        "empty queue. *Mixed*: tasks sent one at a time at a steady rate, every 10th a 200 ms task "
        "on `long-task`, the rest 1 ms tasks on `short-task`; wait = task start − send time, taken in "
        "the task. celeriac: one worker, 2 slots per queue (`celeriac bench --mixed`); Celery: one "
        "`celery worker --pool prefork -c 4 -Q short-task,long-task` (as many slots in all), default "
        "settings; at this rate long tasks keep two slots busy."
    )
    lines.append("")
    lines.append(end)
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True)
    ap.add_argument("--load-end", default="?")
    ap.add_argument("--out")
    args = ap.parse_args()
    section = render(args.work, args.load_end)
    print(section)
    if args.out:
        tasks = json.loads((Path(args.work) / "facts.json").read_text())["tasks"]
        begin, end = markers(tasks)
        path = Path(args.out)
        text = path.read_text() if path.exists() else ""
        if begin in text and end in text:
            # Replace this task count's section.
            before = text[: text.index(begin)]
            after = text[text.index(end) + len(end):].lstrip("\n")
            text = before + section + ("\n" + after if after else "")
        elif f"{MARK}end" in text:
            # After the last generated section (of another task count).
            i = text.rindex(f"{MARK}end")
            i = text.index("-->", i) + 3
            text = text[:i] + "\n\n" + section.rstrip("\n") + text[i:]
        elif "## Store-level throughput" in text:
            i = text.index("## Store-level throughput")
            text = text[:i] + section + "\n" + text[i:]
        else:
            text = text.rstrip("\n") + "\n\n" + section
        path.write_text(text)


if __name__ == "__main__":
    main()
