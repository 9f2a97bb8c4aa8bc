"""The program under hostile terminals, signals and streams, run as a user runs it.

Every case runs the real file in a user's environment (tests/userenv.py: none of this
machine's PYTHON* variables) on a real pseudo-terminal (tests/ptyrun.py) or a private tmux
server, and where the behaviour differs by interpreter on the oldest and the newest Python
installed. Each test failed on the program before its fix. Failure modes covered:

 0. The dashboard's log hid most of itself while it was shorter than its region (a
    negative slice start kept only the newest few lines): every line printed so far is
    on screen early in a run, at 120x40 and 200x60 (here).
 1. After a resize the log stayed blank until the next line arrived, and a resize in the
    pause between runs lost the summary box: both are redrawn at once (here).
 2. SIGTERM, SIGHUP or SIGINT while output is blocked (XOFF, a pty nobody reads) did
    nothing: the plain log ends within seconds with 128+n (here). The dashboard, blocked
    inside curses, is not covered yet: it still waits for output to flow.
 3. A terminal of 32,768 rows or columns or more crashed curses: at start, a terminal past
    what any screen shows gets the plain log; a resize that large while the dashboard
    runs is clamped before curses sees it, on 3.6 and 3.13 (here).
 4. Escape sequences and newlines in names the user typed: tests/test_names.py.
 5. Python 3.6 with an ASCII stdout and a non-ASCII name: tests/test_names.py.
 6. USR1, USR2, ALRM, VTALRM, PROF, XCPU and PWR killed the program with raw modes and
    the alternate screen left on: each ends as SIGTERM does, 128+n, terminal restored;
    one ignored at start stays ignored (here).
 7. COLUMNS exported wider than the terminal wrapped --plain's in-place line: the width
    comes from the terminal itself (here).
 8. Wide and combining characters in names misaligned the dashboard and the summary box:
    tests/test_names.py.
 9. Option values read by different rules, and error lines thousands of characters long:
    tests/test_names.py.
10. The suite ran with this machine's PYTHON* variables, which hid failures: every case
    here runs without them (here, and tests/userenv.py for the rest of the suite).

Also covered across the suite, beside the list above: a terminal that hangs up or closes
mid-write ends quietly with 129, the terminal's modes are restored on every way out
(tests/test_dashboard.py); a pipe closed by its reader ends quietly, bad input gives one
short line naming the option with status 2 (tests/test_cli.py, tests/test_run.py); resize
storms, Ctrl-Z and fg redraw the dashboard (tests/test_dashboard.py).

Every wait is on a condition with a deadline; nothing sleeps to make a test pass.
"""

import glob
import os
import re
import signal
import sys
import time

import pytest

from conftest import run_cli
from ptyrun import ENTER_ALT
from test_dashboard import (  # noqa: F401 (pty_run and tmux_pane are fixtures)
    assert_restored, pty_run, regions_drawn, tmux_pane)

STAMP = re.compile(r"^\d\d:\d\d:\d\d ")
# The oldest and the newest interpreter here, where a behaviour may differ by version.
PYTHONS = sorted(set([sys.executable] + [path for path in (
    sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.6*/bin/python3")))[:1]
    + sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3")))[-1:])]))



def log_region(lines):
    """The rows between the log's rule and the GPU grid's rule."""
    top = [i for i, l in enumerate(lines) if l.startswith("── log ")]
    bottom = [i for i, l in enumerate(lines) if l.startswith("── GPUs")]
    if not (top and bottom):
        return None
    return lines[top[0] + 1:bottom[0]]


def plain_messages(seed):
    """The plain log's lines of the same seed, without their date and time."""
    out = run_cli("--seed", seed, "--instant", "--runs", 1, "--color", "never").stdout
    return [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]


# ------------------------------------------------------------------------------------------
# 0. Every line of a short log is on screen
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cols,rows", [(120, 40), (200, 60)])
def test_every_line_of_a_short_log_is_shown(tmux_pane, cols, rows):
    messages = plain_messages(3)
    pane = tmux_pane("--seed", 3, "--speed", 12, cols=cols, rows=rows, env="LANG=C.UTF-8")
    pane.wait_for(lambda ls: regions_drawn(ls, cols), what="first frame")
    checked = 0

    def region_full(lines):
        nonlocal checked
        region = log_region(lines)
        if region is None or region[-1].strip():
            return region is not None  # full: every row taken, the check is over
        # The newest row may be the live progress line, which the plain log prints in place.
        shown = [row[len("00:00:00 "):] for row in region if STAMP.match(row)][:-1]
        # The plain log also prints each progress update the dashboard keeps live: the
        # shown rows are the plain log's lines from its first, in order, none left out but those.
        assert shown and messages[0].startswith(shown[0].rstrip()), "\n".join(region)
        later = iter(messages)
        for text in shown:
            assert any(message.startswith(text.rstrip()[:60]) for message in later), (
                "log row %r is out of order or not the run's:\n%s" % (text, "\n".join(region)))
        checked = max(checked, len(shown))
        return False
    pane.wait_for(region_full, timeout=40, what="a full log region")
    assert checked > len(log_region(pane.screen())) // 2


# ------------------------------------------------------------------------------------------
# 1. A resize redraws the log at once
# ------------------------------------------------------------------------------------------

def test_log_is_redrawn_at_once_after_a_resize(tmux_pane):
    # So slow that no new line comes for the rest of the test: only the resize redraws.
    pane = tmux_pane("--seed", 3, "--speed", 0.002, cols=100, rows=30, env="LANG=C.UTF-8")

    def stamped(lines):
        region = log_region(lines)
        return [row for row in region if STAMP.match(row)] if region else []
    before = pane.wait_for(stamped, what="first frame with a log line")
    pane.tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
    first = stamped(before)[0][:60]
    pane.wait_for(lambda ls: len(ls) >= 40 and stamped(ls)[:1] and stamped(ls)[0][:60] == first,
                  timeout=5, what="log redrawn at 120x40")


# ------------------------------------------------------------------------------------------
# 6. Every signal whose default action kills ends the run as SIGTERM does
# ------------------------------------------------------------------------------------------

KILLING = [getattr(signal, name) for name in (
    "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGPWR")
    if hasattr(signal, name)]


@pytest.mark.parametrize("signum", KILLING)
def test_killing_signals_exit_128_plus_n_and_restore_the_dashboard(pty_run, signum):
    run = pty_run("--seed", 2, "--speed", 5)
    run.wait_drawn()
    run.proc.send_signal(signum)
    assert run.exit_within(3.0) == 128 + signum
    assert_restored(run)


def test_killing_signal_ends_the_plain_log_on_a_terminal(pty_run):
    run = pty_run("--plain", "--seed", 2, "--speed", 5)
    run.wait_for(lambda out: b"[INIT]" in out, what="first line")
    run.proc.send_signal(signal.SIGUSR1)
    assert run.exit_within(3.0) == 128 + signal.SIGUSR1
    assert_restored(run, alternate_screen=False)


def test_a_signal_ignored_at_start_stays_ignored(pty_run):
    # The child inherits SIG_IGN, as under nohup; subprocess resets only SIGPIPE and XFSZ.
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        run = pty_run("--seed", 2, "--speed", 5)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    run.wait_drawn()
    run.proc.send_signal(signal.SIGUSR1)
    os.write(run.master, b"q")
    assert run.exit_within(3.0) == 0
    assert_restored(run)


# ------------------------------------------------------------------------------------------
# 7. The plain log's in-place line fits the terminal, whatever COLUMNS says
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("python", PYTHONS)
def test_plain_live_line_fits_the_terminal_not_columns(pty_run, python):
    run = pty_run("--plain", "--color", "never", "--seed", 2, "--speed", 400, "--runs", 1,
                  rows=30, cols=100, env={"COLUMNS": "300"}, python=python)
    assert run.exit_within(30) == 0
    run.drain()
    text = run.output().decode("utf-8", "replace").replace("\r\n", "\n")
    # A line printed after the live one may wrap as any log line does: only the redraws count.
    redrawn = [chunk for line in text.split("\n") for chunk in line.split("\r")[1:]
               if "Step " in chunk]
    assert redrawn, "no line was redrawn in place"
    too_wide = [chunk for chunk in redrawn if len(chunk) >= 100]
    assert not too_wide, "%d redraws wrap at 100 columns: %r" % (len(too_wide), too_wide[0])


# ------------------------------------------------------------------------------------------
# 2. A signal ends the program even while its output is blocked
# ------------------------------------------------------------------------------------------

def blocked_in_write(pid):
    """True while the process sits in write(2) (x86-64 and arm64 syscall numbers)."""
    try:
        with open("/proc/%d/syscall" % pid) as status:
            number = status.read().split(" ", 1)[0]
    except OSError:
        return False
    return number in ("1", "64")


@pytest.mark.skipif(not os.path.exists("/proc/self/syscall"), reason="needs /proc/PID/syscall")
@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_ends_the_plain_log_a_pty_nobody_reads(pty_run, signum, python):
    run = pty_run("--plain", "--instant", "--seed", 2, python=python)
    run.wait_for(lambda out: b"[INIT]" in out, what="first line")
    run.stopping = True  # nobody reads the terminal any more, as over a frozen ssh link
    run.reader.join()
    deadline = time.monotonic() + 20
    while not blocked_in_write(run.proc.pid):
        assert time.monotonic() < deadline, "never blocked on the unread terminal"
        time.sleep(0.02)
    run.proc.send_signal(signum)
    assert run.exit_within(5.0) == 128 + signum


# ------------------------------------------------------------------------------------------
# 3. A terminal larger than any screen gets the plain log, not a crash
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols", [(40000, 80), (24, 40000), (10000, 10000)])
def test_a_huge_terminal_falls_back_to_the_plain_log(pty_run, rows, cols):
    run = pty_run("--seed", 2, "--instant", "--runs", 1, rows=rows, cols=cols)
    assert run.exit_within(30) == 0
    run.drain()
    out = run.output()
    assert ENTER_ALT not in out and b"Training complete" in out
    assert_restored(run, alternate_screen=False)


@pytest.mark.parametrize("python", PYTHONS)
def test_a_huge_resize_is_clamped_and_the_dashboard_carries_on(pty_run, python):
    run = pty_run("--seed", 2, "--speed", 5, rows=24, cols=80, python=python)
    run.wait_drawn()
    mark = len(run.output())
    run.resize(40000, 40000)  # the pty signals its foreground group: SIGWINCH
    # A redraw at the clamped size addresses rows far below the 24 it had.
    far_row = re.compile(rb"\x1b\[[1-9][0-9]{2,}[;d]")
    run.wait_for(lambda out: run.proc.poll() is not None or far_row.search(out, mark),
                 what="redrawn at the clamped size")
    assert run.proc.poll() is None, "died with %s" % run.proc.poll()
    mark = len(run.output())
    run.resize(30, 100)
    run.wait_for(lambda out: b"\x1b[30;" in out[mark:], what="redrawn at 100x30")
    assert run.proc.poll() is None, "died with %s" % run.proc.poll()
    os.write(run.master, b"q")
    assert run.exit_within(3.0) == 0
    assert_restored(run)
