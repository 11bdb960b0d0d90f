# gc-daemon: the two commands a newcomer runs (see README.md).
#   make demo  - set up, start a real local registry, push images, plan, run-now, show the result
#   make test  - set up everything (packages, dockerd, images, venv) and run the whole suite
.PHONY: setup test lint unit demo demo-clean clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	sh scripts/setup-env.sh

lint: setup
	$(VENV)/bin/ruff check gc_daemon tests scripts
	$(VENV)/bin/ruff format --check gc_daemon tests scripts
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q -m "not integration"

test: lint
	$(VENV)/bin/pytest -q -ra

demo: setup
	$(PY) scripts/demo.py

demo-clean:
	$(PY) scripts/demo.py --clean

clean:
	rm -rf $(VENV) .demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
