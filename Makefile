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

.PHONY: run test install
install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/billing standalone

test: $(STAMP)
	$(VENV)/bin/python -m pytest
