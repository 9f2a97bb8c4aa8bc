"""Dashboard figures for `make bench`, measured in a real pseudo-terminal at 120x40,
--speed 1: CPU, bytes to the terminal, time to first frame, peak memory.

measure() returns rows of (figure, measured, budget, baseline); tests/bench.py prints them.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from ptyrun import PtyRun, SCRIPT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ROWS, COLS = 40, 120
TRAINING_SECONDS = 20.0
#: The header's step counter: drawn in the first frame.
FIRST_FRAME = b"Epoch "
TRAINING = b"[TRAIN]"


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/<pid>/stat (fields after the name)."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def status_kib(pid, field):
    """A memory figure (VmHWM: peak, VmRSS: now) of a process, in KiB."""
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s for %d" % (field, pid))


def peak_rss_kib(pid):
    return status_kib(pid, "VmHWM")


def bare_start_seconds(repeat=7):
    """Best wall time of `python3 -c pass` with the same interpreter."""
    best = None
    for _ in range(repeat):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        took = time.monotonic() - started
        best = took if best is None else min(best, took)
    return best


def bare_peak_kib(code):
    """Peak RSS of an interpreter that ran `code` and then read its own VmHWM."""
    probe = code + "\nprint(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    return int(subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                              check=True, universal_newlines=True).stdout.split()[-1])


def first_frame_seconds(script, repeat=5):
    """Best time from spawn until the header's first bytes reach the terminal."""
    best = None
    for seed in range(repeat):
        run = PtyRun(["--seed", seed + 1], rows=ROWS, cols=COLS, watch=(FIRST_FRAME,),
                     script=script)
        try:
            run.wait_for(lambda out: FIRST_FRAME in out, what="first frame")
            took = run.first_seen[FIRST_FRAME]
        finally:
            run.close()
        best = took if best is None else min(best, took)
    return best


def training_window(script, seed=1):
    """CPU %, bytes/s and peak RSS over TRAINING_SECONDS of training at --speed 1."""
    run = PtyRun(["--seed", seed, "--speed", 1], rows=ROWS, cols=COLS, script=script)
    try:
        run.wait_for(lambda out: TRAINING in out, timeout=30, what="training")
        cpu_before = cpu_seconds(run.proc.pid)
        bytes_before = len(run.output())
        started = time.monotonic()
        while time.monotonic() - started < TRAINING_SECONDS:
            time.sleep(0.5)
        took = time.monotonic() - started
        cpu = 100.0 * (cpu_seconds(run.proc.pid) - cpu_before) / took
        written = (len(run.output()) - bytes_before) / took
        clears = run.output()[bytes_before:].count(b"\x1b[2J")
        peak = peak_rss_kib(run.proc.pid)
        resident = status_kib(run.proc.pid, "VmRSS")
        run.proc.send_signal(signal.SIGTERM)
        run.proc.wait(5)
    finally:
        run.close()
    return cpu, written, clears, peak, resident


def installed_launcher(prefix):
    """`make install` into a scratch prefix: the byte-compiled module and its launcher."""
    subprocess.run(["make", "-s", "-C", ROOT, "install", "PREFIX=" + prefix,
                    "PYTHON=" + sys.executable], stdout=subprocess.DEVNULL, check=True)
    return os.path.join(prefix, "bin", "llmtrain")


def measure_one(label, script, frame_budget_ms, memory_budget_kib, bare, bare_curses):
    cpu, written, clears, peak, resident = training_window(script)
    first = first_frame_seconds(script)
    return [
        ("%s: CPU, %d s of training (120x40, --speed 1)" % (label, TRAINING_SECONDS),
         "%.2f%% of a core" % cpu, "< 1%", ""),
        ("%s: bytes to the terminal" % label, "{:,.0f} B/s ({} full clears)".format(
            written, clears), "< 2,000 B/s", ""),
        ("%s: time to first frame" % label, "%.3f s (+%.0f ms)" % (first, 1000 * (first - bare)),
         "< +%d ms" % frame_budget_ms, "python3 -c pass: %.3f s" % bare),
        ("%s: peak memory (VmHWM)" % label, "{:,} KiB (+{:,} KiB)".format(
            peak, peak - bare_curses), "< +{:,} KiB".format(memory_budget_kib),
         "import curses: {:,} KiB".format(bare_curses)),
        ("%s: resident while training (VmRSS)" % label, "{:,} KiB (+{:,} KiB)".format(
            resident, resident - bare_curses), "", "import curses: {:,} KiB".format(bare_curses)),
    ]


def measure():
    bare = bare_start_seconds()
    bare_curses = bare_peak_kib("import curses")
    prefix = tempfile.mkdtemp(prefix="llmtrain-bench-")
    try:
        # As a script CPython compiles the whole file at every start; installed, it loads
        # the bytecode compiled by make install.
        return (measure_one("script", SCRIPT, 80, 16384, bare, bare_curses)
                + measure_one("installed", installed_launcher(prefix), 40, 5120, bare,
                              bare_curses))
    finally:
        shutil.rmtree(prefix)


if __name__ == "__main__":
    for row in measure():
        print("  ".join(row))
