# Two commands for a fresh clone: `make test` and `make demo`.
# Both create .venv (Python 3.11) when missing and (re)install the pinned
# stack whenever setup.py or constraints.txt changed; otherwise they go
# straight to work.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rc-adapter-installed
PYTEST_ARGS ?=

.PHONY: test demo ablation install bench clean-venv

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) tools/demo.py

ablation: $(STAMP)
	$(PY) tools/ablation.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean-venv:
	rm -rf $(VENV)
