#!/usr/bin/env python3
"""Plots the latest full run of scripts/bench.sh from docs/bench-results.jsonl.

    scripts/plot.py            writes docs/bench-latency.png, docs/bench-throughput.png, docs/bench-idle.png
    scripts/plot.py --at STAMP plots the run stamped STAMP ("at" field) instead of the latest
    scripts/plot.py --table    prints that run as a Markdown table instead (no matplotlib needed)

matplotlib comes from PyPI into a virtual environment under target/plot-venv
(created on first use); the script re-runs itself there.
"""

import json
import os
import subprocess
import sys
import venv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "plot-venv")


def ensure_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(python):
        sys.exit("plot: matplotlib is missing from " + VENV)
    if not os.path.exists(python):
        venv.create(VENV, with_pip=True)
        subprocess.check_call([python, "-m", "pip", "install", "-q", "matplotlib==3.*"])
    os.execv(python, [python] + sys.argv)


def load(at, pinned=False):
    """The run stamped `at`, or the latest full (unpinned) one: {label: row}."""
    rows = []
    with open(os.path.join(ROOT, "docs", "bench-results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    labelled = [r for r in rows if "label" in r and bool(r.get("pinned")) == pinned]
    if at is None:
        # A full run has every default scenario; SCENARIOS=… runs append partial ones.
        wanted = {"c-broadcast-signalr"} if pinned else {"persist", "a-none", "c-broadcast-signalr", "d-idle-signalr"}
        labels = {}
        for r in labelled:
            labels.setdefault(r["at"], set()).add(r["label"])
        stamps = [r["at"] for r in labelled if wanted <= labels[r["at"]]]
        if not stamps:
            if pinned:
                return None, {}
            sys.exit("plot: no full run in docs/bench-results.jsonl (run scripts/bench.sh)")
        at = stamps[-1]
    run = {r["label"]: r for r in labelled if r["at"] == at}
    if not run:
        sys.exit("plot: no run stamped " + at)
    return at, run


PEERS = [("signalr", "our hub (SignalR)", "#1f77b4"), ("socketio", "socket.io 4", "#ff7f0e"), ("floor", "raw floor", "#2ca02c")]


def save(fig, name):
    """Writes docs/NAME; returns its path."""
    fig.tight_layout()
    path = os.path.join(ROOT, "docs", name)
    fig.savefig(path, dpi=110)
    return path


def fmt(value, digits=1):
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(run):
    """One Markdown row per result of the run, in the order of the script."""
    print("| label | peer | connections (stalled; contractors) | groups | events | offered | publishes/s | HTTP p50 / p99 / p99.9 ms"
          " | delivery p50 / p99 / p99.9 ms | messages/s | missing | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, r in run.items():
        if r["scenario"] in ("idle", "cost"):
            continue
        if r["scenario"] == "persist":
            http = " / ".join(fmt(r[f"latency_{p}_ms"]) for p in ("p50", "p99", "p999"))
            peer = "signalr (PostgreSQL)" if label == "persist-pg" else "signalr"
            print(f"| {label} | {peer} | 0 | 1 | {r['count']} | {r['concurrency']} in flight | "
                  f"{fmt(r['assignments_per_s'])} | {http} | — | — | {r['errors']} errors | {r['loadavg']} |")
            continue
        offered = f"{fmt(r['rate'], 0)}/s open loop" if r.get("rate") else f"{r['concurrency']} in flight"
        http = " / ".join(fmt(r[f"http_{p}_ms"]) for p in ("p50", "p99", "p999"))
        delivery = " / ".join(fmt(r[f"latency_{p}_ms"]) for p in ("p50", "p99", "p999"))
        conns = f"{r['connected']:,} ({r['stalled']}" + (f"; {r['contractors']:,} contractors)" if r.get("contractors") else ")")
        transport = r.get("transport", "websockets")
        peer = r["peer"] if transport == "websockets" else f"{r['peer']} over {transport}"
        print(f"| {label} | {peer} | {conns} | {r['regions']} | {r['events']} | {offered} | "
              f"{fmt(r['publishes_per_s'])} | {http} | {delivery} | {fmt(r['messages_per_s'])} | {r['missing']} | {r['loadavg']} |")
    costs = {label: r for label, r in run.items() if r["scenario"] == "cost"}
    if costs:
        print()
        print("| label | operation | rate | service CPU per operation | PostgreSQL backends per operation | "
              "HTTP p50 / p99 / p99.9 ms | errors | load avg |")
        print("|---|---|---|---|---|---|---|---|")
        for label, r in costs.items():
            http = " / ".join(fmt(r[f"latency_{p}_ms"]) for p in ("p50", "p99", "p999"))
            pg = f"{fmt(r['pg_database_cpu_us_per_op'])} µs" if r.get("pg_database_cpu_us_per_op") is not None else "—"
            print(f"| {label} | {r['operation']} | {fmt(r['rate'], 0)}/s, {r['count']:,} | "
                  f"{fmt(r['server_cpu_us_per_op'])} µs | {pg} | {http} | {r['errors']} | {r['loadavg']} |")
    idle = [r for r in run.values() if r["scenario"] == "idle"]
    if idle:
        print()
        print("| peer | idle joined connections | RSS before → after (KiB) | KiB per connection | CPU over hold | "
              "at 100k: RSS | at 100k: CPU | load avg |")
        print("|---|---|---|---|---|---|---|---|")
        for r in idle:
            print(f"| {r['peer']} | {r['connected']:,} | {r['rss_before_kib']:,} → {r['rss_after_kib']:,} | "
                  f"{r['kib_per_connection']:.1f} | {r['cpu_seconds']:.2f} s / {r['hold_seconds']} s = {r['cpu_percent']:.1f}% | "
                  f"{r['kib_per_connection'] * 100000 / 1048576:.2f} GiB | "
                  f"{r['cpu_percent'] * 100000 / r['connected']:.0f}% of a core | {r['loadavg']} |")


def main():
    if "--table" in sys.argv:
        at = sys.argv[sys.argv.index("--at") + 1] if "--at" in sys.argv else None
        stamp, run = load(at)
        print(f"Run {stamp}, rev {next(iter(run.values())).get('rev', '?')}:\n")
        table(run)
        return
    ensure_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = sys.argv[sys.argv.index("--at") + 1] if "--at" in sys.argv else None
    stamp, run = load(at)
    rev = next(iter(run.values())).get("rev", "?")
    subtitle = f"{stamp}, rev {rev}, {next(iter(run.values())).get('cores', '?')} cores (loopback; client on the same cores)"
    written = []

    # Latency percentiles per scenario.
    series = []
    rates = sorted((r for k, r in run.items() if k.startswith("b-")), key=lambda r: -r["rate"])
    for label, title, prefix in [
        ("persist", "(e) assign HTTP,\n32 in flight", "latency"),
        ("persist-pg", "(e) assign HTTP,\nPostgreSQL", "latency"),
        ("a-none", "(a) assign HTTP,\n0 connections", "http"),
        ("a-active", "(a) assign HTTP,\n10k reading", "http"),
        ("a-stalled", "(a) assign HTTP,\n10k, 1% stalled", "http"),
        ("a-stalled", "(a) delivery,\n10k, 1% stalled", "latency"),
        ("a-slow", "(a′) assign HTTP,\n1% stalled, all groups", "http"),
    ] + [
        ("b-" + r["label"][2:], f"(b) delivery,\n{r['rate']:.0f}/s, 10k", "latency") for r in rates
    ] + [
        ("c-broadcast-signalr", "(c) delivery,\n1 group, ours", "latency"),
        ("c-broadcast-socketio", "(c) delivery,\n1 group, socket.io", "latency"),
        ("c-broadcast-floor", "(c) delivery,\n1 group, floor", "latency"),
    ]:
        r = run.get(label)
        if r and r.get(f"{prefix}_p50_ms") is not None:
            series.append((title, [r[f"{prefix}_{p}_ms"] for p in ("p50", "p99", "p999")]))
    if series:
        fig, ax = plt.subplots(figsize=(16, 5.5))
        width = 0.27
        for k, (name, color) in enumerate([("p50", "#9ecae1"), ("p99", "#3182bd"), ("p99.9", "#08519c")]):
            xs = [i + (k - 1) * width for i in range(len(series))]
            values = [s[1][k] for s in series]
            bars = ax.bar(xs, values, width, label=name, color=color)
            ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels([s[0] for s in series], fontsize=7.5)
        ax.set_yscale("log")
        ax.set_ylabel("milliseconds (log scale)")
        ax.set_title("Latency percentiles per scenario\n" + subtitle, fontsize=10)
        ax.axhline(10, color="red", linestyle=":", linewidth=1)
        ax.text(len(series) - 0.5, 10, "10 ms target (b)", color="red", fontsize=7, ha="right", va="bottom")
        ax.legend()
        written.append(save(fig, "bench-latency.png"))

    # Broadcast throughput against the peers (and, when there is one, the latest pinned run).
    pinned_stamp, pinned = load(None, pinned=True)
    bars = [(title, color, run[f"c-broadcast-{peer}"]) for peer, title, color in PEERS if f"c-broadcast-{peer}" in run]
    if bars:
        fig, ax = plt.subplots(figsize=(8, 4.8))
        groups = [("shared cores", run)] + ([("pinned: server core 0, client core 1", pinned)] if pinned else [])
        width = 0.8 / len(groups)
        for k, (name, which) in enumerate(groups):
            present = [(i, peer) for i, (peer, _, _) in enumerate(PEERS) if f"c-broadcast-{peer}" in which]
            values = [which[f"c-broadcast-{peer}"]["messages_per_s"] for _, peer in present]
            xs = [i + (k - (len(groups) - 1) / 2) * width for i, _ in present]
            colors = [PEERS[i][2] for i, _ in present]
            drawn = ax.bar(xs, values, width, color=colors, alpha=1.0 if k == 0 else 0.55, hatch=None if k == 0 else "//",
                           label=name, edgecolor="black", linewidth=0.5)
            ax.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(PEERS)))
        ax.set_xticklabels([p[1] for p in PEERS])
        ax.legend(fontsize=8)
        first = bars[0][2]
        ax.set_ylabel("messages delivered per second")
        ax.set_title(
            f"(c) Broadcast to one group of {first['connected']:,} connections, {first['events']} events\n" + subtitle
            + (f"\npinned run {pinned_stamp}, {pinned['c-broadcast-signalr']['events']} events" if pinned else ""),
            fontsize=9,
        )
        written.append(save(fig, "bench-throughput.png"))

    # Idle connections: memory and CPU.
    idle = [(title, color, run[f"d-idle-{peer}"]) for peer, title, color in PEERS if f"d-idle-{peer}" in run]
    if idle:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
        values = [i[2]["kib_per_connection"] for i in idle]
        drawn = left.bar([i[0] for i in idle], values, color=[i[1] for i in idle])
        left.bar_label(drawn, labels=[f"{v:.1f} KiB" for v in values], fontsize=9)
        left.axhline(10, color="red", linestyle=":", linewidth=1)
        left.set_ylabel("server RSS per idle connection (KiB)")
        left.set_title(f"(d) {idle[0][2]['connected']:,} idle joined connections", fontsize=10)
        values = [i[2]["cpu_percent"] for i in idle]
        drawn = right.bar([i[0] for i in idle], values, color=[i[1] for i in idle])
        right.bar_label(drawn, labels=[f"{v:.2f}%" for v in values], fontsize=9)
        right.set_ylabel(f"server CPU over {idle[0][2]['hold_seconds']} s idle (% of one core)")
        right.set_title("(d) keep-alive cost", fontsize=10)
        fig.suptitle(subtitle, fontsize=8)
        written.append(save(fig, "bench-idle.png"))

    for path in written:
        print("plot: wrote " + os.path.relpath(path, ROOT))


if __name__ == "__main__":
    main()
