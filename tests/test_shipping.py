"""Shipping: the manual page, shell completions, make install/uninstall, pip install and the
test target on a machine without pytest, each tried as a user or packager would.

Tools a case needs (man, zsh, fish, an interpreter of a given version, the package index)
are looked for; a case without them is skipped and says why.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli
from userenv import user_environment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "llmtrain.py")
PYENV = os.path.expanduser("~/.pyenv/versions")


def output(*args):
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def help_options():
    """Every option --help lists (the spellings at the start of its option lines)."""
    options = set()
    for line in output("--help").splitlines():
        head = re.match(r"^  (-[^ ].*?)(?:  |$)", line)
        if head:
            options.update(part.split()[0] for part in head.group(1).split(", "))
    return options


def interpreter(version_prefix):
    found = sorted(glob.glob(os.path.join(PYENV, version_prefix + "*", "bin", "python3")))
    if not found:
        pytest.skip("no Python %s here" % version_prefix)
    return found[0]


def shell_run(argv, **kwargs):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=user_environment(), timeout=120,
                          **kwargs)


# --- the manual ---------------------------------------------------------------------------

def test_v_is_version():
    assert output("-V") == output("--version")
    assert re.match(r"^llmtrain \d+\.\d+\.\d+\n$", output("-V"))


def test_help_ends_with_keys_environment_and_exit_status():
    text = output("--help")
    for heading in ("Keys:", "Environment:", "Exit status:"):
        assert heading in text
    assert "NO_COLOR" in text and "143 for SIGTERM" in text and "Esc" in text


def test_the_man_page_names_every_option_in_help():
    page = output("--print-manpage").replace("\\-", "-")
    assert help_options()
    for option in help_options():
        assert re.search(r"\\fB%s\\fR" % re.escape(option), page), option
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "KEYS", "ENVIRONMENT",
                    "EXIT STATUS"):
        assert ".SH " + heading in page


@pytest.mark.skipif(not shutil.which("man"), reason="man is not installed")
def test_the_man_page_renders_without_warnings(tmp_path):
    page = tmp_path / "llmtrain.1"
    page.write_text(output("--print-manpage"))
    done = shell_run(["man", "--warnings", "-l", str(page)],
                     )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "EXIT STATUS" in done.stdout and "--print-completions" in done.stdout
    assert "started-ago" in done.stdout


# --- completions --------------------------------------------------------------------------

@pytest.mark.skipif(not shutil.which("bash"), reason="bash is not installed")
@pytest.mark.parametrize("words, offered", [
    ("llmtrain --style m", "megatron"),
    ("llmtrain --gpu b", "b200"),
    ("llmtrain --model Llama-3.1-4", "Llama-3.1-405B"),
    ("llmtrain --print-comp", "--print-completions"),
    ("llmtrain -", "--started-ago"),
])
def test_bash_completes_options_and_values(tmp_path, words, offered):
    script = tmp_path / "llmtrain.bash"
    script.write_text(output("--print-completions", "bash"))
    done = shell_run(["bash", "-c", 'source "$1"; COMP_WORDS=($2); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); '
                      '_llmtrain; printf "%s\\n" "${COMPREPLY[@]}"; complete -p llmtrain',
                      "bash", str(script), words])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert offered in done.stdout.split("\n")
    assert "complete -F _llmtrain llmtrain" in done.stdout


@pytest.mark.skipif(not shutil.which("zsh"), reason="zsh is not installed")
def test_zsh_loads_the_completion_from_its_fpath(tmp_path):
    (tmp_path / "_llmtrain").write_text(output("--print-completions", "zsh"))
    done = shell_run(["zsh", "-f", "-c", 'fpath=("$1" $fpath); autoload -U compinit; '
                      'compinit -u -d "$1/dump"; print -r -- $_comps[llmtrain]; '
                      'zsh -n "$1/_llmtrain" && print syntax-ok', "zsh", str(tmp_path)])
    assert done.stdout.split() == ["_llmtrain", "syntax-ok"], done.stderr


@pytest.mark.skipif(not shutil.which("fish"), reason="fish is not installed")
def test_fish_completes_style_values(tmp_path):
    script = tmp_path / "llmtrain.fish"
    script.write_text(output("--print-completions", "fish"))
    done = shell_run(["fish", "--no-config", "-c",
                      "source $argv[1]; complete -C'llmtrain --style '; complete -C'llmtrain --ex'",
                      str(script)])
    offered = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert done.stderr == "", done.stderr
    assert {"classic", "hf", "torchtitan", "random", "--exit-after"} <= set(offered)


def test_completions_know_every_option_in_help():
    for shell in ("bash", "zsh", "fish"):
        text = output("--print-completions", shell)
        for option in help_options():
            spelled = option if shell != "fish" else (
                "-l " + option[2:] if option.startswith("--") else "-s " + option[1:])
            assert spelled in text, (shell, option)


# --- make install / uninstall -------------------------------------------------------------

def make(*args):
    done = shell_run(["make", "-s", "-C", ROOT, "PYTHON=" + sys.executable] + list(args))
    assert done.returncode == 0, done.stderr
    return done


def files_under(top):
    return sorted(os.path.relpath(os.path.join(d, f), top)
                  for d, _, names in os.walk(top) for f in names)


def test_make_install_stages_under_destdir_and_uninstall_leaves_no_file(tmp_path):
    stage = str(tmp_path / "stage")
    make("install", "DESTDIR=" + stage, "PREFIX=/usr")
    installed = files_under(stage)
    assert "usr/bin/llmtrain" in installed
    assert "usr/lib/llmtrain/llmtrain.py" in installed
    assert any(re.match(r"usr/lib/llmtrain/__pycache__/llmtrain\..*\.pyc$", f)
               for f in installed)
    for path in ("usr/share/man/man1/llmtrain.1",
                 "usr/share/bash-completion/completions/llmtrain",
                 "usr/share/zsh/site-functions/_llmtrain",
                 "usr/share/fish/vendor_completions.d/llmtrain.fish"):
        assert path in installed
    with open(os.path.join(stage, "usr/bin/llmtrain")) as launcher:
        assert "'/usr/lib/llmtrain'" in launcher.read()  # the path after staging, not before
    make("uninstall", "DESTDIR=" + stage, "PREFIX=/usr")
    assert files_under(stage) == []


def test_the_installed_command_runs_from_bytecode_and_prints_the_same_run(tmp_path):
    prefix = str(tmp_path / "prefix")
    make("install", "PREFIX=" + prefix)
    command = os.path.join(prefix, "bin", "llmtrain")
    args = ["--plain", "--instant", "--runs", "1", "--seed", "5", "--color", "never"]
    installed = shell_run([command] + args, cwd=str(tmp_path))
    script = shell_run([sys.executable, SCRIPT] + args, cwd=str(tmp_path))
    strip = re.compile(r"\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d")
    assert installed.returncode == 0, installed.stderr
    assert strip.sub("T", installed.stdout) == strip.sub("T", script.stdout)
    before = files_under(prefix)
    shell_run([command, "--plain", "--instant", "--runs", "1"], cwd=str(tmp_path))
    assert files_under(prefix) == before  # starting it wrote no bytecode, nor anything else
    make("uninstall", "PREFIX=" + prefix)
    assert files_under(prefix) == []


# --- pip install, and make test without pytest --------------------------------------------

def venv(python, where):
    done = shell_run([python, "-m", "venv", where])
    assert done.returncode == 0, done.stderr
    return os.path.join(where, "bin", "python")


def pip_or_skip(python, *args):
    done = shell_run([python, "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check"] + list(args))
    if done.returncode and re.search(r"(?i)connection|resolve|No matching distribution",
                                     done.stderr):
        pytest.skip("no package index in reach: %s" % done.stderr.strip()[-200:])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("version", ["3.6", "3.13"])
def test_pip_install_gives_the_llmtrain_command(tmp_path, version):
    python = venv(interpreter(version), str(tmp_path / "venv"))
    if version == "3.6":
        pip_or_skip(python, "pip==21.3.1")  # 3.6's bundled pip 18 predates PEP 517 builds
    pip_or_skip(python, ROOT)
    command = os.path.join(str(tmp_path / "venv"), "bin", "llmtrain")
    done = shell_run([command, "--plain", "--instant", "--runs", "1", "--seed", "2"],
                     cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "Total time" in done.stdout or "Training complete" in done.stdout
    assert shell_run([command, "-V"]).stdout.startswith("llmtrain ")


def test_make_test_without_pytest_says_in_one_line_what_to_install(tmp_path):
    python = interpreter("3.13")
    if shell_run([python, "-c", "import pytest"]).returncode == 0:
        pytest.skip("this Python has pytest")
    tree = str(tmp_path / "tree")
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".test-venv"))
    env = user_environment({"PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_NO_INDEX": "1",
                            "PIP_FIND_LINKS": None, "PIP_CONFIG_FILE": os.devnull})
    done = subprocess.run(["make", "-s", "-C", tree, "test", "PYTHON=" + python],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, env=env, timeout=300)
    assert done.returncode != 0
    said = [line for line in done.stdout.splitlines() if line.startswith("make test:")]
    assert len(said) == 1 and "pytest" in said[0], done.stdout
    assert not os.path.exists(os.path.join(tree, ".test-venv"))


def test_make_test_without_pytest_makes_its_own_environment(tmp_path):
    python = interpreter("3.13")
    tree = str(tmp_path / "tree")
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".test-venv"))
    done = shell_run(["make", "-s", "-C", tree, ".test-venv/ready", "PYTHON=" + python])
    if done.returncode and "cannot fetch pytest" in done.stdout:
        pytest.skip("no package index in reach")
    assert done.returncode == 0, done.stdout + done.stderr
    check = shell_run([os.path.join(tree, ".test-venv", "bin", "python"), "-c",
                       "import pytest"])
    assert check.returncode == 0
    with open(os.path.join(tree, ".test-venv", ".gitignore")) as ignore:
        assert ignore.read().strip() == "*"  # git status stays clean
