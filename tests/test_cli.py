"""Issue 2: the command line as people use it - a subprocess with pipes, signals, bad input,
every Python on the machine."""

import concurrent.futures
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import ROOT, SCRIPT, run_cli
from test_golden import STYLES, run_hash

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ", re.M)


def without_timestamps(text):
    return STAMP.sub("[T] ", text)


def interpreters():
    """Every CPython 3.6+ that pyenv has here (the tests themselves run on python3)."""
    root = subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE,
                          universal_newlines=True).stdout.strip() if _has("pyenv") else ""
    found = []
    for path in sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))):
        found.append(path)
    return found


def _has(command):
    return any(os.access(os.path.join(d, command), os.X_OK)
               for d in os.environ.get("PATH", "").split(os.pathsep))


@pytest.mark.parametrize("argv, needle", [
    (["--speed", "0"], "--speed"),
    (["--speed", "-2"], "--speed"),
    (["--speed", "nan"], "--speed"),
    (["--speed", "inf"], "--speed"),
    (["--speed", "fast"], "--speed"),
    (["--gpus", "0"], "--gpus"),
    (["--gpus", "4097"], "--gpus"),
    (["--gpus", "eight"], "--gpus"),
    (["--gpu", "v100"], "--gpu"),
    (["--runs", "0"], "--runs"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--exit-after", "soon"], "--exit-after"),
    (["--exit-after", "0s"], "--exit-after"),
    (["--humor", "lots"], "--humor"),
    (["--color", "sometimes"], "--color"),
    (["--model", "no-size-here"], "--model"),
    (["--model", "acme-13M"], "50M to 2000B"),
    (["--bogus"], "unrecognized"),
    (["--seed", " 5"], "--seed"),
    (["--seed", "1_000"], "--seed"),
    (["--gpus", "\u0663"], "--gpus"),
    (["--exit-after", "1h99m"], "--exit-after"),
    (["--exit-after", "9" * 400 + "h"], "--exit-after"),
    (["--model", "Llama-3.1-405B", "--gpus", "1", "--gpu", "a100-40g"], "does not fit"),
])
def test_bad_input_is_a_one_line_usage_error(argv, needle):
    result = run_cli(*(argv + ["--plain", "--instant", "--runs", "1"]))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and needle in result.stderr
    assert "Traceback" not in result.stderr


def test_same_seed_same_output_timestamps_aside():
    first = run_cli("--plain", "--instant", "--runs", "2", "--seed", "42")
    second = run_cli("--plain", "--instant", "--runs", "2", "--seed", "42")
    assert first.returncode == second.returncode == 0
    assert without_timestamps(first.stdout) == without_timestamps(second.stdout)
    assert first.stdout.count("Training complete") == 2


def test_identical_output_on_every_python_here():
    """Every style, runs with fp16 overflows and a resumed job among them: floats that are
    shown are summed exactly (sum() became compensated in 3.12)."""
    pythons = interpreters()
    if len(pythons) < 2:
        pytest.skip("only one interpreter on this machine")
    jobs = [(case, style, python) for case in ("--seed 3", "--seed 40", "--seed 52")
            for style in STYLES for python in pythons]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(lambda job: run_hash(*job), jobs))
    by_run = {}
    for (case, style, python), digest in zip(jobs, digests):
        by_run.setdefault((case, style), {})[python] = digest
    differ = ["%s --style %s: %s" % (case, style, " ".join(
        os.path.basename(os.path.dirname(os.path.dirname(p))) for p, d in by_python.items()
        if d != by_python[pythons[0]])) for (case, style), by_python in sorted(by_run.items())
        if len(set(by_python.values())) > 1]
    assert not differ, "not the same run on every Python: %s" % "; ".join(differ)


def test_list_models_and_version():
    result = run_cli("--list-models")
    assert result.returncode == 0
    assert "Llama-3.1-8B" in result.stdout and "8,030,261,248" in result.stdout
    result = run_cli("--version")
    assert result.returncode == 0 and re.match(r"llmtrain \d+\.\d+\.\d+", result.stdout)


def test_custom_and_case_insensitive_models_run():
    result = run_cli("--plain", "--instant", "--runs", "1", "--seed", "4",
                     "--model", "acme-13B", "--gpus", "16")
    assert result.returncode == 0
    size = int(re.search(r"Model size: ([\d,]+) parameters", result.stdout).group(1)
               .replace(",", ""))
    assert abs(size - 13e9) / 13e9 < 0.03
    assert "Found 16 " in result.stdout
    result = run_cli("--plain", "--instant", "--runs", "1", "--seed", "4",
                     "--model", "mixtral-8X7b")
    assert "Loading model: Mixtral-8x7B" in result.stdout


def test_piped_into_head_ends_quietly():
    command = "%s %s --plain --speed 1000 | head -n 5" % (sys.executable, SCRIPT)
    result = subprocess.run(["sh", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.stdout.count("\n") == 5
    assert result.stderr == ""


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                            (signal.SIGHUP, 129)])
def test_signals_end_quietly_with_128_plus_signal(signum, status):
    process = subprocess.Popen([sys.executable, SCRIPT, "--plain", "--seed", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    first = process.stdout.readline()  # it is running once it has printed
    assert "Initializing" in first
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == status
    assert "Traceback" not in err and err == ""


def test_runs_and_exit_after_end_with_status_zero():
    result = run_cli("--plain", "--instant", "--runs", "3", "--seed", "8")
    assert result.returncode == 0 and result.stdout.count("Training complete") == 3
    start = time.monotonic()
    result = run_cli("--plain", "--speed", "1", "--exit-after", "1s", "--seed", "8")
    assert result.returncode == 0 and result.stderr == ""
    assert time.monotonic() - start < 30
    assert "Initializing" in result.stdout


def test_color_follows_the_flag_and_no_color():
    always = run_cli("--plain", "--instant", "--runs", "1", "--seed", "2", "--color", "always")
    assert "\x1b[35m[" in always.stdout  # timestamps magenta
    never = run_cli("--plain", "--instant", "--runs", "1", "--seed", "2", "--color", "never")
    assert "\x1b" not in never.stdout
    auto = run_cli("--plain", "--instant", "--runs", "1", "--seed", "2")
    assert "\x1b" not in auto.stdout  # stdout is a pipe
    no_color = run_cli("--plain", "--instant", "--runs", "1", "--seed", "2",
                       env={"NO_COLOR": "1"})
    assert "\x1b" not in no_color.stdout


def test_ascii_when_the_output_cannot_encode_unicode():
    result = run_cli("--plain", "--instant", "--runs", "1", "--seed", "2",
                     env={"PYTHONIOENCODING": "ascii", "LC_ALL": "C"})
    assert result.returncode == 0 and result.stderr == ""
    assert re.search(r"\[#+[-.:= ]*\] ", result.stdout)


def test_nothing_is_written_to_disk():
    with tempfile.TemporaryDirectory() as workdir:
        before = set(os.listdir(ROOT))
        result = subprocess.run([sys.executable, SCRIPT, "--plain", "--instant", "--runs", "2",
                                 "--humor", "max"], cwd=workdir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        assert result.returncode == 0
        assert os.listdir(workdir) == []
        assert set(os.listdir(ROOT)) == before


def test_no_socket_no_file_no_hardware_in_process(monkeypatch):
    """Run main() with the dangerous doors nailed shut."""
    import builtins
    import socket
    from conftest import load_llmtrain
    lt = load_llmtrain()

    def refuse(*args, **kwargs):
        raise AssertionError("llmtrain must not open %r" % (args,))

    real_open = builtins.open

    def read_only_open(path, mode="r", *args, **kwargs):
        hardware = str(path).startswith(("/dev/nvidia", "/proc/driver"))
        if hardware or any(flag in mode for flag in "wax+"):
            refuse(path, mode)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(lt, "install_signal_handlers", lambda: None)
    monkeypatch.setattr(lt, "ignore_signals", lambda: None)
    for seed in range(5):
        assert lt.main(["--plain", "--instant", "--runs", "1", "--seed", str(seed),
                        "--color", "never"]) == 0


def test_plain_on_a_terminal_redraws_the_progress_line_in_place():
    """--plain in a real pseudo-terminal: the bar is redrawn with carriage returns."""
    import pty
    import select
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, SCRIPT, "--plain", "--speed", "400", "--runs",
                                "1", "--seed", "5"], stdin=slave, stdout=slave, stderr=slave,
                               close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    assert process.wait(timeout=10) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "Traceback" not in screen
    redraws = re.findall(r"\r\[[\d :-]+\] \[TRAIN\] Epoch", screen)
    assert len(redraws) > 20
    # When validation starts, the epoch's last bar stays on screen as a line of its own.
    assert re.search(r"\] 100\.0%[^\r\n]*\r?\n[^\r\n]*Running validation", screen)
    assert "Training complete" in screen


@pytest.mark.parametrize("command, status, message", [
    ("{py} {script} --list-models | true", 0, ""),
    ("{py} {script} --list-styles | true", 0, ""),
    ("{py} {script} --plain --instant --runs 1 >&-", 2, "standard output is closed"),
    ("{py} {script} --plain --instant --runs 1 >/dev/full", 1, "No space left on device"),
])
def test_unusual_output_ends_with_one_line_at_most(command, status, message):
    result = subprocess.run(["bash", "-c", command.format(py=sys.executable, script=SCRIPT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == status
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == (1 if message else 0) and message in result.stderr


def test_text_the_output_cannot_encode_is_replaced_not_fatal():
    result = run_cli("--plain", "--instant", "--runs", "1", "--model", "\u043c\u043e\u0434-7B",
                     env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0 and result.stderr == ""
    assert "Loading model: ???-7B" in result.stdout


def test_nohup_keeps_it_running_through_a_hangup():
    process = subprocess.Popen(["sh", "-c", "trap '' HUP; exec %s %s --plain --speed 5"
                                % (sys.executable, SCRIPT)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
    assert process.stdout.readline()  # running
    process.send_signal(signal.SIGHUP)
    assert process.stdout.readline()  # still printing after the hangup
    assert process.poll() is None
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)
    assert process.returncode == 143


def test_ctrl_c_during_start_up_is_quiet(monkeypatch):
    from conftest import load_llmtrain
    lt = load_llmtrain()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(lt, "build_scenario", interrupted)
    monkeypatch.setattr(lt, "install_signal_handlers", lambda: None)
    monkeypatch.setattr(lt, "ignore_signals", lambda: None)
    assert lt.main(["--plain", "--instant", "--runs", "1"]) == 130


def test_an_empty_no_color_does_not_turn_colour_off(lt):
    class Terminal(object):
        def isatty(self):
            return True
    assert lt.wants_color("auto", Terminal(), {"TERM": "xterm", "NO_COLOR": ""})
    assert not lt.wants_color("auto", Terminal(), {"TERM": "xterm", "NO_COLOR": "1"})
