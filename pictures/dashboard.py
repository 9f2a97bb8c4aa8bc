#!/usr/bin/env python3
"""The README's picture: one frame of the real dashboard, drawn as SVG.

    python3 pictures/dashboard.py [OUT.svg]      (make picture; default pictures/dashboard.svg)

The program runs in a private tmux server (its own socket, killed afterwards) at 100x32 with a
fixed seed, started two minutes into its run with --started-ago so the chart is already drawn;
`tmux capture-pane -e -p` gives the screen with its SGR colour escapes (ECMA-48, 8.3.117),
which become <text>/<tspan> runs with fill colours on a dark background, one per cell run.
Standard library only; the converter (svg_from_capture) needs no tmux and is tested alone.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "llmtrain.py")
OUT = os.path.join(HERE, "dashboard.svg")

COLS, ROWS = 100, 32
#: The run shown: a GPT-2 speedrun on 8 x H100, two minutes in, past its first validation.
ARGS = ["--seed", "6", "--runs", "1", "--started-ago", "2m"]

#: A dark terminal palette (the 16 ANSI colours, then the default foreground/background).
PALETTE = ["#3b4048", "#ef596f", "#89ca78", "#e5c07b", "#61afef", "#d55fde", "#2bbac5",
           "#c8ccd4", "#5c6370", "#ff7b8a", "#a5e075", "#f0d48a", "#7cc3ff", "#e27ff0",
           "#52d8e0", "#ffffff"]
FOREGROUND = "#c8ccd4"
BACKGROUND = "#1b1f27"

FONT_PX = 14
CELL_W = FONT_PX * 0.602    # DejaVu Sans Mono's advance: 1233/2048 em
CELL_H = FONT_PX * 1.17     # ascent + descent, so block glyphs in the chart touch
PAD = 14
TITLE_H = 28

SGR = re.compile(r"\x1b\[([0-9;:]*)m")
OTHER_ESCAPE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-ln-z]|\][^\x07]*\x07|[()][A-Z0-9])")


def xterm_colour(index):
    """The 256-colour palette: 16 named, a 6x6x6 cube, 24 greys (xterm's 256colres.pl)."""
    if index < 16:
        return PALETTE[index]
    if index < 232:
        index -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (steps[index // 36], steps[index // 6 % 6], steps[index % 6])
    grey = 8 + 10 * (index - 232)
    return "#%02x%02x%02x" % (grey, grey, grey)


class Pen:
    """The SGR state: colours (None = the default), bold, dim, reverse."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None
        self.bg = None
        self.bold = False
        self.dim = False
        self.reverse = False

    def key(self):
        return (self.fg, self.bg, self.bold, self.dim, self.reverse)

    def apply(self, params):
        codes = [int(p) if p.isdigit() else 0 for p in re.split("[;:]", params)] or [0]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code == 0:
                self.reset()
            elif code == 1:
                self.bold = True
            elif code == 2:
                self.dim = True
            elif code == 22:
                self.bold = self.dim = False
            elif code == 7:
                self.reverse = True
            elif code == 27:
                self.reverse = False
            elif 30 <= code <= 37:
                self.fg = PALETTE[code - 30]
            elif 90 <= code <= 97:
                self.fg = PALETTE[code - 90 + 8]
            elif 40 <= code <= 47:
                self.bg = PALETTE[code - 40]
            elif 100 <= code <= 107:
                self.bg = PALETTE[code - 100 + 8]
            elif code == 39:
                self.fg = None
            elif code == 49:
                self.bg = None
            elif code in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    colour = xterm_colour(codes[i + 2])
                    i += 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    colour = "#%02x%02x%02x" % tuple(codes[i + 2:i + 5])
                    i += 4
                else:
                    colour = None
                if code == 38:
                    self.fg = colour
                else:
                    self.bg = colour
            i += 1


def cells(capture, rows, cols):
    """The screen as rows of (character, pen key) cells, from capture-pane -e output."""
    pen = Pen()
    screen = []
    for line in capture.split("\n")[:rows]:
        row = []
        position = 0
        for match in SGR.finditer(line):
            text = OTHER_ESCAPE.sub("", line[position:match.start()])
            row.extend((char, pen.key()) for char in text)
            pen.apply(match.group(1))
            position = match.end()
        row.extend((char, pen.key()) for char in OTHER_ESCAPE.sub("", line[position:]))
        screen.append(row[:cols])
    while len(screen) < rows:
        screen.append([])
    return screen


def runs(row):
    """(first column, text, pen key) for each stretch of equally styled cells."""
    found = []
    for column, (char, key) in enumerate(row):
        if found and found[-1][2] == key:
            found[-1][1].append(char)
        else:
            found.append((column, [char], key))
    return [(column, "".join(chars), key) for column, chars, key in found]


def svg_from_capture(capture, cols=COLS, rows=ROWS, title="llmtrain"):
    """An SVG image of a terminal screen given as capture-pane -e text."""
    width = PAD * 2 + cols * CELL_W
    height = TITLE_H + PAD * 2 + rows * CELL_H
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
        'viewBox="0 0 %.1f %.1f" role="img">' % (round(width), round(height), width, height),
        "<title>%s</title>" % escape(title),
        '<rect width="100%%" height="100%%" rx="8" fill="%s"/>' % BACKGROUND,
    ]
    # A window's title bar, as terminal screenshots show one.
    for index, colour in enumerate(("#ff5f57", "#febc2e", "#28c840")):
        out.append('<circle cx="%d" cy="%d" r="6" fill="%s"/>' % (
            PAD + 6 + 20 * index, TITLE_H // 2 + 2, colour))
    out.append('<text x="%.1f" y="%d" fill="#8b919a" font-family="sans-serif" '
               'font-size="12" text-anchor="middle">%s</text>' % (
                   width / 2, TITLE_H // 2 + 6, escape(title)))
    text_rows = []
    for number, row in enumerate(cells(capture, rows, cols)):
        top = TITLE_H + PAD + number * CELL_H
        baseline = top + FONT_PX * 0.928  # DejaVu's ascent: 1901/2048 em
        spans = []
        for column, text, (fg, bg, bold, dim, reverse) in runs(row):
            fill, back = fg or FOREGROUND, bg
            if reverse:
                fill, back = bg or BACKGROUND, fg or FOREGROUND
            x = PAD + column * CELL_W
            if back is not None:
                out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>'
                           % (x, top, len(text) * CELL_W, CELL_H, back))
            if not text.strip():
                continue
            attributes = ['x="%.1f"' % x, 'fill="%s"' % fill]
            if bold:
                attributes.append('font-weight="bold"')
            if dim:
                attributes.append('fill-opacity="0.6"')
            spans.append("<tspan %s>%s</tspan>" % (" ".join(attributes), escape(text)))
        if spans:
            text_rows.append('<text y="%.1f">%s</text>' % (baseline, "".join(spans)))
    out.append('<g font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
               'font-size="%d" xml:space="preserve">' % FONT_PX)
    out.extend(text_rows)
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --- the capture: the program on a tmux server of our own ---------------------------------

def tmux(server, *args):
    return subprocess.run(["tmux", "-L", server] + list(args), check=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=10).stdout


def capture_dashboard(cols=COLS, rows=ROWS, args=ARGS, timeout=20.0):
    """capture-pane -e text of the dashboard once its header, chart, log and grid are drawn."""
    server = "llmtrain-picture-%d" % os.getpid()
    with tempfile.TemporaryDirectory() as scratch:
        config = os.path.join(scratch, "tmux.conf")
        with open(config, "w") as handle:
            handle.write("set -g default-terminal tmux-256color\n")
        environ = "env -u NO_COLOR LANG=C.UTF-8 TZ=UTC"
        command = "%s %s %s %s" % (environ, sys.executable, SCRIPT, " ".join(args))
        tmux(server, "-f", config, "new-session", "-d", "-s", "pic", "-x", str(cols),
             "-y", str(rows), command)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                screen = tmux(server, "capture-pane", "-p", "-t", "pic")
                if "Elapsed" in screen and "── GPUs" in screen and "── log" in screen:
                    time.sleep(0.5)  # let the frame that is being sent finish
                    return tmux(server, "capture-pane", "-e", "-p", "-t", "pic")
                time.sleep(0.1)
            raise SystemExit("dashboard.py: the dashboard was not drawn within %.0f s" % timeout)
        finally:
            socket = tmux(server, "display-message", "-p", "#{socket_path}").strip()
            subprocess.run(["tmux", "-L", server, "kill-server"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
            if socket and os.path.exists(socket):
                os.remove(socket)  # tmux leaves its socket file behind


def main(argv):
    if shutil.which("tmux") is None:
        sys.stderr.write("dashboard.py: tmux is needed to draw the dashboard\n")
        return 2
    out = argv[0] if argv else OUT
    svg = svg_from_capture(capture_dashboard(), title="llmtrain " + " ".join(ARGS))
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(svg)
    print("wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
