"""Names and values a user types, read as hostile input.

Failure modes covered here (the terminal and signal ones are in tests/test_hostile.py):

- Escape injection through a model name: ESC sequences (clear screen, set the window title),
  BEL, newlines that forge log lines, carriage returns, DEL, C1 controls and bidirectional
  overrides went out raw in the plain log, checkpoint paths, the launch command of the next
  run and the summary box left on the normal screen after the dashboard (which retitled the
  terminal), showed as ^[ in the dashboard's header, and went out raw in the error line for an
  unrecognized argument. Now every character a terminal acts on is shown escaped (`\\x1b`,
  `\\n`), in every style and every error line.
- Python 3.6 with a stdout that cannot encode the name (PYTHONIOENCODING=ascii, LANG=C): a
  UnicodeEncodeError traceback, where 3.7+ replaced the characters. Now both replace them.
- Wide characters: a name in CJK ideographs cut the dashboard's header short, pushed the
  summary box's right border out (in the plain log and on the screen the dashboard leaves)
  and made a wrapped log line in the dashboard run past its row and lose its end, since
  widths were counted in characters, not terminal columns (East Asian wide = 2, combining
  marks = 0). Now layout counts columns.
- Option values read by different rules: --exit-after and --speed took surrounding blanks, a
  trailing newline, underscores and other scripts' digits that --gpus, --seed and --runs
  refuse; a 5,000-digit --seed gave a 5,000-character line naming an internal function. Now
  every value is ASCII digits in the documented form, and an error is one short line naming
  the option, with any pasted value elided.
"""

import os
import re
import shutil
import sys

import pytest

from conftest import SCRIPT, load_llmtrain, run_cli
from ptyrun import LEAVE_ALT, PtyRun
from test_dashboard import Tmux, regions_drawn

PYENV = os.path.expanduser("~/.pyenv/versions")
STYLES = ("classic", "hf", "lightning", "deepspeed", "megatron", "torchtitan")
OLDEST_AND_NEWEST = [None] + [
    path for path in (os.path.join(PYENV, "3.6.15", "bin", "python3"),
                      os.path.join(PYENV, "3.13.0", "bin", "python3")) if os.path.exists(path)]


def ran(*args, **kwargs):
    python = kwargs.pop("python", None)
    if python:
        kwargs["python"] = python
    return run_cli(*args, **kwargs)


# --- escape injection ---------------------------------------------------------------------

HOSTILE_NAMES = [
    "evil\x1b[2J\x1b]0;PWNED\x07-7B",
    "two\nlines-7B",
    "back\rto-start-7B",
    "c1\x9b31m\x85-7B",
    "rtl\u202eB7-lave-7B",
    "del\x7f\x01-7B",
]
#: What a terminal acts on rather than shows, but for the newline that ends each line.
ACTED_ON = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed,name", enumerate(HOSTILE_NAMES, 5))
def test_control_characters_in_a_name_are_shown_escaped(style, seed, name):
    hostile = ran("--plain", "--instant", "--runs", "2", "--seed", seed, "--color", "never",
                  "--style", style, "--model", name)
    tame = ran("--plain", "--instant", "--runs", "2", "--seed", seed, "--color", "never",
               "--style", style, "--model", "tame-7B")
    assert hostile.returncode == tame.returncode == 0, hostile.stderr
    assert ACTED_ON.findall(hostile.stdout + hostile.stderr) == []
    assert hostile.stdout.count("\n") == tame.stdout.count("\n")  # no forged lines
    shown = name.encode("unicode_escape").decode("ascii").lower()  # framework paths lowercase
    assert shown in hostile.stdout.lower()


@pytest.mark.parametrize("python", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("argv", [
    ["--model", "evil\x1b]0;PWNED\x07"], ["--style", "\x1b[2J\x9b"], ["x\x1b]0;PWNED\x07\ny"],
    ["--plain", "--color", "\x1b[31m"], ["--seed", "1\n2"], ["--exit-after", "5s\x07"]])
def test_an_error_line_shows_control_characters_escaped(python, argv):
    done = ran(*argv, python=python)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.endswith("\n"), done.stderr
    assert ACTED_ON.findall(done.stderr) == []
    assert re.search(r"\\(x1b|x07|x9b|n)", done.stderr), done.stderr


def test_an_escaped_name_keeps_its_colour_codes_apart():
    done = ran("--plain", "--instant", "--runs", "1", "--seed", "3", "--color", "always",
               "--model", "evil\x1b]0;PWNED\x07-7B")
    assert done.returncode == 0
    escapes = re.findall("\x1b[^m]*m?", done.stdout)
    assert escapes and all(re.match(r"^\x1b\[[0-9;]*m$", e) for e in escapes)
    assert "\x07" not in done.stdout


def finished_in_a_pty(args, **kwargs):
    """The raw bytes of a dashboard run to its end (exit 0) in a 120x40 pty."""
    run = PtyRun(args, rows=40, cols=120, **kwargs)
    try:
        assert run.proc.wait(timeout=60) == 0
        run.drain()
        return run.output()
    finally:
        run.close()


def summary_left_on_screen(args, name):
    """The raw bytes of a dashboard run to its end in a pty, and the summary box's lines as
    left on the normal screen after it."""
    out = finished_in_a_pty(args + ["--model", name])
    after = out.rsplit(LEAVE_ALT, 1)[1].decode("utf-8")
    return out, re.findall("[\u250c\u2502\u2514][^\r\n]*[\u2510\u2502\u2518]", after)


def test_the_summary_left_after_the_dashboard_shows_a_name_escaped():
    out, box = summary_left_on_screen(["--seed", "3", "--instant", "--runs", "2"],
                                      "evil\x1b[2J\x1b]0;PWNED\x07\x9b31m\n-7B")
    assert b"PWNED\x07" not in out and b"\x1b]0;" not in out and b"\xc2\x9b" not in out
    assert any("Model: evil\\x1b[2J\\x1b]0;PWNED\\x07\\x9b31m\\n-7B (" in line for line in box)
    assert ACTED_ON.findall("".join(box)) == []


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_a_name_neither_retitles_the_pane_nor_breaks_the_header(tmp_path):
    # printf makes the control characters, as $'...' would in bash.
    command = ("env LANG=C.UTF-8 %s %s --seed 3 --speed 40 --runs 1 --model "
               "\"$(printf 'evil\\033]0;PWNED\\007\\033[2J-7B')\"; echo \"[exit $?]\"" % (
                   sys.executable, SCRIPT))
    pane = Tmux(tmp_path, [], cols=120, rows=40, command=command)
    try:
        pane.wait_for(lambda ls: regions_drawn(ls, 120), what="first frame")
        header = [line for line in pane.screen() if line.startswith(" llmtrain ")][0]
        assert "evil\\x1b]0;PWNED\\x07\\x1b[2J-7B" in header, header
        assert pane.exit_status(timeout=30) == "0"
        assert any("Model: evil\\x1b]0;PWNED" in line for line in pane.screen())
        assert "PWNED" not in pane.pane("#{pane_title}")
    finally:
        pane.close()


# --- encodings ----------------------------------------------------------------------------

@pytest.mark.parametrize("python", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("style", STYLES)
def test_a_name_the_output_cannot_encode_is_replaced_on_every_python(python, style):
    for name in ("\u901a\u4e49\u5343\u95ee-72B", "\u041c\u043e\u0434\u0435\u043b\u044c-7B"):
        done = ran("--plain", "--instant", "--runs", "1", "--seed", "4", "--style", style,
                   "--model", name, python=python,
                   env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": None},
                   )
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        assert all(ord(c) < 128 for c in done.stdout)  # replaced, not sent raw


@pytest.mark.parametrize("python", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("argv", [["--model", "\u901a\u4e49\u5343\u95ee"],
                                  ["--style", "\u041c\u043e\u0434\u0435\u043b\u044c"]])
def test_an_error_line_the_output_cannot_encode_is_still_one_line(python, argv):
    done = ran(*argv, python=python,
               env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": None})
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("llmtrain: error: argument %s: " % argv[0])


@pytest.mark.parametrize("python", OLDEST_AND_NEWEST[1:])
def test_the_dashboard_with_a_name_the_output_cannot_encode_ends_cleanly(python):
    out = finished_in_a_pty(["--seed", "3", "--instant", "--runs", "1", "--model",
                             "\u901a\u4e49-72B"], python=python,
                            env={"LANG": "C", "PYTHONIOENCODING": "ascii"})
    assert b"Traceback" not in out and b"Final loss:" in out.rsplit(LEAVE_ALT, 1)[1]


# --- option values ------------------------------------------------------------------------

@pytest.mark.parametrize("python", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("argv", [
    ["--exit-after", " 5s"], ["--exit-after", "5s\n"], ["--exit-after", "\u0665s"],
    ["--exit-after", "5s "], ["--started-ago", " 2m"], ["--started-ago", "\u0662m"],
    ["--speed", "1_000"], ["--speed", " 1e6 "], ["--speed", "\u0663"], ["--speed", "inf"],
    ["--speed", "nan"], ["--speed", "1e999"], ["--seed", "\u0663"], ["--gpus", " 8"],
    ["--seed", "9" * 5000], ["--gpus", "9" * 5000], ["--runs", "9" * 5000],
    ["--exit-after", "9" * 5000], ["--started-ago", "9" * 5000], ["--speed", "9" * 5000 + "x"],
])
def test_every_value_is_read_by_the_same_rules_and_errors_stay_short(python, argv):
    done = ran(*(argv + ["--instant", "--runs", "1"]), python=python)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and done.stdout == ""
    assert len(lines) == 1 and len(lines[0]) <= 120, lines
    assert lines[0].startswith("llmtrain: error: argument %s: " % argv[0])
    assert "_value" not in lines[0] and "Traceback" not in done.stderr
    assert "9" * 25 not in lines[0]  # a pasted value is elided


@pytest.mark.parametrize("python", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("argv", [["--model", "x" * 5000], ["--style", "x" * 5000],
                                  ["x" * 5000], ["--seed=" + "x" * 5000]])
def test_a_pasted_word_is_elided_in_its_error_line(python, argv):
    done = ran(*(argv + ["--instant", "--runs", "1"]), python=python)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1 and len(lines[0]) <= 200, lines
    assert "x" * 25 not in lines[0] and "x" * 21 + "..." in lines[0]
    assert lines[0].endswith("(see --help)")


@pytest.mark.parametrize("argv", [["--speed", "2.5"], ["--speed", "1e3"], ["--speed", ".5"],
                                  ["--exit-after", "1h30m"], ["--exit-after", "90"],
                                  ["--exit-after", "1.5s"]])
def test_the_documented_forms_still_read(argv):
    done = ran(*(argv + ["--instant", "--runs", "1", "--plain"]))
    assert done.returncode == 0, done.stderr


# --- wide characters ----------------------------------------------------------------------

WIDE = "\u901a\u4e49\u5343\u95ee\u8d85\u7ea7\u5927\u6a21\u578b-72B"


@pytest.mark.parametrize("name", [WIDE, "e\u0301cole-7B", "plain-7B", "\uff21\uff22-7B"])
def test_the_summary_box_is_aligned_in_terminal_columns(name):
    lt = load_llmtrain()
    done = ran("--plain", "--instant", "--runs", "1", "--seed", "3", "--color", "never",
               "--model", name)
    box = [line for line in done.stdout.splitlines() if line[:1] in ("\u250c", "\u2502", "\u2514")]
    assert len(box) >= 5 and any(name in line for line in box)
    assert len({lt.cells(line) for line in box}) == 1, box


def test_cells_counts_wide_combining_and_ascii():
    lt = load_llmtrain()
    assert lt.cells("abc") == 3 and lt.cells("\u901a\u4e49") == 4
    assert lt.cells("e\u0301") == 1 and lt.cells("\uff21") == 2
    assert lt.clip_cells("\u901a\u4e49\u5343", 5) == "\u901a\u4e49"
    assert lt.clip_row([("ab", None), ("\u901a\u4e49", "bold")], 4) == [
        ("ab", None), ("\u901a", "bold")]


@pytest.mark.parametrize("width", [11, 12, 13, 40, 41])
def test_a_wrapped_log_line_keeps_every_character_within_its_columns(width):
    lt = load_llmtrain()
    segments = [("12:00:01 ", "time"), ("[CKPT] Saving checkpoint to checkpoints/", None),
                (WIDE.lower() + "-e\u0301cole/checkpoint-68/", "good")]
    rows = lt.wrap_row(segments, width)
    assert all(lt.cells(lt.row_text(row)) <= width for row in rows), rows
    assert all(lt.cells(lt.row_text(row)) >= width - 1 for row in rows[:-1]), rows
    shown = [lt.row_text(row)[2:] if index else lt.row_text(row)
             for index, row in enumerate(rows)]
    assert "".join(shown) == lt.row_text(segments)


@pytest.mark.parametrize("name", [WIDE, "e\u0301cole-7B", "\uff21\uff22-7B", "plain-7B"])
def test_the_summary_left_after_the_dashboard_is_aligned_in_terminal_columns(name):
    lt = load_llmtrain()
    _, box = summary_left_on_screen(["--seed", "3", "--instant", "--runs", "1"], name)
    assert len(box) >= 5 and any(name in line for line in box), box
    assert len({lt.cells(line) for line in box}) == 1, box


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is not installed")
def test_the_dashboard_header_shows_a_wide_name_whole(tmp_path):
    pane = Tmux(tmp_path, ["--seed", "3", "--speed", "5", "--model", WIDE], cols=120, rows=40,
                env="LANG=C.UTF-8")
    try:
        pane.wait_for(lambda ls: regions_drawn(ls, 120), what="first frame")
        header = [line for line in pane.screen() if line.startswith(" llmtrain ")][0]
        assert WIDE in header, header
        assert header.rstrip().endswith("q quits"), header
    finally:
        pane.close()
