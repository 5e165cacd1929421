# The two commands of the README: `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/pip install --quiet -e ./client
	touch $(STAMP)

# The suite's processes (pytest-xdist): most of its time is flow and fault tests waiting on processes they
# started, which overlap well on two cores. 0: one process, no xdist.
TEST_WORKERS ?= 2

.PHONY: run test install
install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/billing standalone

# Byte-compiled first: the flow and fault tests start the API, workers and beat hundreds of times, and where
# PYTHONDONTWRITEBYTECODE is set (CI's machines set it) each start would compile the project anew.
test: $(STAMP)
	$(VENV)/bin/python -m compileall -q api domain tasks worker migrations beat_schedule.py
	$(VENV)/bin/python -m pytest --numprocesses $(TEST_WORKERS)
