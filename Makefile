# eoforge — every target creates .venv when missing, so on a fresh machine
# `make demo` or `make test` is the only command needed.
#
# Variables (override on the command line, e.g. `make ingest RAW=/data/raw DS=/data/ds`):
#   PYTHON    interpreter used to create the venv            (python3)
#   VENV      virtual environment folder                     (.venv)
#   RAW       raw inputs for `make ingest` (folders/files)   (demo/raw)
#   LANDCOVER land-cover raster(s) for `make ingest`         (empty: found under RAW)
#   DS        dataset folder (shards + manifest)             (demo/ds)
#   WORKERS   Dask workers for ingest                        (2)
#   CONFIG    ingest recipe (YAML)                           (ingest/recipes/demo.yaml for the demo)
#   SCHEDULER existing Dask scheduler for ingest             (empty: a LocalCluster)
#   METHOD    pretraining method: pera|softcon|cmid|dualenc  (pera)
#   RUN       training run folder                            (demo/run-$(METHOD))
#   SEED      seed for generated sample data                 (0)
#   REAL_DATA real sample products for `make bench`          (../shared/data/real if present)
#   PYTEST_ARGS extra arguments for pytest                   (empty)

PYTHON ?= python3
VENV ?= .venv
RAW ?= demo/raw
LANDCOVER ?=
DS ?= demo/ds
WORKERS ?= 2
CONFIG ?=
SCHEDULER ?=
METHOD ?= pera
RUN ?= demo/run-$(METHOD)
SEED ?= 0
REAL_DATA ?= $(wildcard ../shared/data/real)
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.eoforge-installed

.PHONY: help install test demo demo-data ingest pretrain eval bench clean

help:
	@sed -n '1,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo-data: $(STAMP)
	$(BIN)/eoforge demo-data $(RAW) --seed $(SEED)

demo: $(STAMP)
	test -f $(RAW)/truth.json || $(BIN)/eoforge demo-data $(RAW) --seed $(SEED)
	$(BIN)/eoforge ingest $(RAW) --out $(DS) --config ingest/recipes/demo.yaml --workers $(WORKERS)
	$(BIN)/eoforge shards verify $(DS)
	$(BIN)/eoforge shards inspect $(DS) --plot
	@echo "make demo: pretraining and evaluation are not built yet (issues #4, #5);"
	@echo "           the ingested dataset is in $(DS) (report: $(DS)/report.md)." ; exit 1

ingest: $(STAMP)
	$(BIN)/eoforge ingest $(RAW) --out $(DS) $(foreach lc,$(LANDCOVER),--landcover $(lc)) \
		$(if $(CONFIG),--config $(CONFIG)) $(if $(SCHEDULER),--scheduler $(SCHEDULER),--workers $(WORKERS))

pretrain: $(STAMP)
	@echo "make pretrain: not built yet (issue #4)"; exit 1

eval: $(STAMP)
	@echo "make eval: not built yet (issue #5)"; exit 1

bench: $(STAMP)
	EOFORGE_REAL_DATA=$(REAL_DATA) $(BIN)/python -m eoforge.shards.bench --out build/bench
	$(BIN)/python -m eoforge.ingest.bench --out build/bench
	@echo "make bench: training benchmarks are not built yet (issue #4); results in build/bench/results.md"

clean:
	rm -rf build demo .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
