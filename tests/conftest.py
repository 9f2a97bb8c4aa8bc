"""Shared helpers: the program under test is the one file at the top of the project."""

import importlib.util
import os
import subprocess
import sys

import pytest

from userenv import user_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "llmtrain.py")


def load_llmtrain():
    spec = importlib.util.spec_from_file_location("llmtrain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lt():
    return load_llmtrain()


def tell(lt, sc, style="classic", glyphs=None):
    """The plot of a run told in `style`: iterate plot.lines(); plot.state is its state."""
    return lt.Plot(sc, lt.make_voice(style, sc, glyphs or lt.UNICODE_GLYPHS))


def played(lt, sc, style="classic", glyphs=None):
    """(final state, lines shown) of a whole run: the clock moves on by each delay, as the
    driver's would, without sleeping; lines are stamped as a renderer stamps them."""
    plot = tell(lt, sc, style, glyphs)
    lines = []
    for item, delay in plot.lines():
        if item is not None:
            lines.append((plot.state.clock, lt.stamp(item, 1733855280.405 + plot.state.clock)))
        plot.state.clock += delay
    return plot.state, lines


def run_cli(*args, **kwargs):
    """Run the real file in a subprocess; stdout is a pipe, so the plain log is printed."""
    env = user_environment(kwargs.pop("env", {}))
    python = kwargs.pop("python", sys.executable)
    return subprocess.run([python, SCRIPT] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env, timeout=kwargs.pop("timeout", 120),
                          universal_newlines=True, **kwargs)
