"""Issue 9: the README's picture. pictures/dashboard.py turns a tmux capture (text with SGR
colour escapes) into SVG; the converter is checked on a known capture without tmux, the
whole script on the real dashboard where tmux is installed."""

import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from conftest import ROOT
from userenv import user_environment

PICTURE_SCRIPT = os.path.join(ROOT, "pictures", "dashboard.py")
SVG = "{http://www.w3.org/2000/svg}"


def load_picture():
    spec = importlib.util.spec_from_file_location("dashboard_picture", PICTURE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pic = load_picture()

CAPTURE = (
    "\x1b[7m\x1b[36m llmtrain \x1b[0;1m\x1b[36m\x1b[49m training  \x1b[39mGPT-2\x1b[0m "
    "a<b & c\n"
    "\x1b[2mLoss \x1b[0;1m\x1b[39m3.4971\x1b[0;2m  val \x1b[0;1m\x1b[33m3.8241\x1b[0m\n"
    "\x1b[35m01:32:15 \x1b[1m\x1b[36m[NCCL] \x1b[0m\x1b[39mAllReduce \x1b[38;5;196mhot"
    "\x1b[38;2;1;2;3m rgb\x1b[0m\n"
    "\x1b[32m\u2588\u2588\u2584\x1b[0m\n")


def spans(svg):
    root = ElementTree.fromstring(svg)
    return root, [(span.text, span.attrib) for span in root.iter(SVG + "tspan")]


def test_a_capture_becomes_well_formed_svg_with_its_text_and_colours():
    svg = pic.svg_from_capture(CAPTURE, cols=40, rows=6, title="t")
    root, found = spans(svg)
    assert root.tag == SVG + "svg"
    texts = "".join(text for text, _ in found)
    for word in ("llmtrain", "training", "GPT-2", "a<b & c", "3.4971", "[NCCL]", "AllReduce",
                 "\u2588\u2588\u2584"):
        assert word in texts
    fill = dict((text.strip(), attrib) for text, attrib in found)
    cyan, yellow, magenta, green = (pic.PALETTE[i] for i in (6, 3, 5, 2))
    # Reverse video: the text takes the background's colour on a cyan cell.
    assert fill["llmtrain"]["fill"] == pic.BACKGROUND
    assert any(rect.get("fill") == cyan for rect in root.iter(SVG + "rect"))
    assert fill["training"]["fill"] == cyan and fill["training"]["font-weight"] == "bold"
    assert fill["GPT-2"]["fill"] == pic.FOREGROUND
    assert fill["Loss"].get("fill-opacity") == "0.6"
    assert fill["3.8241"]["fill"] == yellow
    assert fill["01:32:15"]["fill"] == magenta
    assert fill["hot"]["fill"] == "#ff0000"
    assert fill["rgb"]["fill"] == "#010203"
    assert fill["\u2588\u2588\u2584"]["fill"] == green


def test_cells_stay_in_their_columns():
    root, found = spans(pic.svg_from_capture(CAPTURE, cols=40, rows=6))
    starts = dict((text.strip(), float(attrib["x"])) for text, attrib in found)
    assert starts["training"] == pytest.approx(pic.PAD + 10 * pic.CELL_W, abs=0.06)
    # A row longer than the screen is cut at its width.
    long_row = pic.svg_from_capture("x" * 50, cols=40, rows=1)
    assert "x" * 41 not in long_row and "x" * 40 in long_row


def test_the_committed_picture_is_well_formed_and_shows_the_dashboard():
    with open(os.path.join(ROOT, "pictures", "dashboard.svg"), encoding="utf-8") as handle:
        root, found = spans(handle.read())
    texts = "".join(text for text, _ in found)
    for word in ("llmtrain", "Elapsed", "Loss", "log", "GPUs"):
        assert word in texts
    assert len(set(attrib["fill"] for _, attrib in found)) >= 5
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        assert handle.readline().startswith("![llmtrain's dashboard")


def test_the_script_draws_the_real_dashboard(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed: the picture is drawn from the dashboard in tmux")
    out = tmp_path / "dashboard.svg"
    result = subprocess.run([sys.executable, PICTURE_SCRIPT, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                            env=user_environment({}))
    assert result.returncode == 0, result.stderr
    root, found = spans(out.read_text(encoding="utf-8"))
    texts = "".join(text for text, _ in found)
    for word in ("llmtrain", "Elapsed 0:02:0", "GPT-2", "── log", "── GPUs", "[TRAIN]"):
        assert word in texts
    assert len(set(attrib["fill"] for _, attrib in found)) >= 5
