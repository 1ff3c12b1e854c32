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
#   METHOD    pretraining method: pera, softcon, dualenc, cmid (pera)
#   RUN       training run folder                            (demo/run-$(METHOD))
#   PRETRAIN_CONFIG training recipe (YAML)          (train/recipes/$(METHOD)-tiny-demo.yaml)
#   NPROC_PER_NODE  training processes per node (GPUs)       (1)
#   NNODES          nodes; >1 uses a static rendezvous       (1)
#   NODE_RANK       this node's index 0..NNODES-1            (0)
#   MASTER_ADDR     address of node 0                        (127.0.0.1)
#   MASTER_PORT     rendezvous port on node 0                (29500)
#   PRETRAIN_ARGS   extra `eoforge pretrain` options, e.g. --steps 1000 --device cpu
#   WEIGHTS   exported backbone for `make eval`              ($(RUN)/model.safetensors)
#   EVAL_DATA labelled dataset for `make eval`               ($(DS))
#   SEED      seed for generated sample data                 (0)
#   COMPARE   output folder of `make compare`                (demo/compare)
#   COMPARE_CONFIG comparison recipe                 (eval/recipes/compare-demo.yaml)
#   COMPARE_ARGS   extra `eoforge compare` options, e.g. --seed 0 --seed 1 --device cuda
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
PRETRAIN_CONFIG ?= $(wildcard train/recipes/$(METHOD)-tiny-demo.yaml)
NPROC_PER_NODE ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
PRETRAIN_ARGS ?=
WEIGHTS ?= $(RUN)/model.safetensors
EVAL_DATA ?= $(DS)
COMPARE ?= demo/compare
COMPARE_CONFIG ?= eval/recipes/compare-demo.yaml
COMPARE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.eoforge-installed
BENCH_STAMP := $(VENV)/.eoforge-bench-installed
INTEROP_STAMP := $(VENV)/.eoforge-interop-installed

.PHONY: help install lint test demo demo-data ingest pretrain eval compare bench bench-gpu clean

help:
	@sed -n '1,/^$$/p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

# terratorch for the test that loads exports in TerraTorch (skipped, with a reason, if it cannot install)
$(INTEROP_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,interop]' || \
	  echo "make test: the interop extra (terratorch) did not install; tests/test_train_terratorch.py will skip"
	@touch $(INTEROP_STAMP)

install: $(STAMP)

# ruff over the tree, mypy over the packages the shard contract and ingest live in
lint: $(STAMP)
	$(BIN)/ruff check .
	@mkdir -p build/typecheck && ln -sfn $(CURDIR) build/typecheck/eoforge
	cd build/typecheck && $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml -p eoforge.shards -p eoforge.ingest

test: $(INTEROP_STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo-data: $(STAMP)
	$(BIN)/eoforge demo-data $(RAW) --seed $(SEED)

# generate scenes -> ingest (local Dask cluster) -> verify -> inspect -> pretrain a tiny ViT
# with $(METHOD) (train/recipes/$(METHOD)-tiny-demo.yaml) -> export -> kNN + linear probes against
# random init. The dual encoder exports and probes both encoders (S2 on S2 inputs, S1 on S1).
# Each stage says where it wrote.
demo: $(STAMP)
	test -f $(RAW)/truth.json || $(BIN)/eoforge demo-data $(RAW) --seed $(SEED)
	$(BIN)/eoforge ingest $(RAW) --out $(DS) --config ingest/recipes/demo.yaml --workers $(WORKERS)
	$(BIN)/eoforge shards verify $(DS)
	$(BIN)/eoforge shards inspect $(DS) --plot
	$(BIN)/eoforge pretrain --data $(DS) --method $(METHOD) --out $(RUN) --config train/recipes/$(METHOD)-tiny-demo.yaml --resume
ifeq ($(METHOD),dualenc)
	for b in s2 s1; do \
	  $(BIN)/eoforge export $(RUN) --out $(RUN)/model-$$b.safetensors --branch $$b && \
	  $(BIN)/eoforge eval --weights $(RUN)/model-$$b.safetensors --data $(DS) --probe knn --probe linear --out $(RUN)/eval-$$b \
	  || exit 1; \
	done
	@echo "make demo: done. dataset $(DS) (report.md, coverage/label PNGs), run $(RUN) (loss.png, metrics.jsonl),"
	@echo "           encoders $(RUN)/model-s2.safetensors and model-s1.safetensors, probes $(RUN)/eval-s2/results.md and eval-s1/results.md"
else
	$(BIN)/eoforge export $(RUN) --out $(RUN)/model.safetensors
	$(BIN)/eoforge eval --weights $(RUN)/model.safetensors --data $(DS) --probe knn --probe linear --out $(RUN)/eval
	@echo "make demo: done. dataset $(DS) (report.md, coverage/label PNGs), run $(RUN) (loss.png, metrics.jsonl),"
	@echo "           model $(RUN)/model.safetensors, probes $(RUN)/eval/results.md"
endif

ingest: $(STAMP)
	$(BIN)/eoforge ingest $(RAW) --out $(DS) $(foreach lc,$(LANDCOVER),--landcover $(lc)) \
		$(if $(CONFIG),--config $(CONFIG)) $(if $(SCHEDULER),--scheduler $(SCHEDULER),--workers $(WORKERS))

# torchrun: one node by default; NNODES>1 with NODE_RANK/MASTER_ADDR/MASTER_PORT on every node
# (see train/slurm/pretrain.sbatch for SLURM). --resume makes a rerun continue an interrupted run.
pretrain: $(STAMP)
	$(BIN)/python -m torch.distributed.run \
		$(if $(filter 1,$(NNODES)),--standalone,--nnodes $(NNODES) --node-rank $(NODE_RANK) --master-addr $(MASTER_ADDR) --master-port $(MASTER_PORT)) \
		--nproc-per-node $(NPROC_PER_NODE) \
		-m eoforge.cli pretrain --data $(DS) --method $(METHOD) --out $(RUN) \
		$(if $(PRETRAIN_CONFIG),--config $(PRETRAIN_CONFIG)) --resume $(PRETRAIN_ARGS)
	$(BIN)/eoforge export $(RUN) --out $(WEIGHTS)

eval: $(STAMP)
	$(BIN)/eoforge eval --weights $(WEIGHTS) --data $(EVAL_DATA)

# which method works on this data? every method of $(COMPARE_CONFIG), one budget, probed beside
# random init -> $(COMPARE)/results.md and results.png; builds the demo dataset first when
# DS is the demo's and missing. A rerun continues where it stopped.
compare: $(STAMP)
	@set -e; if [ "$(DS)" = "demo/ds" ] && [ ! -f $(DS)/manifest.parquet ]; then \
	  test -f $(RAW)/truth.json || $(BIN)/eoforge demo-data $(RAW) --seed $(SEED); \
	  $(BIN)/eoforge ingest $(RAW) --out $(DS) --config ingest/recipes/demo.yaml --workers $(WORKERS); \
	fi
	$(BIN)/eoforge compare --data $(DS) --out $(COMPARE) --config $(COMPARE_CONFIG) $(COMPARE_ARGS)

bench: $(BENCH_STAMP)
	EOFORGE_REAL_DATA=$(REAL_DATA) $(BIN)/python -m eoforge.shards.bench --out build/bench
	$(BIN)/python -m eoforge.ingest.bench --out build/bench
	$(BIN)/python -m eoforge.ingest.bench_plan --out build/bench
	$(BIN)/python -m eoforge.ingest.bench_waves --out build/bench
	$(BIN)/python -m eoforge.ingest.bench --out build/bench --loader-datasets
	$(BIN)/python -m eoforge.train.data.bench --out build/bench
	$(BIN)/python -m eoforge.train.bench_pera --out build/bench
	$(BIN)/python -m eoforge.train.bench_softcon --out build/bench
	@echo "make bench: results in build/bench/results.md"

# on a CUDA machine: PerA/DINO and SoftCon training steps (images/s, MFU) and the loader with one
# worker per core -> build/bench-gpu/results.md (train/bench_gpu.sh says how to run it without make)
bench-gpu: $(STAMP)
	PYTHON=$(BIN)/python train/bench_gpu.sh build/bench-gpu

clean:
	rm -rf build demo .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
