# The README's two commands: `make demo` (the end-to-end demo) and `make test` (tests + lint).
# Both bootstrap .venv from a fresh clone and are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-quick lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dynamic-detr demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# JOBS pytest-xdist workers, each test file on one worker (its module fixtures built once), each worker with
# cores / JOBS threads (tests/conftest.py); the files handed out in collection order, where tests/conftest.py
# puts the longest first (xdist's default order, by number of tests, started them last); JOBS=0 runs in this
# process
JOBS ?= 2
PYTEST = $(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile --no-loadscope-reorder

test: $(STAMP) lint
	$(PYTEST) $(ARGS)

# the same without the tests marked slow (end-to-end CLI / demo runs, torchrun, fault injection, overfits,
# benchmark runs): for a quick check while working; CI runs `make test`
test-quick: $(STAMP) lint
	$(PYTEST) -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
