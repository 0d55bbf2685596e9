"""Reports of bench/load.sh and bench/scaling.sh: a Markdown section (printed, and with
--out written between the script's markers in that file), and with --docs the CSV
and PNG charts in that directory (matplotlib, Agg).

    python bench/load_report.py load --work DIR [--out BENCHMARKS.md --docs docs]
    python bench/load_report.py scaling --work DIR [--out BENCHMARKS.md --docs docs]
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

BROKER_NAMES = {"redis": "Redis", "sqlite": "SQLite"}


def load_json(path):
    text = Path(path).read_text().strip()
    return json.loads(text) if text else None


def fmt_rate(x):
    return f"{x:,.0f}/s"


def mib(x):
    return f"{x:.1f} MiB"


def check(ok):
    return "✅" if ok else "❌"


def insert_section(path, script, section):
    """Replaces the text between `<!-- {script}:begin ... -->` and `<!-- {script}:end -->`
    in `path`, or inserts the section before "## RabbitMQ (AMQP)" (or at the end)."""
    begin_mark, end_mark = f"<!-- {script}:begin", f"<!-- {script}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    if begin_mark in text and end_mark in text:
        before = text[: text.index(begin_mark)]
        after = text[text.index(end_mark) + len(end_mark):]
        text = before + section.rstrip("\n") + after
    elif "## RabbitMQ (AMQP)" in text:
        i = text.index("## RabbitMQ (AMQP)")
        text = text[:i] + section + "\n" + text[i:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def machine_line(f, what):
    redis = f"Redis {f['redis']} ({f['redis_url']}, flushed before and after); " if f.get("redis") else ""
    return (
        f"Machine: {f['nproc']} cores ({f['cpu']}), {f['mem_gib']} GiB, Linux {f['kernel']}; {redis}"
        f"celeriac {f['git']} (rustc {f['rustc']}, release). **Load average (1/5/15 min): "
        f"{f['load_start']} at start, {f['load_end']} at end** ({what})."
    )


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------- load


def load_runs(work, f):
    runs = {}
    for broker in f["brokers"]:
        for depth in f["depths"]:
            drain = load_json(Path(work) / f"{broker}-{depth}-drain.json")
            enq = load_json(Path(work) / f"{broker}-{depth}-enqueue.json")
            runs[(broker, depth)] = (enq, drain)
    return runs


def peak(drain):
    """VmHWM at the end, or the largest 100 ms sample if larger (the kernel's per-CPU
    RSS counters make the two differ by a few pages)."""
    return max(drain["peak_rss_mb"], drain["rss_mb"]["max"])


def peak_anon(drain):
    """Largest RssAnon sample (heap and stacks: what the worker allocates itself)."""
    return max(s[3] for s in drain["series"])


def shared_at_peak(drain):
    """RssFile + RssShmem of the sample with the largest RSS."""
    s = max(drain["series"], key=lambda s: s[2])
    return s[4] + s[5]


def rss_with_waiting(drain, share=0.05):
    """Largest RSS sample while at most `share` of the queue had been run (so at least
    95 % still waiting), skipping the first second (the worker starting)."""
    n = drain["waiting_at_start"]
    vals = [s[2] for s in drain["series"] if s[1] <= share * n and s[0] >= 1.0]
    if not vals:
        vals = [s[2] for s in drain["series"][:20]]
    return max(vals)


def render_load(work):
    f = load_json(Path(work) / "facts.json")
    runs = load_runs(work, f)
    small, big = min(f["depths"]), max(f["depths"])
    lines = ["<!-- bench/load.sh:begin (generated; rerun the command below to update) -->", ""]
    lines.append(f"### {big:,} tasks waiting, one worker process ({f['date']})")
    lines.append("")
    lines += ["```sh", f["command"], "```", ""]
    lines.append(machine_line(f, "other processes may share the 2 cores"))
    lines.append("")
    lines.append(
        f"A producer process enqueues the tasks (`celeriac bench --enqueue-only`, batches of 1,000), "
        f"then ONE worker process drains them (`celeriac bench --drain-only -c 2`, prefetch ×128: a "
        f"process that runs only a worker on that queue), sampling its own RSS every 100 ms. "
        f"*Before start*: the worker process connected, its worker not yet started, {big:,} waiting. "
        f"*With ~{big // 1000:,}k waiting*: the largest sample while ≤ 5 % had been run. *Peak*: VmHWM "
        f"of the whole drain. *Idle elsewhere*: a `celeriac worker -c 2` on another queue, 5 s after "
        f"its start, while the {big:,} tasks wait."
    )
    lines.append("")
    lines.append(
        f"| broker | enqueue (batched) | drain, 1 worker `-c 2` | RSS before start | RSS with ~{big // 1000:,}k waiting "
        f"| peak RSS (of which file + shm) | RSS at end | idle worker, {big:,} waiting elsewhere |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for broker in f["brokers"]:
        enq, d = runs[(broker, big)]
        _, d_small = runs[(broker, small)]
        idle_path = Path(work) / f"{broker}-idle.json"
        idle = load_json(idle_path) if idle_path.exists() else None
        lines.append(
            f"| {BROKER_NAMES[broker]} | {fmt_rate(enq['enqueue_per_s'])} | {fmt_rate(d['drain_per_s'])} "
            f"({d['processed']:,} in {d['secs']:.1f} s) | {mib(d['rss_mb']['before_worker'])} | "
            f"{mib(rss_with_waiting(d))} | **{mib(peak(d))}** ({mib(shared_at_peak(d))}) | "
            f"{mib(d['rss_mb']['last'])} | {mib(idle['rss_5s_mb']) if idle else '–'} |"
        )
        verdicts.append((broker, d, d_small))
    lines.append("")
    lines.append(
        f"Does the worker's memory grow with the depth? Three comparisons, each against a bound of max(2 MiB, "
        f"10 %): the peak RSS of the {big:,}-task drain against that of the {small:,}-task drain (separate runs); "
        f"the same for the anonymous part alone (RssAnon: heap and stacks, what the worker allocates; the rest is "
        f"mapped files and shared memory, e.g. SQLite's page cache grows to its cap and the WAL index is mapped "
        f"shared memory); and, within the {big:,}-task run, the RSS with ~{big // 1000:,}k waiting against the "
        f"RSS at the end (nothing waiting: memory held per waiting task would show as a fall)."
    )
    lines.append("")
    lines.append(f"| broker | peak RSS, {big:,} vs {small:,} | peak RssAnon, {big:,} vs {small:,} "
                 f"| in the {big:,} run: ~{big // 1000:,}k waiting vs 0 waiting |")
    lines.append("|---|---|---|---|")

    def compare(x, y):
        bound = max(2.0, 0.10 * y)
        return f"{x:.1f} vs {y:.1f} MiB ({'+' if x >= y else '−'}{abs(x - y):.1f}) {check(x - y <= bound)}", x - y <= bound

    summary = []
    for broker, d, d_small in verdicts:
        t, ok_t = compare(peak(d), peak(d_small))
        an, ok_a = compare(peak_anon(d), peak_anon(d_small))
        w, ok_w = compare(rss_with_waiting(d), d["rss_mb"]["last"])
        lines.append(f"| {BROKER_NAMES[broker]} | {t} | {an} | {w} |")
        summary.append((broker, ok_t, ok_a, ok_w))
    lines.append("")
    for broker, ok_t, ok_a, ok_w in summary:
        lines.append(
            f"- {BROKER_NAMES[broker]}: total peak RSS {'within' if ok_t else 'beyond'} the bound {check(ok_t)}; "
            f"heap (RssAnon) {'within' if ok_a else 'beyond'} {check(ok_a)}; "
            f"{'no' if ok_w else 'a'} fall as the queue empties {check(ok_w)}"
        )
    lines.append("")
    lines.append(
        "Drain rate against depth (same worker, same settings; each depth enqueued into an empty "
        "store, drained once; the 1-minute load average when the drain started):"
    )
    lines.append("")
    lines.append("| broker | depth | enqueue (batched) | drain | peak worker RSS | RSS at end | load (1 min) |")
    lines.append("|---|---|---|---|---|---|---|")
    for broker in f["brokers"]:
        for depth in f["depths"]:
            enq, d = runs[(broker, depth)]
            lines.append(
                f"| {BROKER_NAMES[broker]} | {depth:,} | {fmt_rate(enq['enqueue_per_s'])} | "
                f"{fmt_rate(d['drain_per_s'])} | {mib(peak(d))} | {mib(d['rss_mb']['last'])} | "
                f"{d.get('load1_before', 0):.2f} |"
            )
    lines.append("")
    lines.append(
        "Charts: [drain rate and peak RSS against depth](docs/scaling-depth.png) "
        "(data: [docs/scaling-depth.csv](docs/scaling-depth.csv)), "
        f"[worker RSS during the {big:,}-task drains](docs/load-rss.png)."
    )
    lines.append("")
    lines.append("<!-- bench/load.sh:end -->")
    failed = [BROKER_NAMES[b] for b, ok_t, ok_a, ok_w in summary if not (ok_t and ok_a and ok_w)]
    return "\n".join(lines) + "\n", f, runs, failed


def write_load_docs(docs, f, runs):
    docs = Path(docs)
    docs.mkdir(exist_ok=True)
    with open(docs / "scaling-depth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["broker", "depth", "enqueue_per_s", "drain_per_s", "drain_secs", "peak_rss_mib",
                    "rss_before_start_mib", "rss_end_mib", "load1", "date", "commit"])
        for (broker, depth), (enq, d) in runs.items():
            w.writerow([broker, depth, enq["enqueue_per_s"], d["drain_per_s"], d["secs"], peak(d),
                        d["rss_mb"]["before_worker"], d["rss_mb"]["last"], d.get("load1_before", ""),
                        f["date"], f["git"]])
    plt = pyplot()
    stamp = f"{f['date']}, celeriac {f['git']}, {f['nproc']} shared cores, load {f['load_start'].split()[0]}–{f['load_end'].split()[0]}"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    for broker in f["brokers"]:
        xs = f["depths"]
        ys = [runs[(broker, d)][1]["drain_per_s"] for d in xs]
        rs = [peak(runs[(broker, d)][1]) for d in xs]
        ax1.plot(xs, ys, marker="o", label=BROKER_NAMES[broker])
        for x, y in zip(xs, ys):
            top = max(runs[(b, x)][1]["drain_per_s"] for b in f["brokers"])
            ax1.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 7) if y >= top else (0, -13),
                         ha="center", fontsize=8)
        line, = ax2.plot(xs, rs, marker="o", label=f"{BROKER_NAMES[broker]}: VmRSS peak")
        for x, y in zip(xs, rs):
            ax2.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
        anon = [peak_anon(runs[(broker, d)][1]) for d in xs]
        ax2.plot(xs, anon, marker="s", linestyle="--", color=line.get_color(),
                 label=f"{BROKER_NAMES[broker]}: RssAnon (heap) peak")
        for x, y in zip(xs, anon):
            ax2.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, -13), ha="center", fontsize=8)
    def short(n):
        return f"{n / 1e6:g}M" if n >= 1e6 else f"{n / 1e3:g}k" if n >= 1e3 else str(n)

    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(f["depths"], [short(d) for d in f["depths"]])
        ax.minorticks_off()
        ax.set_xlim(min(f["depths"]) / 1.6, max(f["depths"]) * 1.6)
        ax.set_xlabel("tasks waiting when the worker starts (log scale)")
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.legend(fontsize=8, loc="upper left", ncol=2)
    ax1.set_ylabel("drain rate (tasks/s)")
    ax1.set_ylim(bottom=0, top=max(ax1.get_ylim()[1], 1) * 1.12)
    ax1.set_title("Drain rate, 1 worker process (-c 2)")
    ax2.set_ylabel("worker peak RSS (MiB)")
    ax2.set_ylim(bottom=0, top=max(ax2.get_ylim()[1], 1) * 1.35)
    ax2.set_title("Worker peak RSS")
    fig.suptitle(f"celeriac: drain rate and worker memory vs queue depth\n{stamp}", fontsize=10)
    fig.tight_layout()
    fig.savefig(docs / "scaling-depth.png", dpi=110)
    plt.close(fig)

    big = max(f["depths"])
    fig, axes = plt.subplots(1, len(f["brokers"]), figsize=(5.5 * len(f["brokers"]), 4.4), squeeze=False)
    for ax, broker in zip(axes[0], f["brokers"]):
        d = runs[(broker, big)][1]
        ts = [s[0] for s in d["series"]]
        ax.plot(ts, [s[2] for s in d["series"]], color="tab:red", label="worker VmRSS (MiB)")
        ax.plot(ts, [s[3] for s in d["series"]], color="tab:orange", linestyle="--",
                label="of which RssAnon: heap (MiB)")
        ax.set_ylim(bottom=0, top=max(s[2] for s in d["series"]) * 1.3)
        ax.set_xlabel("seconds since the worker started")
        ax.set_ylabel("worker RSS (MiB)")
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(ts, [d["waiting_at_start"] - s[1] for s in d["series"]], color="tab:blue",
                 label="tasks not yet run")
        ax2.set_ylabel("tasks not yet run")
        ax2.set_ylim(bottom=0)
        ax2.yaxis.set_major_formatter(lambda v, _: f"{v / 1000:,.0f}k")
        ax.set_title(f"{BROKER_NAMES[broker]}: {big:,} tasks, {d['drain_per_s']:,.0f}/s")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
    fig.suptitle(f"celeriac worker RSS while draining {big:,} waiting tasks (1 process, -c 2)\n{stamp}", fontsize=10)
    fig.tight_layout()
    fig.savefig(docs / "load-rss.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- scaling


def scaling_runs(work):
    out = []
    for meta_path in sorted(Path(work).glob("run*-n*.json")):
        if "-w" in meta_path.name:
            continue
        meta = load_json(meta_path)
        r, n = meta["run"], meta["workers"]
        parts = [load_json(Path(work) / f"run{r}-n{n}-w{w}.json") for w in range(1, n + 1)]
        start = min(p["started_unix"] for p in parts)
        end = max(p["ended_unix"] for p in parts)
        processed = sum(p["processed"] for p in parts)
        out.append({
            "run": r, "workers": n, "tasks": meta["tasks"], "processed": processed,
            "secs": end - start, "rate": processed / max(end - start, 1e-9),
            "per_worker": [p["processed"] for p in parts],
            "peak_rss": max(p["peak_rss_mb"] for p in parts), "load1": meta["load1"],
        })
    out.sort(key=lambda x: (x["workers"], x["run"]))
    return out


def render_scaling(work):
    f = load_json(Path(work) / "facts.json")
    runs = scaling_runs(work)
    counts = sorted({r["workers"] for r in runs})
    med = {n: statistics.median(r["rate"] for r in runs if r["workers"] == n) for n in counts}
    lines = ["<!-- bench/scaling.sh:begin (generated; rerun the command below to update) -->", ""]
    lines.append(f"### Redis drain rate against worker processes ({f['date']})")
    lines.append("")
    lines += ["```sh", f["command"], "```", ""]
    lines.append(machine_line(f, "other processes may share the 2 cores"))
    lines.append("")
    lines.append(
        f"{f['tasks']:,} no-op tasks prefilled in one queue on one Redis, drained by N worker processes "
        "started together (each `celeriac bench --drain-only -c 2`, prefetch ×128). Rate = all tasks ÷ "
        "(last task run − first worker start)."
    )
    lines.append("")
    lines.append("| worker processes (slots) | run | drain | tasks per worker | peak RSS per worker | load (1 min) |")
    lines.append("|---|---|---|---|---|---|")
    for r in runs:
        lines.append(
            f"| {r['workers']} ({2 * r['workers']}) | {r['run']} | {fmt_rate(r['rate'])} | "
            f"{' / '.join(f'{p:,}' for p in r['per_worker'])} | ≤ {mib(r['peak_rss'])} | {r['load1']:.2f} |"
        )
    lines.append("")
    base = med[counts[0]]
    lines.append(
        "Median per count: " + "; ".join(f"{n} → {fmt_rate(med[n])} ({med[n] / base:.2f}×)" for n in counts)
        + ". Chart: [docs/scaling-workers.png](docs/scaling-workers.png) "
        "(data: [docs/scaling-workers.csv](docs/scaling-workers.csv))."
    )
    lines.append("")
    lines.append("<!-- bench/scaling.sh:end -->")
    return "\n".join(lines) + "\n", f, runs, med


def write_scaling_docs(docs, f, runs, med):
    docs = Path(docs)
    docs.mkdir(exist_ok=True)
    with open(docs / "scaling-workers.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["workers", "slots", "run", "tasks", "drain_per_s", "secs", "peak_rss_mib_max", "load1",
                    "date", "commit"])
        for r in runs:
            w.writerow([r["workers"], 2 * r["workers"], r["run"], r["processed"], round(r["rate"]),
                        round(r["secs"], 3), r["peak_rss"], r["load1"], f["date"], f["git"]])
    plot_workers(docs)


def plot_workers(docs):
    """docs/scaling-workers.png from docs/scaling-workers.csv (so a chart can be redrawn
    without rerunning: `python bench/load_report.py replot-workers --docs docs`)."""
    docs = Path(docs)
    with open(docs / "scaling-workers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = [{"workers": int(r["workers"]), "rate": float(r["drain_per_s"]), "load1": float(r["load1"])}
            for r in rows]
    counts = sorted({r["workers"] for r in runs})
    med = {n: statistics.median(r["rate"] for r in runs if r["workers"] == n) for n in counts}
    loads = [r["load1"] for r in runs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5))
    ax.plot(counts, [med[n] for n in counts], marker="o", label="median of the runs")
    ax.scatter([r["workers"] for r in runs], [r["rate"] for r in runs], color="gray", s=14, zorder=3,
               label="each run")
    ax.plot(counts, [med[counts[0]] * n / counts[0] for n in counts], linestyle="--", color="tab:green",
            alpha=0.6, label="linear from 1 worker (not reachable on 2 cores shared with Redis)")
    for n in counts:
        ax.annotate(f"{med[n]:,.0f}", (n, med[n]), textcoords="offset points", xytext=(8, -4), ha="left",
                    fontsize=8)
    ax.set_xticks(counts)
    ax.set_xlim(counts[0] - 0.3, counts[-1] + 0.5)
    ax.set_xlabel("worker processes (each -c 2, prefetch ×128)")
    ax.set_ylabel("drain rate (tasks/s, all workers together)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(
        f"celeriac: Redis drain rate vs worker processes ({int(rows[0]['tasks']):,} tasks, one Redis)\n"
        f"{rows[0]['date']}, celeriac {rows[0]['commit']}, 2 shared cores, "
        f"load {min(loads):.1f}–{max(loads):.1f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(docs / "scaling-workers.png", dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["load", "scaling", "replot-workers"])
    ap.add_argument("--work")
    ap.add_argument("--out")
    ap.add_argument("--docs")
    args = ap.parse_args()
    if args.what == "replot-workers":
        plot_workers(args.docs or "docs")
        return 0
    if args.what == "load":
        section, f, runs, failed = render_load(args.work)
        if args.docs:
            write_load_docs(args.docs, f, runs)
        script = "bench/load.sh"
    else:
        section, f, runs, med = render_scaling(args.work)
        if args.docs:
            write_scaling_docs(args.docs, f, runs, med)
        script = "bench/scaling.sh"
        failed = []
    print(section)
    if args.out:
        insert_section(args.out, script, section)
    if failed:
        print(f"load_report.py: the worker's RSS grew with the depth on {', '.join(failed)} (see the section)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
