# llmtrain: one Python file; these targets test, benchmark and install it.
PYTHON ?= python3
PREFIX ?= $(HOME)/.local
BINDIR = $(PREFIX)/bin

.PHONY: test bench install uninstall

test:
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) tests/bench.py

# The README's picture: one frame of the real dashboard (needs tmux), drawn as SVG.
.PHONY: picture
picture:
	$(PYTHON) pictures/dashboard.py pictures/dashboard.svg

install:
	install -d "$(BINDIR)"
	install -m 0755 llmtrain.py "$(BINDIR)/llmtrain"

uninstall:
	rm -f "$(BINDIR)/llmtrain"
