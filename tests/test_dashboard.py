"""The dashboard: pure row builders at several widths, and the real program in a real
pseudo-terminal (stdlib pty, see ptyrun.py) or a private tmux server.

Every wait is on a condition with a deadline; nothing sleeps to make a test pass.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import termios
import time

import pytest

from conftest import SCRIPT, load_llmtrain, tell
from ptyrun import ENTER_ALT, LEAVE_ALT, PtyRun

lt = load_llmtrain()

WIDTHS = (1, 20, 40, 80, 120, 200)
SGR_COLOR = re.compile(rb"\x1b\[(?:[0-9;]*;)?3[0-7](?:;[0-9;]*)?m|\x1b\[38;5;")


# ------------------------------------------------------------------------------------------
# Pure builders
# ------------------------------------------------------------------------------------------

def finished_run(seed=1, **options):
    """A whole run played through without sleeping: its scenario and final state."""
    sc = lt.build_scenario(seed, **options)
    plot = tell(lt, sc)
    for _ in plot.lines():
        pass
    return sc, plot.state


def fresh_run(seed=1):
    sc = lt.build_scenario(seed)
    return sc, lt.RunState(sc)


@pytest.fixture(scope="module")
def done():
    return finished_run(1)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("glyphs", [lt.UNICODE_GLYPHS, lt.ASCII_GLYPHS])
def test_header_rows_fit_and_say_what_runs(done, width, glyphs):
    sc, state = done
    rows = [lt.row_text(r) for r in lt.header_lines(state, width, 61.0, glyphs)]
    assert len(rows) == 3
    assert all(len(r) <= width for r in rows)
    if width >= 200:
        assert rows[0].endswith("q quits ")
    if width >= 80:
        assert sc.model.name in rows[0]
        assert sc.cluster_name in rows[0] or width < 120
        assert "Epoch %d/%d" % (sc.epochs, sc.epochs) in rows[1]
        assert "Elapsed 0:01:01" in rows[1] and "ETA 00:00" in rows[1]
        assert "Loss %s" % state.loss_text in rows[2] and "tok/s" in rows[2]
        assert glyphs["full"] * 5 in rows[1]  # the run's progress bar, full at the end


def test_header_before_training_has_no_eta_or_loss():
    sc, state = fresh_run(2)
    rows = [lt.row_text(r) for r in lt.header_lines(state, 120, 0.0, lt.UNICODE_GLYPHS)]
    assert "ETA --:--" in rows[1] and "Loss -" in rows[2]
    assert rows[0].startswith(" llmtrain  starting ")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("height", [1, 2, 3, 8])
def test_loss_chart_fits_and_marks_validation(done, width, height):
    _, state = done
    rows = lt.loss_chart_lines(state.loss_history, state.val_history, width, height,
                               lt.UNICODE_GLYPHS)
    assert len(rows) == height
    text = [lt.row_text(r) for r in rows]
    assert all(len(r) <= width for r in text)
    if width >= 40:
        assert sum(r.count("◆") for r in text) == len(state.val_history)
        # The bottom row has a bar in every column with data: no value draws as a blank.
        assert " " not in text[-1].split("│", 1)[1].rstrip()
        if height > 1:
            assert "█" in text[-1]
        assert any(style == "val" for r in rows for _, style in r)


def test_loss_chart_scale_brackets_the_losses_and_columns_stay_put(done):
    _, state = done
    history = state.loss_history
    low, high = lt.chart_scale(history)
    assert low <= min(history) < max(history) <= high
    rows = lt.loss_chart_lines(history, [], 80, 4, lt.UNICODE_GLYPHS)
    assert lt.row_text(rows[0]).startswith("%.2f" % high)
    assert lt.row_text(rows[-1]).startswith("%.2f" % low)
    # Powers of two per column: one more point changes at most the last column.
    per = lt.points_per_column(len(history), 60)
    assert per & (per - 1) == 0 and len(history) <= per * 60


def test_loss_chart_before_the_first_step_says_so():
    rows = lt.loss_chart_lines([], [], 60, 3, lt.ASCII_GLYPHS)
    assert "waiting for the first step" in lt.row_text(rows[1])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("gpus", [1, 8, 16, 64, 4096])
def test_gpu_grid_fits_any_cluster_in_its_rows(width, gpus):
    sc = lt.build_scenario(3, gpus=gpus, gpu_key="h100")
    state = lt.RunState(sc)
    state.load, state.heat, state.mem_gib = 1.0, 1.0, sc.memory_gib
    for max_rows in (1, 2, 6, 16):
        rows = [lt.row_text(r) for r in lt.gpu_grid_rows(sc, state, width, max_rows,
                                                         lt.UNICODE_GLYPHS)]
        assert 1 <= len(rows) <= max_rows
        assert all(len(r) <= width for r in rows)
        if width >= 80:
            assert sc.hosts[0] in "".join(rows)
            assert ("GPUs" in rows[0]) == (max_rows > 1)


def test_gpu_grid_one_cell_per_gpu_when_it_fits_else_per_node():
    sc = lt.build_scenario(3, gpus=16, gpu_key="h100")
    state = lt.RunState(sc)
    state.load, state.heat, state.mem_gib = 1.0, 1.0, 60.0
    wide = [lt.row_text(r) for r in lt.gpu_grid_rows(sc, state, 200, 16, lt.UNICODE_GLYPHS)]
    assert "util, temp, memory, power" in wide[0]
    util, temp, power = lt.gpu_reading(sc, state, 9)
    assert sc.hosts[1] in "".join(wide) and "%dW" % power in "".join(wide)
    assert "".join(wide).count(" 60G ") == 16
    narrow = [lt.row_text(r) for r in lt.gpu_grid_rows(sc, state, 80, 3, lt.UNICODE_GLYPHS)]
    assert "min/avg/max" in narrow[0] and len(narrow) == 3
    assert narrow[1].startswith(sc.hosts[0]) and narrow[2].startswith(sc.hosts[1])


def test_log_rows_pin_the_live_progress_line_below_the_log():
    entries = [[("line %d" % i, None)] for i in range(10)]
    live = [("progress", None)]
    rows = lt.log_rows(entries, live, 20, 4)
    assert [lt.row_text(r) for r in rows] == ["line 7", "line 8", "line 9", "progress"]
    assert [lt.row_text(r) for r in lt.log_rows(entries, None, 4, 2)] == ["line", "line"]
    # Long lines wrap, continuations indented, and only the newest rows are kept.
    long_line = [("[titan] ", "time"), ("step: 12  loss:  2.34567  mfu: 41.20%", None)]
    rows = [lt.row_text(r) for r in lt.log_rows(entries + [long_line], live, 20, 4)]
    assert rows == ["[titan] step: 12  lo", "  ss:  2.34567  mfu:", "   41.20%", "progress"]
    for width in (11, 20, 33, 80):
        wrapped = lt.wrap_row(long_line, width)
        assert all(len(lt.row_text(r)) <= width for r in wrapped)
        assert "".join(lt.row_text(r)[2 if i else 0:] for i, r in enumerate(wrapped)) == \
            lt.row_text(long_line)
    assert lt.log_rows(entries, live, 20, 1) == [live]
    assert lt.log_rows(entries, live, 20, 0) == []


def test_log_segments_colour_by_kind():
    item = lt.line("Checkpoint saved", "good", "CKPT")
    assert lt.log_segments(item, "10:00:00") == [
        ("10:00:00 ", "time"), ("[CKPT] ", "phase"), ("Checkpoint saved", "good")]
    assert lt.log_segments(lt.line("+--+", "box"), "x") == [("+--+", "good")]


@pytest.mark.parametrize("rows,cols", [(12, 40), (24, 80), (40, 120), (60, 200), (1000, 999)])
def test_layout_splits_the_screen_into_regions(rows, cols):
    layout = lt.dashboard_layout(rows, cols, lambda cap: cap)
    header = 3 + layout.chart_rows
    assert layout.log_top == header and layout.log_rows >= 4
    assert layout.grid_top == layout.log_top + layout.log_rows
    assert layout.grid_top + layout.grid_rows == rows and layout.grid_rows >= 2


@pytest.mark.parametrize("rows,cols", [(11, 80), (24, 39), (1, 1), (0, 0)])
def test_layout_is_none_below_the_minimum(rows, cols):
    assert lt.dashboard_layout(rows, cols, lambda cap: cap) is None


def test_meter_never_draws_blank_cells():
    for glyphs in (lt.UNICODE_GLYPHS, lt.ASCII_GLYPHS):
        for fraction in (0.0, 0.01, 0.33, 0.5, 0.99, 1.0):
            cells = lt.meter(fraction, 7, glyphs)
            assert len(cells) == 7 and " " not in cells


def test_no_utf8_locale_means_ascii_glyphs(monkeypatch):
    import locale
    monkeypatch.setattr(locale, "nl_langinfo", lambda item: "ANSI_X3.4-1968")

    def refuse(category, name=None):
        raise locale.Error("unsupported locale setting")
    monkeypatch.setattr(locale, "setlocale", refuse)
    assert lt.use_utf8_locale() is False


class FakeCurses(object):
    """Just enough of curses for style_attributes: a terminal with few pairs whose
    init_pair and use_default_colors fail the ways real builds do."""

    class error(Exception):
        pass

    A_BOLD, A_DIM, A_REVERSE = 1 << 21, 1 << 20, 1 << 18
    COLOR_BLACK, COLOR_RED, COLOR_GREEN, COLOR_YELLOW = 0, 1, 2, 3
    COLOR_BLUE, COLOR_MAGENTA, COLOR_CYAN = 4, 5, 6

    def __init__(self, pairs, colors, pair_error):
        self.COLOR_PAIRS, self.COLORS, self.pair_error = pairs, colors, pair_error
        self.pairs = {}

    def has_colors(self):
        return self.COLORS > 0

    def start_color(self):
        pass

    def use_default_colors(self):
        raise self.error("use_default_colors() returned ERR")

    def init_pair(self, number, fg, bg):
        if number == 2:
            raise self.pair_error("init_pair() failed")
        self.pairs[number] = (fg, bg)

    def color_pair(self, number):
        return number << 8


@pytest.mark.parametrize("pair_error", ["error", ValueError])
def test_colour_pairs_stay_in_range_and_failures_fall_back(pair_error):
    fake = FakeCurses(pairs=4, colors=8, pair_error=pair_error)
    if pair_error == "error":
        fake.pair_error = fake.error
    attrs = lt.style_attributes(fake, True)
    assert set(fake.pairs) == {1, 3}  # below COLOR_PAIRS; pair 2 failed
    assert all(bg == fake.COLOR_BLACK for _, bg in fake.pairs.values())
    assert attrs["time"] == fake.color_pair(1)
    assert attrs["phase"] == fake.A_BOLD  # its pair failed: bold instead
    assert attrs["error"] == fake.A_BOLD  # no pair left for it


def test_no_colours_means_attributes_only():
    fake = FakeCurses(pairs=0, colors=0, pair_error=ValueError)
    attrs = lt.style_attributes(fake, True)
    assert not fake.pairs and attrs["title"] == fake.A_REVERSE and attrs["time"] == 0
    assert lt.style_attributes(FakeCurses(64, 8, ValueError), False)["good"] == 0


# ------------------------------------------------------------------------------------------
# The real program in a pseudo-terminal
# ------------------------------------------------------------------------------------------

@pytest.fixture
def pty_run():
    runs = []

    def start(*args, **kwargs):
        run = PtyRun(list(args), **kwargs)
        runs.append(run)
        return run
    yield start
    for run in runs:
        run.close()


def assert_restored(run, alternate_screen=True):
    """tty modes as before, alternate screen left, cursor shown, no traceback."""
    if alternate_screen:
        run.wait_for(lambda out: out.rfind(LEAVE_ALT) > out.rfind(ENTER_ALT) >= 0,
                     timeout=3, what="alternate screen left")
    else:
        run.wait_for(lambda out: run.proc.poll() is not None, timeout=3, what="exit")
        run.drain()
    out = run.output()
    after = termios.tcgetattr(run.slave)
    assert after == run.modes
    assert after[3] & termios.ECHO and after[3] & termios.ICANON
    assert out.rfind(b"\x1b[?25h") >= out.rfind(b"\x1b[?25l")
    assert b"Traceback" not in out and b"Error" not in out.split(LEAVE_ALT)[-1]


def test_q_quits_with_status_0_and_restores_the_terminal(pty_run):
    run = pty_run("--seed", 1, "--speed", 5)
    run.wait_drawn()
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert_restored(run)


@pytest.mark.parametrize("how,status", [
    ("ctrl-c", 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGQUIT, 131),
    (signal.SIGINT, 130)])
def test_signals_exit_128_plus_signal_and_restore_the_terminal(pty_run, how, status):
    run = pty_run("--seed", 2, "--speed", 5)
    run.wait_drawn()
    if how == "ctrl-c":
        os.write(run.master, b"\x03")
    else:
        run.proc.send_signal(how)
    assert run.exit_within(1.0) == status
    assert_restored(run)


def test_natural_end_of_runs_and_exit_after_restore_the_terminal(pty_run):
    finished = pty_run("--seed", 3, "--speed", 2000, "--runs", 1)
    timed = pty_run("--seed", 4, "--speed", 5, "--exit-after", "1.5s")
    assert finished.exit_within(15) == 0
    assert b"Training complete" in finished.output()
    assert_restored(finished)
    # The summary box is left on the normal screen, after the alternate screen is gone.
    after = finished.output().rsplit(b"\x1b[?1049l", 1)[1]
    assert b"Training complete" in after and b"Final loss:" in after
    # q in the middle of a run leaves no summary behind: there is none yet.
    quitter = pty_run("--seed", 3, "--speed", 5)
    quitter.wait_drawn()
    os.write(quitter.master, b"q")
    assert quitter.exit_within(3) == 0
    assert b"Final loss:" not in quitter.output().rsplit(b"\x1b[?1049l", 1)[1]
    timed.wait_drawn()
    assert timed.exit_within(3) == 0
    assert_restored(timed)


def test_instant_run_draws_and_ends(pty_run):
    run = pty_run("--seed", 5, "--instant", "--runs", 1, rows=40, cols=120)
    assert run.exit_within(15) == 0
    out = run.output()
    assert b"Training complete" in out and b"GPUs" in out
    assert_restored(run)


def test_hangup_ends_it_within_3_seconds(pty_run):
    run = pty_run("--seed", 6, "--speed", 5)
    run.wait_drawn()
    os.close(run.master)
    run.stopping = True
    assert run.exit_within(3.0) == 129


@pytest.mark.parametrize("pace", [("--speed", 5), ("--speed", 500), ("--instant",)])
def test_dead_terminal_without_sighup_ends_it_within_3_seconds(pty_run, pace):
    # No controlling terminal, so closing the master sends no SIGHUP: reads just fail.
    # --instant never waits for keys, so it must ask the terminal whether it is still there.
    run = pty_run("--seed", 7, *pace, ctty=False)
    run.wait_drawn()
    started = time.monotonic()
    os.close(run.master)
    run.stopping = True
    assert run.exit_within(3.0) == 129
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("ctty", [True, False])
def test_plain_log_on_a_terminal_that_hangs_up_ends_quietly(pty_run, ctty):
    run = pty_run("--plain", "--seed", 6, "--speed", 5, ctty=ctty)
    run.wait_for(lambda out: b"Initializing" in out or b"Single-process" in out,
                 what="first line")
    os.close(run.master)
    run.stopping = True
    assert run.exit_within(3.0) == 129  # SIGHUP, or EIO on the next write: no traceback


def test_script_on_stdin_draws_and_quits_on_q(pty_run):
    run = pty_run("--seed", 1, "--speed", 5, script_on_stdin=True)
    run.wait_drawn()
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert_restored(run)


def test_no_controlling_terminal_for_keys_prints_the_plain_log(pty_run):
    run = pty_run("--seed", 1, "--instant", "--runs", 1, ctty=False, script_on_stdin=True)
    assert run.exit_within(15) == 0
    out = run.output()
    assert ENTER_ALT not in out and b"Ready to train!" in out and b"Traceback" not in out


def test_python_without_curses_prints_the_plain_log(pty_run):
    # sys.modules["curses"] = None makes `import curses` fail as on builds without _curses.
    run = pty_run("-c", "import runpy, sys; sys.modules['curses'] = None; "
                  "sys.argv = ['llmtrain', '--instant', '--runs', '1']; "
                  "runpy.run_path(%r, run_name='__main__')" % SCRIPT, script=None)
    assert run.exit_within(15) == 0
    out = run.output()
    assert ENTER_ALT not in out and b"Training complete" in out and b"Traceback" not in out


@pytest.mark.parametrize("term", ["dumb", None, ""])
def test_dumb_or_missing_term_prints_the_plain_log_without_escapes(pty_run, term):
    run = pty_run("--seed", 1, "--instant", "--runs", 1, env={"TERM": term})
    assert run.exit_within(15) == 0
    out = run.output()
    assert b"Ready to train!" in out and b"Training complete" in out
    assert b"\x1b" not in out


@pytest.mark.parametrize("term", ["xterm-kitty", "xterm", "vt100", "screen", "linux"])
def test_other_terminals_draw_the_dashboard(pty_run, term):
    run = pty_run("--seed", 1, "--speed", 5, env={"TERM": term})
    # vt100 and the Linux console have no alternate screen.
    alternate_screen = term not in ("vt100", "linux")
    run.wait_drawn(alternate_screen)
    run.wait_for(lambda out: b"[INIT]" in out, what="a log line")
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert_restored(run, alternate_screen)
    out = run.output()
    if term in ("xterm", "screen", "linux"):
        assert SGR_COLOR.search(out), "8-colour terminal drawn without colour"
    if term == "vt100":
        assert not SGR_COLOR.search(out)


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "xterm-256color"}])
def test_no_colour_means_no_colour_sequences(pty_run, env):
    args = ["--seed", 1, "--speed", 5] + (["--color", "never"] if "TERM" in env else [])
    run = pty_run(*args, env=env)
    run.wait_drawn()
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert not SGR_COLOR.search(run.output())


def test_colours_follow_the_palette(pty_run):
    run = pty_run("--seed", 1, "--speed", 5, env={"TERM": "xterm"})
    run.wait_drawn()
    run.wait_for(lambda out: b"[INIT]" in out, what="a log line")
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    out = run.output()
    for code in (b"35", b"36", b"32"):  # timestamps magenta, tags cyan, bars green
        assert re.search(rb"\x1b\[(?:[0-9;]*;)?" + code + rb"m", out), code


@pytest.mark.parametrize("env", [{"LANG": "C"}, {"LC_ALL": "C"}, {"LC_ALL": "POSIX"},
                                 {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0"}])
def test_c_locale_still_draws_bars_and_chart(pty_run, env):
    run = pty_run("--seed", 1, "--speed", 20, env=env)
    run.wait_drawn()
    # A UTF-8 locale exists here (C.UTF-8): curses is switched to it and draws blocks.
    run.wait_for(lambda out: "█".encode() in out and "│".encode() in out, what="bars")
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert b"UnicodeEncodeError" not in run.output()
    assert_restored(run)


def test_ascii_draws_only_ascii(pty_run):
    run = pty_run("--seed", 1, "--speed", 20, "--ascii", env={"LC_ALL": "C"})
    run.wait_drawn()
    run.wait_for(lambda out: b"#" in out and b"|" in out, what="ASCII bars")
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert max(run.output()) < 0x80


@pytest.mark.parametrize("env", [{}, {"LINES": "24", "COLUMNS": "80"}])
def test_resize_storm_on_the_pty_keeps_it_running(pty_run, env):
    run = pty_run("--seed", 8, "--speed", 10, env=env)
    run.wait_drawn()
    for rows, cols in [(10, 40), (3, 10), (1, 1), (2, 2), (60, 200), (5, 30), (1, 1),
                       (11, 39), (40, 120), (1, 300), (300, 1), (24, 80)] * 3:
        run.resize(rows, cols)
    run.resize(11, 45)
    mark = len(run.output())
    run.wait_for(lambda out: b"Terminal too small (45x11" in out[mark:], what="the new size")
    run.resize(30, 100)
    mark = len(run.output())
    run.wait_for(lambda out: b"GPUs" in out[mark:] and b"Epoch" in out[mark:]
                 and b"\x1b[30;100H" not in out[mark:], what="redrawn after the storm")
    assert run.proc.poll() is None
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert_restored(run)


def test_too_small_shows_a_notice_and_still_quits_on_q(pty_run):
    run = pty_run("--seed", 9, "--speed", 5, rows=8, cols=30)
    run.wait_for(lambda out: b"Terminal too small" in out, what="too-small notice")
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert_restored(run)


def test_no_full_clear_per_frame(pty_run):
    run = pty_run("--seed", 10, "--speed", 20, rows=40, cols=120)
    run.wait_drawn()
    run.wait_for(lambda out: out.count(b"[TRAIN]") >= 3, what="training lines")
    started = len(run.output())
    run.wait_for(lambda out: out[started:].count(b"Loss") >= 1 and len(out) > started + 4000,
                 what="more frames")
    os.write(run.master, b"q")
    run.exit_within(1.0)
    assert b"\x1b[2J" not in run.output()[started:]


OTHER_PYTHONS = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))


@pytest.mark.parametrize("python", OTHER_PYTHONS or [sys.executable])
def test_every_python_draws_and_quits(pty_run, python):
    run = pty_run("--seed", 11, "--speed", 40, python=python, env={"LC_ALL": "C"})
    run.wait_drawn()
    run.wait_for(lambda out: b"GPUs" in out and b"TRAIN" in out, what="grid and log")
    os.write(run.master, b"q")
    assert run.exit_within(1.0) == 0
    assert_restored(run)


# ------------------------------------------------------------------------------------------
# The screen as a terminal shows it: a private tmux server
# ------------------------------------------------------------------------------------------

class Tmux(object):
    """One pane on a tmux server of our own (its own socket); only it is ever killed."""

    def __init__(self, tmp_path, args, cols, rows, env="", command=None):
        self.server = "llmtrain-test-%d" % os.getpid()
        config = tmp_path / "tmux.conf"
        config.write_text("set -g remain-on-exit on\nset -g default-terminal tmux-256color\n")
        if command is None:
            # The shell reports the status on the screen: tmux 3.3 leaves
            # #{pane_dead_status} empty for some exits.
            command = "env %s %s %s %s; echo \"[exit $?]\"" % (
                env, sys.executable, SCRIPT, " ".join(str(a) for a in args))
        self.tmux("-f", str(config), "new-session", "-d", "-s", "t", "-x", str(cols),
                  "-y", str(rows), command)

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.server] + list(args), check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=10).stdout

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "t").split("\n")

    def pane(self, fmt):
        return self.tmux("display", "-p", "-t", "t", fmt).strip()

    def exit_status(self, timeout=3.0):
        """The program's exit status, as the shell in the pane printed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"^\[exit (\d+)\]", self.tmux("capture-pane", "-p", "-t", "t",
                                                         "-S", "-"), re.M)
            if found:
                return found.group(1)
            time.sleep(0.05)
        raise AssertionError("no exit status within %.1f s:\n%s" % (
            timeout, "\n".join(self.screen())))

    def wait_for(self, predicate, timeout=10.0, what="screen"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.screen()
            if predicate(lines):
                return lines
            time.sleep(0.05)
        raise AssertionError("%s not shown:\n%s" % (what, "\n".join(self.screen())))

    def close(self):
        socket = subprocess.run(["tmux", "-L", self.server, "display-message", "-p",
                                 "#{socket_path}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True).stdout.strip()
        subprocess.run(["tmux", "-L", self.server, "kill-server"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
        if socket and os.path.exists(socket):
            os.remove(socket)  # tmux leaves its socket file behind; leave nothing


@pytest.fixture
def tmux_pane(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    panes = []

    def start(*args, **kwargs):
        pane = Tmux(tmp_path, list(args), **kwargs)
        panes.append(pane)
        return pane
    yield start
    for pane in panes:
        pane.close()


def regions_drawn(lines, cols):
    """Header, chart with bars, log rule and a timestamped line, GPU grid: all in place."""
    log_rule = [i for i, l in enumerate(lines) if l.startswith("── log ")]
    grid_rule = [i for i, l in enumerate(lines) if l.startswith("── GPUs")]
    if not (log_rule and grid_rule and log_rule[0] < grid_rule[0]):
        return False
    header, chart = lines[:3], lines[3:log_rule[0]]
    log = lines[log_rule[0] + 1:grid_rule[0]]
    return (header[0].startswith(" llmtrain ") and header[1].startswith("Epoch ")
            and "Loss " in header[2] and all("│" in row for row in chart)
            and "█" in "".join(chart)
            and any(re.match(r"\d\d:\d\d:\d\d \[[A-Z]+\] ", row) for row in log)
            and all(len(l) <= cols for l in lines))


@pytest.mark.parametrize("cols,rows", [(80, 24), (200, 60)])
def test_three_regions_and_chart_on_screen(tmux_pane, cols, rows):
    pane = tmux_pane("--seed", 1, "--speed", 30, cols=cols, rows=rows, env="LANG=C.UTF-8")
    lines = pane.wait_for(lambda ls: regions_drawn(ls, cols), what="regions")
    assert len(lines) >= rows
    grid_rule = [i for i, l in enumerate(lines) if l.startswith("── GPUs")][0]
    sc = lt.build_scenario(1)
    assert sc.hosts[0] in "\n".join(lines[grid_rule:])
    assert sc.model.name in lines[0]
    pane.tmux("send-keys", "-t", "t", "q")
    assert pane.exit_status() == "0"
    assert pane.pane("#{alternate_on}") == "0"


def test_resize_storm_in_tmux_redraws_for_each_size(tmux_pane):
    pane = tmux_pane("--seed", 2, "--speed", 10, cols=80, rows=24, env="LANG=C.UTF-8")
    pane.wait_for(lambda ls: regions_drawn(ls, 80), what="first frame")
    for cols, rows in [(40, 10), (10, 3), (1, 1), (2, 2), (200, 60), (30, 11), (1, 1)]:
        pane.tmux("resize-window", "-t", "t", "-x", str(cols), "-y", str(rows))
    pane.tmux("resize-window", "-t", "t", "-x", "39", "-y", "20")
    pane.wait_for(lambda ls: "Terminal too small" in ls[0], what="too-small notice")
    pane.tmux("resize-window", "-t", "t", "-x", "100", "-y", "30")
    pane.wait_for(lambda ls: regions_drawn(ls, 100) and len(ls) >= 30, what="redrawn 100x30")
    assert pane.pane("#{pane_dead}") == "0"
    pane.tmux("send-keys", "-t", "t", "q")
    assert pane.exit_status() == "0"
    assert pane.pane("#{alternate_on}") == "0"


def test_ctrl_z_and_fg_under_bash(tmux_pane):
    # Job control needs a shell: curses' own SIGTSTP handler leaves and redraws the screen.
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    pane = tmux_pane(cols=100, rows=30, command="bash --norc --noprofile -i")
    pane.tmux("send-keys", "-t", "t", "LANG=C.UTF-8 %s %s --seed 4 --speed 10"
              % (sys.executable, SCRIPT), "Enter")
    pane.wait_for(lambda ls: regions_drawn(ls, 100), what="first frame")
    pane.tmux("send-keys", "-t", "t", "C-z")
    pane.wait_for(lambda ls: any("Stopped" in l for l in ls), what="stopped job")
    assert pane.pane("#{alternate_on} #{cursor_flag}") == "0 1"
    pane.tmux("send-keys", "-t", "t", "fg", "Enter")
    pane.wait_for(lambda ls: regions_drawn(ls, 100), what="redrawn after fg")
    assert pane.pane("#{alternate_on}") == "1"
    pane.tmux("send-keys", "-t", "t", "q")
    deadline = time.monotonic() + 3
    while pane.pane("#{pane_current_command}") != "bash" and time.monotonic() < deadline:
        time.sleep(0.05)
    pane.tmux("send-keys", "-t", "t", "echo \"[exit $?]\"", "Enter")
    assert pane.exit_status() == "0"
    assert pane.pane("#{alternate_on} #{cursor_flag}") == "0 1"


# ------------------------------------------------------------------------------------------
# The header and the log count the same steps
# ------------------------------------------------------------------------------------------

#: Each style's progress figure in its log: (pattern, whether it carries the total).
LOG_STEPS = {
    "classic": r"Step (\d+)/(\d+) \|",
    "hf": r"^ *\d+%\|.*\| (\d+)/(\d+) \[",
    "lightning": r"^Epoch \d+: +\d+%\|.*\| (\d+)/(\d+) \[",
    "deepspeed": r"\[Rank 0\] step=(\d+)(),",
    "megatron": r"iteration +(\d+)/ *(\d+) \|",
    "torchtitan": r"INFO - step: +(\d+)() ",
}


def header_count(rows):
    """(done, total) from the header's `Step 30/53` (or Lightning's `Batch 60/106`)."""
    found = re.search(r"(?:Step|Batch) ([\d,]+)/([\d,]+) ", rows[1])
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


@pytest.mark.parametrize("style", sorted(LOG_STEPS))
def test_the_header_counts_steps_as_the_log_does(style):
    """A Trainer's bar and Megatron's iteration count the whole job; Lightning's bar counts
    the epoch's batches; the classic line counts the epoch's steps. Whenever the log shows
    its figure, the header shows the same one."""
    checked = 0
    for seed in (1, 2, 5, 9):
        sc = lt.build_scenario(seed, style=style)
        plot = tell(lt, sc, style)
        for item, delay in plot.lines():
            plot.state.clock += delay
            found = item and re.search(LOG_STEPS[style], item.text)
            if not found or (style == "hf" and int(found.group(2)) != sc.total_steps):
                continue  # HF's evaluation bar counts batches of its own
            done, total = header_count(
                [lt.row_text(r) for r in lt.header_lines(plot.state, 200, plot.state.clock,
                                                         lt.UNICODE_GLYPHS)])
            assert done == int(found.group(1)), (seed, item.text)
            assert not found.group(2) or total == int(found.group(2)), (seed, item.text)
            checked += 1
    assert checked >= 40


class FakeScreen(object):
    """A curses window that keeps its rows as text."""

    def __init__(self, rows, cols):
        self.size = (rows, cols)
        self.rows = [""] * rows
        self.at = (0, 0)

    def getmaxyx(self):
        return self.size

    def erase(self):
        self.rows = [""] * self.size[0]

    def addnstr(self, y, x, text, count, attr):
        row = self.rows[y].ljust(x)
        self.rows[y] = row[:x] + text[:count] + row[x + count:]
        self.at = (y, x + count)

    def move(self, y, x):
        self.at = (y, x)

    def clrtoeol(self):
        y, x = self.at
        self.rows[y] = self.rows[y][:x]

    def getch(self):
        return -1

    def timeout(self, ms):
        pass

    def noutrefresh(self):
        pass

    def idlok(self, flag):
        pass

    def clearok(self, flag):
        pass


class FakeScreenCurses(object):
    """The module-level curses calls the dashboard makes, without a terminal."""

    class error(Exception):
        pass

    A_BOLD, A_DIM, A_REVERSE, KEY_RESIZE = 1 << 21, 1 << 20, 1 << 18, 410

    def has_colors(self):
        return False

    def curs_set(self, visibility):
        pass

    def update_lines_cols(self):
        pass

    def doupdate(self):
        pass


class Pace(object):
    caught_up = True

    def run_clock(self, state):
        return state.clock


class NoResizes(object):
    def take(self):
        return False


@pytest.mark.parametrize("style", ["classic", "megatron"])
def test_a_new_step_in_the_log_redraws_the_header_with_it(style, monkeypatch):
    """Lines come faster than the header's tick: each one that moves the step redraws the
    header in the same frame, so the screen never shows the log a step ahead."""
    clock = [100.0]
    monkeypatch.setattr(lt.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(lt, "terminal_gone", lambda fd: False)
    screen = FakeScreen(40, 160)
    renderer = lt.DashboardRenderer(FakeScreenCurses(), screen, lt.UNICODE_GLYPHS, False,
                                    Pace(), NoResizes())
    sc = lt.build_scenario(3, style=style)
    plot = tell(lt, sc, style)
    renderer.start_run(plot.state)
    checked = 0
    for item, delay in plot.lines():
        plot.state.clock += delay
        if item is None:
            continue
        clock[0] += lt.LOG_REFRESH_S  # each line arrives as the log is due, the header not
        renderer.emit(item, plot.state, 1733855280.0 + plot.state.clock)
        if re.search(LOG_STEPS[style], item.text):
            shown = [found for found in (re.search(LOG_STEPS[style], text)
                                         for text in screen.rows[renderer.layout.log_top:])
                     if found]
            assert header_count(screen.rows)[0] == int(shown[-1].group(1)), item.text
            checked += 1
    assert checked >= 20
