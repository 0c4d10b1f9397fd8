# Two commands for a fresh clone: `make test` and `make demo`.
# Both create .venv (Python 3.11) when missing and (re)install the pinned
# stack whenever setup.py or constraints.txt changed; otherwise they go
# straight to work.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rc-adapter-installed
PYTEST_ARGS ?=
# Test workers (pytest-xdist); each test module stays on one worker so its
# module fixtures are built once, the longest modules first
# (tests/conftest.py). JOBS=0 runs the suite in one process.
JOBS ?= 2
PYTEST := $(PY) -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder

.PHONY: test test-quick demo ablation install bench clean-venv

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS) tests

# Without the end-to-end tests through the real tools (tests/conftest.py).
test-quick: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(PY) tools/demo.py

ablation: $(STAMP)
	$(PY) tools/ablation.py

# The `bench` extra (PEFT, for bench_peft.py's LoRA rows) is installed here
# only, once per change of setup.py/constraints.txt; without it (no registry)
# the benchmarks still run and bench_peft.py says the LoRA rows are skipped.
bench: $(STAMP)
	@S=$(VENV)/.rc-adapter-bench-installed; \
	if [ ! -f $$S ] || [ setup.py -nt $$S ] || [ constraints.txt -nt $$S ]; then \
	  $(PY) -m pip install -c constraints.txt -e ".[bench]" && touch $$S || \
	  echo "make bench: could not install the bench extra (peft);" \
	       "bench_peft.py skips the LoRA rows"; \
	fi
	$(PY) benchmarks/run.py

clean-venv:
	rm -rf $(VENV)
