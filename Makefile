# llmtrain: one Python file; these targets test, benchmark and install it.
PYTHON ?= python3
PREFIX ?= $(HOME)/.local
BINDIR = $(PREFIX)/bin

.PHONY: test bench install uninstall

test:
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) tests/bench.py

install:
	install -d "$(BINDIR)"
	install -m 0755 llmtrain.py "$(BINDIR)/llmtrain"

uninstall:
	rm -f "$(BINDIR)/llmtrain"
