#!/usr/bin/env python3
"""`make bench`: speed and memory figures beside their budgets and a same-run baseline.

Figures are measured here, never asserted in timed tests: these machines are shared and
noisy, so a budget is something to read, not a test to fail.
"""

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "llmtrain.py")
sys.path.insert(0, HERE)


def wall(argv, repeat=3):
    """Best-of-N wall time of a command, and its stdout line count."""
    best = None
    lines = 0
    for _ in range(repeat):
        start = time.monotonic()
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             check=True).stdout
        took = time.monotonic() - start
        best = took if best is None else min(best, took)
        lines = out.count(b"\n")
    return best, lines


def plain_rows():
    """One --instant run: wall time and lines per second, against a bare interpreter."""
    bare, _ = wall([sys.executable, "-c", "pass"])
    rows = []
    for seed in (1, 2, 3):
        took, lines = wall([sys.executable, SCRIPT, "--plain", "--instant", "--runs", "1",
                            "--seed", str(seed)])
        rows.append(("instant run, seed %d: wall time" % seed, "%.3f s" % took, "< 2 s",
                     "python3 -c pass: %.3f s" % bare))
        rows.append(("instant run, seed %d: lines per second" % seed,
                     "{:,.0f} ({} lines)".format(lines / took, lines), "> 1,000", ""))
    return rows


def main():
    rows = plain_rows()
    try:
        import bench_dashboard
    except ImportError:
        bench_dashboard = None
    if bench_dashboard is not None:
        rows += bench_dashboard.measure()
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    header = ("figure", "measured", "budget", "baseline (same run)")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    for row in [header] + rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
