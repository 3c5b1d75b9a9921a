#!/usr/bin/env python3
"""Constant-rate latency of several paths, measured in interleaved rounds (used by proxy.sh).

    interleaved.py RATE ROUNDS DURATION CONNECTIONS OUT_DIR BODY HEADER... -- NAME=URL...

Each round runs `oha -q RATE --latency-correction` for DURATION against every path in turn, the
order reversed every other round (A B C, C B A, ...). Every request's latency is kept (oha
--db-url) and the quantiles are taken over all rounds of a path together. Run one after the
other, one path's 30 s would meet different weather on a shared machine (another tenant, the
hypervisor taking the CPU: "steal") than the next path's 30 s; interleaved in short rounds, every
path meets the same weather, and the difference of their quantiles is the gateway's, not the
machine's.

Prints one tab-separated line per path: name, requests, non-200 answers, requests/s achieved
(mean over rounds), p50, p90, p99, p99.9 in ms; then `cpu<TAB>busy %<TAB>steal %` over the whole
measurement, from /proc/stat.
"""

import json
import os
import sqlite3
import subprocess
import sys


def cpu_times():
    with open("/proc/stat") as stat:
        return [int(x) for x in stat.readline().split()[1:]]


def quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    args = sys.argv[1:]
    split = args.index("--")
    rate, rounds, duration, connections, out_dir, body, *headers = args[:split]
    paths = [p.split("=", 1) for p in args[split + 1 :]]
    latencies = {name: [] for name, _ in paths}
    bad = {name: 0 for name, _ in paths}
    achieved = {name: [] for name, _ in paths}
    before = cpu_times()
    for round_number in range(int(rounds)):
        order = paths if round_number % 2 == 0 else paths[::-1]
        for name, url in order:
            db = os.path.join(out_dir, "oha-%s-%s-round%d.db" % (name, rate, round_number))
            if os.path.exists(db):
                os.unlink(db)
            command = ["oha", "--no-tui", "--output-format", "json", "-m", "POST", "-d", body]
            for header in headers:
                command += ["-H", header]
            command += ["-z", duration, "-q", rate, "-c", connections, "--latency-correction",
                        "-w", "--db-url", db, url]
            run = subprocess.run(command, check=True, capture_output=True, text=True)
            summary = run.stdout[run.stdout.index("{"):]
            achieved[name].append(json.loads(summary)["summary"]["requestsPerSec"])
            with sqlite3.connect(db) as connection:
                rows = connection.execute("SELECT duration, status FROM oha").fetchall()
            os.unlink(db)
            latencies[name] += [seconds * 1000 for seconds, _ in rows]
            bad[name] += sum(1 for _, status in rows if status != 200)
    after = cpu_times()
    for name, _ in paths:
        values = sorted(latencies[name])
        if not values:
            sys.exit("interleaved: no requests recorded for %s" % name)
        mean_rps = sum(achieved[name]) / len(achieved[name])
        print("%s\t%d\t%d\t%.0f\t%s" % (name, len(values), bad[name], mean_rps, "\t".join(
            "%.3f" % quantile(values, q) for q in (0.5, 0.9, 0.99, 0.999))))
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta) or 1
    # Fields of the cpu line: user nice system idle iowait irq softirq steal ...
    print("cpu\t%.0f\t%.1f" % (100 * (total - delta[3]) / total, 100 * delta[7] / total))


if __name__ == "__main__":
    main()
