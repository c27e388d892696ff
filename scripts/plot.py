#!/usr/bin/env python3
"""Plots the latest full run of scripts/bench.sh from docs/bench-results.jsonl.

    scripts/plot.py            writes docs/bench-latency.png, docs/bench-throughput.png, docs/bench-idle.png
    scripts/plot.py --at STAMP plots the run stamped STAMP ("at" field) instead of the latest

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


def load(at):
    rows = []
    with open(os.path.join(ROOT, "docs", "bench-results.jsonl")) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    labelled = [r for r in rows if "label" in r]
    if not labelled:
        sys.exit("plot: no labelled run in docs/bench-results.jsonl (run scripts/bench.sh)")
    stamp = at or labelled[-1]["at"]
    run = [r for r in labelled if r["at"] == stamp]
    if not run:
        sys.exit("plot: no run stamped " + stamp)
    return stamp, {r["label"]: r for r in run}


PEERS = [("signalr", "our hub (SignalR)", "#1f77b4"), ("socketio", "socket.io 4", "#ff7f0e"), ("floor", "raw floor", "#2ca02c")]


def save(fig, name):
    """Writes docs/NAME; returns its path."""
    fig.tight_layout()
    path = os.path.join(ROOT, "docs", name)
    fig.savefig(path, dpi=110)
    return path


def main():
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
        ("a-none", "(a) assign HTTP,\n0 connections", "http"),
        ("a-active", "(a) assign HTTP,\n10k conns reading", "http"),
        ("a-stalled", "(a) assign HTTP,\n10k conns, 1% stalled", "http"),
        ("a-stalled", "(a) delivery,\n10k conns, 1% stalled", "latency"),
    ] + [
        ("b-" + r["label"][2:], f"(b) delivery, 10k conns,\n{r['rate']:.0f}/s open loop", "latency") for r in rates
    ] + [
        ("c-broadcast-signalr", "(c) delivery, 1 group\nour hub", "latency"),
        ("c-broadcast-socketio", "(c) delivery, 1 group\nsocket.io", "latency"),
        ("c-broadcast-floor", "(c) delivery, 1 group\nfloor", "latency"),
    ]:
        r = run.get(label)
        if r and r.get(f"{prefix}_p50_ms") is not None:
            series.append((title, [r[f"{prefix}_{p}_ms"] for p in ("p50", "p99", "p999")]))
    if series:
        fig, ax = plt.subplots(figsize=(15, 5.5))
        width = 0.27
        for k, (name, color) in enumerate([("p50", "#9ecae1"), ("p99", "#3182bd"), ("p99.9", "#08519c")]):
            xs = [i + (k - 1) * width for i in range(len(series))]
            values = [s[1][k] for s in series]
            bars = ax.bar(xs, values, width, label=name, color=color)
            ax.bar_label(bars, labels=[f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in values], fontsize=7, padding=1)
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels([s[0] for s in series], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("milliseconds (log scale)")
        ax.set_title("Latency percentiles per scenario\n" + subtitle, fontsize=10)
        ax.axhline(10, color="red", linestyle=":", linewidth=1)
        ax.text(len(series) - 0.5, 10, "10 ms target (b)", color="red", fontsize=7, ha="right", va="bottom")
        ax.legend()
        written.append(save(fig, "bench-latency.png"))

    # Broadcast throughput against the peers.
    bars = [(title, color, run[f"c-broadcast-{peer}"]) for peer, title, color in PEERS if f"c-broadcast-{peer}" in run]
    if bars:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        values = [b[2]["messages_per_s"] for b in bars]
        drawn = ax.bar([b[0] for b in bars], values, color=[b[1] for b in bars])
        ax.bar_label(drawn, labels=[f"{v:,.0f}/s" for v in values], fontsize=9)
        first = bars[0][2]
        ax.set_ylabel("messages delivered per second")
        ax.set_title(
            f"(c) Broadcast to one group of {first['connected']:,} connections, {first['events']} events\n" + subtitle,
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
