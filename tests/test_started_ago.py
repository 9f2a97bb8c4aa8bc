"""Issue 9: --started-ago, a session that looks busy at once. What the job printed since its
launch comes at once, each line with the time it would have had, and the clocks count from
the launch. Checked against a normal session of the same seed on a fake clock, then as a
user runs it (plain log through a pipe, the dashboard on a pseudo-terminal)."""

import re
import time

import pytest

from conftest import load_llmtrain, run_cli
from ptyrun import PtyRun
from test_golden import STYLES

lt = load_llmtrain()

START = 1000.0            # the fake monotonic clock when the session opens
WALL = 1733855280.0       # the fake wall clock then


class Session(object):
    """A whole session through the real driver on a fake clock that moves only when the
    driver idles: every line with the moment it was shown and the time it was stamped."""

    def __init__(self, seed, style="classic", backlog=0.0, runs=1, speed=1.0):
        self.mono = START
        self.shown = []  # (monotonic when shown, stamp, run clock, text without its time)
        self.elapsed = []  # (stopwatch since the session opened, run clock the header shows)
        self.pacer = lt.Pacer(speed=speed, backlog=backlog, monotonic=lambda: self.mono,
                              wall=lambda: WALL + self.mono - START)
        request = lt.Request(None, None, None, "some", style, None)
        first = lt.build_scenario(seed, *request)
        lt.run_session(lt.scenarios(first, request, runs), style, self, lt.UNICODE_GLYPHS,
                       self.pacer)

    def emit(self, item, state, now):
        self.state = state
        self.shown.append((self.mono, now, state.clock, item))

    def idle(self, seconds):
        self.elapsed.append((self.mono - START, self.pacer.run_clock(self.state)))
        self.mono += seconds

    def start_run(self, state):
        self.state = state

    def end_run(self, state):
        pass


def test_a_backlog_is_the_same_session_shown_at_once_with_its_own_times():
    backlog = 120.0
    normal = Session(11)
    busy = Session(11, backlog=backlog)
    # The same lines, each stamped exactly `backlog` earlier than the normal run stamps it.
    assert [item for _, _, _, item in busy.shown] == [item for _, _, _, item in normal.shown]
    for (_, late, _, _), (_, early, _, _) in zip(normal.shown, busy.shown):
        assert early == pytest.approx(late - backlog, abs=1e-6)
    stamps = [now for _, now, _, _ in busy.shown]
    assert stamps == sorted(stamps)
    assert stamps[0] == pytest.approx(WALL - backlog, abs=1e-6)
    # Everything the first two minutes held was shown before the clock moved at all...
    before = [line for line in busy.shown if line[1] < WALL]
    assert len(before) == len([line for line in normal.shown if line[1] < WALL + backlog])
    assert len(before) > 50
    assert all(shown == START for shown, _, _, _ in before)
    # ... and what came after, when it fell due.
    for shown, now, _, _ in busy.shown[len(before):]:
        assert shown == pytest.approx(now - WALL + START, abs=1e-6)


def test_elapsed_counts_from_the_launch_not_from_the_start():
    backlog = 95.0
    busy = Session(12, backlog=backlog)
    assert busy.elapsed, "the session never waited"
    # Whenever the header ticks (the driver waits), elapsed is the launch's age: exactly.
    for stopwatch, run_clock in busy.elapsed:
        assert run_clock == pytest.approx(backlog + stopwatch, abs=1e-6)
    assert busy.elapsed[0][0] == 0.0


@pytest.mark.parametrize("style", STYLES)
def test_every_style_tells_the_same_run_with_a_backlog(style):
    normal = Session(3, style=style)
    busy = Session(3, style=style, backlog=60.0)
    assert [lt.stamp(item, now + 60.0) for _, now, _, item in busy.shown] == [
        lt.stamp(item, now) for _, now, _, item in normal.shown]


def test_runs_that_ended_before_now_are_shown_whole_and_the_next_one_goes_on():
    normal = Session(21, runs=3)
    clocks = [clock for _, _, clock, _ in normal.shown]
    second = next(i for i in range(1, len(clocks)) if clocks[i] < clocks[i - 1])
    # Back to 30 s into the second run: the first, and the pause after it, are over.
    backlog = normal.shown[second][1] - WALL + 30.0
    busy = Session(21, runs=3, backlog=backlog)
    assert [item for _, _, _, item in busy.shown] == [item for _, _, _, item in normal.shown]
    for (_, late, _, _), (_, early, _, _) in zip(normal.shown, busy.shown):
        assert early == pytest.approx(late - backlog, abs=1e-6)
    assert all(shown == START for shown, _, _, _ in busy.shown[:second])
    assert busy.shown[-1][0] > START, "the session did not go on live"


def test_one_run_that_ended_before_now_is_all_shown_at_once():
    busy = Session(21, runs=1, backlog=3600.0)
    assert busy.elapsed == []
    assert all(shown == START for shown, _, _, _ in busy.shown)
    assert [item for _, _, _, item in busy.shown] == [
        item for _, _, _, item in Session(21, runs=1).shown]


def test_at_speed_f_the_backlog_holds_f_times_as_much_run():
    busy = Session(5, backlog=30.0, speed=4.0)
    normal = Session(5, speed=4.0)
    before = [clock for shown, now, clock, _ in busy.shown if now < WALL]
    assert before and max(before) < 120.0
    assert len(before) == len([1 for _, now, _, _ in normal.shown if now < WALL + 30.0])
    assert len(before) > len([1 for _, now, _, _ in Session(5, backlog=30.0).shown
                              if now < WALL])


# ------------------------------------------------------------------------------------------
# As a user runs it
# ------------------------------------------------------------------------------------------

PLAIN_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] ")


def test_plain_log_starts_two_minutes_back_and_matches_a_normal_run():
    opened = time.time()
    result = run_cli("--started-ago", "2m", "--runs", "1", "--plain", "--color", "never",
                     "--seed", "8", "--exit-after", "2s")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    stamps = [time.mktime(time.strptime(PLAIN_STAMP.match(line).group(1),
                                        "%Y-%m-%d %H:%M:%S"))
              for line in lines if PLAIN_STAMP.match(line)]
    assert abs(stamps[0] - (opened - 120.0)) < 3.0
    assert stamps == sorted(stamps)
    # Two minutes of a run that is longer than two minutes: the session was still going on.
    assert stamps[-1] >= opened - 3.0
    normal = run_cli("--runs", "1", "--plain", "--color", "never", "--seed", "8", "--instant")
    strip = lambda text: [PLAIN_STAMP.sub("[T] ", line) for line in text.splitlines()]
    assert strip(result.stdout) == strip(normal.stdout)[:len(lines)]


@pytest.mark.parametrize("argv, needle", [
    (["--started-ago", "soon"], "--started-ago"),
    (["--started-ago", "0s"], "--started-ago"),
    (["--started-ago", "-5m"], "--started-ago"),
    (["--started-ago", "25h"], "--started-ago"),
    (["--started-ago", "5m", "--instant"], "--started-ago"),
])
def test_bad_started_ago_is_a_one_line_usage_error(argv, needle):
    result = run_cli(*(argv + ["--plain", "--runs", "1"]))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and needle in result.stderr
    assert "Traceback" not in result.stderr


ELAPSED = re.compile(rb"Elapsed (\d+):(\d\d):(\d\d)")


def test_the_dashboards_first_frame_is_already_two_minutes_in():
    run = PtyRun(["--started-ago", "2m", "--seed", "8", "--runs", "1"], rows=32, cols=100)
    try:
        run.wait_for(lambda out: ELAPSED.search(out) and b"log" in out, what="first frame")
        out = run.output()
        first = ELAPSED.search(out)
        hours, minutes, seconds = (int(part) for part in first.groups())
        assert hours * 3600 + minutes * 60 + seconds >= 120
        # The loss chart, drawn with the header, already has its scale: there were steps.
        frame = out[first.start():out.index(b"GPUs", first.start())]
        assert re.search(rb"\d+\.\d\d \xe2\x94\x82", frame), frame
        assert b"waiting for the first step" not in out
    finally:
        run.close()
