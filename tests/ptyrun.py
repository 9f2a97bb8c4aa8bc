"""The program on a pseudo-terminal we own (os.openpty, its size set with TIOCSWINSZ, the
slave made the child's controlling terminal): shared by the dashboard tests and the
benchmark. Standard library only."""

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time

from userenv import user_environment

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "llmtrain.py")
ENTER_ALT = b"\x1b[?1049h"
LEAVE_ALT = b"\x1b[?1049l"


class PtyRun(object):
    """The program on a pty we own: its output read continuously, the slave kept open so
    its modes can be read after the program is gone."""

    def __init__(self, args, rows=24, cols=80, env=None, ctty=True, script_on_stdin=False,
                 python=sys.executable, watch=(), script=SCRIPT):
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.modes = termios.tcgetattr(self.slave)
        environ = user_environment(dict(dict(
            LC_ALL=None, LANGUAGE=None, COLUMNS=None, LINES=None, TERM="xterm-256color",
            LANG="C.UTF-8"), **(env or {})))

        def child_setup():
            os.setsid()
            if ctty:
                fcntl.ioctl(1, termios.TIOCSCTTY, 0)
        self.started = time.monotonic()
        # script=None runs the interpreter with args alone (e.g. "-c", code).
        argv = [python] + (["-"] if script_on_stdin else [script] if script else []) \
            + [str(a) for a in args]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if script_on_stdin else self.slave,
            stdout=self.slave, stderr=self.slave, env=environ, preexec_fn=child_setup)
        if script_on_stdin:
            with open(SCRIPT, "rb") as source:
                self.proc.stdin.write(source.read())
            self.proc.stdin.close()
        self.out = bytearray()
        self.first_seen = dict((pattern, None) for pattern in watch)
        self.lock = threading.Lock()
        self.stopping = False
        self.reader = threading.Thread(target=self.read_all)
        self.reader.daemon = True
        self.reader.start()

    def read_all(self):
        while not self.stopping:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready and not self.take():
                return

    def take(self):
        """Read one chunk the program wrote; False once the terminal is closed."""
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return False
        if not data:
            return False
        now = time.monotonic()
        with self.lock:
            self.out += data
            for pattern, seen in self.first_seen.items():
                if seen is None and pattern in self.out:
                    self.first_seen[pattern] = now - self.started
        return True

    def output(self):
        with self.lock:
            return bytes(self.out)

    def wait_for(self, predicate, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.output()):
                return
            if self.proc.poll() is not None and not predicate(self.output()):
                self.drain()  # take what the program wrote last before judging
                if predicate(self.output()):
                    return
                break
            time.sleep(0.02)
        raise AssertionError("%s not met; rc=%s, output tail: %r" % (
            what, self.proc.poll(), self.output()[-600:]))

    def drain(self):
        """Once the program has exited: stop the reader, then take what is still buffered
        (the slave stays open here, so the master never reads EOF: read until empty)."""
        self.stopping = True
        self.reader.join()
        while select.select([self.master], [], [], 0)[0] and self.take():
            pass

    def wait_drawn(self, alternate_screen=True):
        self.wait_for(lambda out: (ENTER_ALT in out or not alternate_screen)
                      and b"Epoch" in out and b"log" in out, what="first frame")

    def resize(self, rows, cols):
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def exit_within(self, seconds):
        """The exit status, asserting the program ended within `seconds` from now."""
        started = time.monotonic()
        try:
            status = self.proc.wait(timeout=seconds + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running after %.1f s" % (seconds + 5))
        took = time.monotonic() - started
        assert took < seconds, "took %.2f s to exit" % took
        return status

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stopping = True
        self.reader.join(2)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
