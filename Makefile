# llmtrain: one Python file; these targets test, benchmark, picture and install it.
PYTHON ?= python3
# Where `make install` puts it: ~/.local needs no root; PREFIX=/usr/local for everyone, and
# DESTDIR stages the same tree elsewhere (for packagers).
PREFIX ?= $(HOME)/.local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib/llmtrain
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share
BASHDIR ?= $(DATADIR)/bash-completion/completions
ZSHDIR ?= $(DATADIR)/zsh/site-functions
FISHDIR ?= $(DATADIR)/fish/vendor_completions.d
# The suite's own environment when $(PYTHON) has no pytest (git ignores it: it holds a
# .gitignore of its own).
TESTENV = .test-venv
PYTEST_ARGS = -q -p no:cacheprovider tests

.PHONY: test bench picture install uninstall

test:
	@if $(PYTHON) -c 'import pytest' 2>/dev/null; then \
	    echo "$(PYTHON) -B -m pytest $(PYTEST_ARGS)"; $(PYTHON) -B -m pytest $(PYTEST_ARGS); \
	else \
	    $(MAKE) --no-print-directory $(TESTENV)/ready && \
	    echo "$(TESTENV)/bin/python -B -m pytest $(PYTEST_ARGS)" && \
	    $(TESTENV)/bin/python -B -m pytest $(PYTEST_ARGS); \
	fi

# pytest is the suite's only need; with no package index in reach, say what to install.
$(TESTENV)/ready:
	@echo "pytest is not installed for $(PYTHON): making $(TESTENV) and installing it there"
	@$(PYTHON) -m venv $(TESTENV) || { echo "make test: cannot make a virtual environment; install python3-venv, or pytest for $(PYTHON)"; exit 1; }
	@echo '*' > $(TESTENV)/.gitignore
	@$(TESTENV)/bin/python -m pip install --quiet --disable-pip-version-check pytest >/dev/null 2>&1 \
	    || { rm -rf $(TESTENV); echo "make test: cannot fetch pytest (offline?); install pytest for $(PYTHON) and run make test again"; exit 1; }
	@touch $@

bench:
	$(PYTHON) -B tests/bench.py

# The README's picture: one frame of the real dashboard (needs tmux), drawn as SVG.
picture:
	$(PYTHON) pictures/dashboard.py pictures/dashboard.svg

# The module, byte-compiled now so the command starts without compiling 240 KB each time,
# a launcher that imports it, the man page and the completions; uninstall removes just these.
install:
	install -d "$(DESTDIR)$(LIBDIR)" "$(DESTDIR)$(BINDIR)" "$(DESTDIR)$(MANDIR)/man1" \
	    "$(DESTDIR)$(BASHDIR)" "$(DESTDIR)$(ZSHDIR)" "$(DESTDIR)$(FISHDIR)"
	install -m 0644 llmtrain.py "$(DESTDIR)$(LIBDIR)/llmtrain.py"
	$(PYTHON) -m compileall -q -d "$(LIBDIR)" "$(DESTDIR)$(LIBDIR)"
	printf '%s\n' "#!$$($(PYTHON) -c 'import sys; print(sys.executable)')" \
	    "import sys" "sys.dont_write_bytecode = True  # llmtrain writes no file, even here" \
	    "sys.path.insert(0, '$(LIBDIR)')" "from llmtrain import main" "sys.exit(main())" \
	    > "$(DESTDIR)$(BINDIR)/llmtrain"
	chmod 0755 "$(DESTDIR)$(BINDIR)/llmtrain"
	$(PYTHON) llmtrain.py --print-manpage > "$(DESTDIR)$(MANDIR)/man1/llmtrain.1"
	$(PYTHON) llmtrain.py --print-completions bash > "$(DESTDIR)$(BASHDIR)/llmtrain"
	$(PYTHON) llmtrain.py --print-completions zsh > "$(DESTDIR)$(ZSHDIR)/_llmtrain"
	$(PYTHON) llmtrain.py --print-completions fish > "$(DESTDIR)$(FISHDIR)/llmtrain.fish"

uninstall:
	rm -f "$(DESTDIR)$(BINDIR)/llmtrain" "$(DESTDIR)$(MANDIR)/man1/llmtrain.1" \
	    "$(DESTDIR)$(BASHDIR)/llmtrain" "$(DESTDIR)$(ZSHDIR)/_llmtrain" \
	    "$(DESTDIR)$(FISHDIR)/llmtrain.fish" "$(DESTDIR)$(LIBDIR)/llmtrain.py"
	rm -rf "$(DESTDIR)$(LIBDIR)/__pycache__"
	-rmdir "$(DESTDIR)$(LIBDIR)"
