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

.PHONY: bench
# make bench [BENCH_ARGS=--large]: seed a real registry, time cold/warm/storage plans and the removal phase
bench: setup
	$(PY) scripts/bench.py $(BENCH_ARGS)

demo: setup
	$(PY) scripts/demo.py

demo-clean:
	$(PY) scripts/demo.py --clean

clean:
	rm -rf $(VENV) .demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The gc-daemon image (gc-daemon:dev): wheels built here, installed in a build without network.
# BASE_IMAGE=python:3.11-slim make image   uses another base (same Python minor version as .venv).
.PHONY: image base-image
base-image:
	@if [ -z "$${BASE_IMAGE:-}" ] || [ "$${BASE_IMAGE}" = local/python:3.11-bookworm ]; then \
		sh scripts/build-base-image.sh; fi

image: setup base-image
	sh scripts/build-image.sh
