# `make bench`: our trainer next to the notebook's Keras model and PyTorch eager, same data, same
# machine, same threads, alternating runs (bench/run.py); plus the GEMM-bound epoch time
# (bench/gemm.rs). Heavy: run it alone on a quiet machine. The peers' Python packages
# (TensorFlow-CPU, and PyTorch with its CUDA wheels, which `import torch` needs) live in a venv
# outside the clone.

.PHONY: bench bench-step

BENCH_VENV := $(CACHE_DIR)/bench-venv
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_THREADS ?= 2
BENCH_REPS ?= 3
BENCH_BATCHES ?= 32,256

$(BENCH_VENV)/.complete:
	rm -rf "$(BENCH_VENV)"
	$(PYTHON) -m venv "$(BENCH_VENV)"
	"$(BENCH_PY)" -m pip install --quiet --disable-pip-version-check \
	  tensorflow-cpu==2.21.0 torch==$(TORCH_VERSION)
	touch "$@"

bench: build $(BENCH_VENV)/.complete
	cargo build --release --locked --benches
	$(BENCH_PY) bench/run.py --bin "$(BIN)" --python "$(BENCH_PY)" \
	  --gemm "cargo bench --locked --bench gemm -- THREADS BATCH" \
	  --threads $(BENCH_THREADS) --reps $(BENCH_REPS) --batches $(BENCH_BATCHES)
	$(MAKE) --no-print-directory bench-tables
	$(MAKE) --no-print-directory bench-pictures

# Where one step's time goes, phase by phase (one thread, CPU time).
bench-step: setup
	cargo bench --locked --bench step

# The job's data load in fresh processes, before (the streaming reader) and now, then step by
# step (bench/load.rs).
.PHONY: bench-load
bench-load: setup
	cargo bench --locked --bench load

# One process against two data-parallel ranks on loopback (c10d/Gloo), global batch 32, 256 and
# 1024, with the all-reduce's cost per step (bench/dist.py). Heavy: run it alone.
.PHONY: bench-dist
bench-dist: build
	$(PYTHON) bench/dist.py --bin "$(BIN)" --threads $(BENCH_THREADS)

# `make bench-serve`: `train serve` against the same model served the way AWS's
# bring-your-own-container example serves one (Flask behind gunicorn, one sync worker per core,
# PyTorch eager, bench/serve_torch.py), on the same cores with the same OMP_NUM_THREADS: time to
# the first /ping 200, requests/s and p50/p99 latency under wrk for 1 and 100 images per request
# at 1 and 16 connections, peak RSS; first both servers must agree with `train predict` on all
# 10,000 test images. bench/serve.py tells the method. Heavy: run it alone on a quiet machine.
.PHONY: bench-serve serve-venv

# Flask, gunicorn, numpy and the CUDA libraries `import torch` loads, pinned in
# bench/serve-requirements.txt; the torch package is the project's own ($(TORCH_SITE)). One venv
# per version of that file; the stamp is written last, so an interrupted install is redone.
SERVE_VENV := $(CACHE_DIR)/serve-venv-$(shell sha256sum bench/serve-requirements.txt | cut -c1-12)
SERVE_STAMP := $(SERVE_VENV)/.complete
WRK := /usr/bin/wrk
# The model both servers load: trained here with the defaults unless given (SERVE_MODEL=.run/model
# takes `make train`'s).
BENCH_SERVE_DIR := $(RUN_DIR)/bench-serve
SERVE_MODEL ?= $(BENCH_SERVE_DIR)/model
BENCH_SERVE_SECONDS ?= 10
BENCH_SERVE_THREADS ?= 1
# Empty: bench/serve.py puts the servers on the upper half of the cores and wrk on the rest.
BENCH_SERVE_CPUS ?=
BENCH_SERVE_CLIENT_CPUS ?=

$(SERVE_STAMP): bench/serve-requirements.txt
	rm -rf "$(SERVE_VENV)"
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv "$(SERVE_VENV)"
	"$(SERVE_VENV)/bin/pip" install --quiet --disable-pip-version-check --no-deps \
	  -r bench/serve-requirements.txt
	"$(SERVE_VENV)/bin/pip" check --disable-pip-version-check
	touch "$@"

serve-venv: $(SERVE_STAMP)

$(WRK):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk

$(BENCH_SERVE_DIR)/model/model.json: | build
	rm -rf "$(BENCH_SERVE_DIR)"
	OMP_NUM_THREADS=$(BENCH_SERVE_THREADS) $(BIN) train --base-dir "$(BENCH_SERVE_DIR)"

bench-serve: build $(TORCH_STAMP) $(SERVE_STAMP) $(WRK) \
  $(if $(filter $(BENCH_SERVE_DIR)/model,$(SERVE_MODEL)),$(BENCH_SERVE_DIR)/model/model.json)
	$(SERVE_VENV)/bin/python bench/serve.py --bin "$(BIN)" --model "$(SERVE_MODEL)" \
	  --python "$(SERVE_VENV)/bin/python" --torch-site "$(TORCH_SITE)" \
	  --threads $(BENCH_SERVE_THREADS) --duration $(BENCH_SERVE_SECONDS) \
	  $(if $(BENCH_SERVE_CPUS),--cpus $(BENCH_SERVE_CPUS)) \
	  $(if $(BENCH_SERVE_CLIENT_CPUS),--client-cpus $(BENCH_SERVE_CLIENT_CPUS)) \
	  --json "$(RUN_DIR)/bench-serve.json"

# The measuring build for the GPU machine and its script (docs/gpu.md).
include bench/gpu.mk

# `make quality`: test accuracy of the notebook's defaults, the dense recipe
# (infra/recipe-hyperparameters.json) and the recipe without each ingredient, with the time per
# run (bench/quality.py; docs/recipe.md has the results and the command). The recipe and the
# defaults run with QUALITY_SEEDS, the rows without an ingredient with QUALITY_ABLATION_SEEDS.
# QUALITY_ARGS=--validation reports the validation accuracy the recipe was chosen on instead.
# Heavy (an hour and more on two cores): run it alone.
.PHONY: quality
QUALITY_SEEDS ?= 1,2,3
QUALITY_ABLATION_SEEDS ?= $(QUALITY_SEEDS)
QUALITY_ARGS ?=
quality: build
	$(PYTHON) bench/quality.py --bin "$(BIN)" --seeds $(QUALITY_SEEDS) \
	  --ablation-seeds $(QUALITY_ABLATION_SEEDS) --threads $(BENCH_THREADS) $(QUALITY_ARGS)

# Tables: scikit-learn (its bundled UCI sets), pandas and pyarrow in one venv, pinned in
# bench/tables-requirements.txt; the stamp is written last, so an interrupted install is redone.
TABLES_VENV := $(CACHE_DIR)/tables-venv-$(shell sha256sum bench/tables-requirements.txt | cut -c1-12)
TABLES_PY := $(TABLES_VENV)/bin/python
TABLES_STAMP := $(TABLES_VENV)/.complete

$(TABLES_STAMP): bench/tables-requirements.txt
	rm -rf "$(TABLES_VENV)"
	$(PYTHON) -m venv "$(TABLES_VENV)"
	"$(TABLES_PY)" -m pip install --quiet --disable-pip-version-check --no-deps \
	  -r bench/tables-requirements.txt
	"$(TABLES_PY)" -m pip check --disable-pip-version-check
	touch "$@"

.PHONY: tables-venv bench-tables quality-tables tables-fixtures
tables-venv: $(TABLES_STAMP)

# Loading Fashion-MNIST's training set as CSV and Parquet next to pandas and pyarrow, and an
# epoch on a CSV channel next to the same images as IDX (bench/tables.py). Run it alone.
bench-tables: build $(TABLES_STAMP)
	cargo build --release --locked --bench tables
	$(TABLES_PY) bench/tables.py --bin "$(BIN)" --loader "cargo bench --locked --bench tables --" \
	  --work "$(CACHE_DIR)/bench-tables" --threads $(BENCH_THREADS) --reps $(BENCH_REPS)

# Test accuracy on scikit-learn's UCI sets: ours next to MLPClassifier and LogisticRegression
# on the same splits (bench/quality_tables.py).
quality-tables: build $(TABLES_STAMP)
	$(TABLES_PY) bench/quality_tables.py --bin "$(BIN)"

# Remakes tests/fixtures/tables from scikit-learn's bundled sets (tests/fixtures/make_tables.py).
tables-fixtures: $(TABLES_STAMP)
	cd tests/fixtures && rm -rf tables && "$(TABLES_PY)" make_tables.py

# Pictures: Fashion-MNIST's training set as PNG class folders, loaded by the job's loader next
# to Keras' image_dataset_from_directory and a PIL loop (bench/pictures.py). Run it alone.
PICTURES_VENV := $(CACHE_DIR)/pictures-venv-$(shell sha256sum bench/pictures-requirements.txt | cut -c1-12)
PICTURES_PY := $(PICTURES_VENV)/bin/python
PICTURES_STAMP := $(PICTURES_VENV)/.complete

$(PICTURES_STAMP): bench/pictures-requirements.txt
	rm -rf "$(PICTURES_VENV)"
	$(PYTHON) -m venv "$(PICTURES_VENV)"
	"$(PICTURES_PY)" -m pip install --quiet --disable-pip-version-check \
	  -r bench/pictures-requirements.txt
	touch "$@"

.PHONY: bench-pictures pictures-fixtures
bench-pictures: build $(PICTURES_STAMP)
	cargo build --release --locked --bench tables
	$(PICTURES_PY) bench/pictures.py --loader "cargo bench --locked --bench tables --" \
	  --python "$(PICTURES_PY)" --work "$(CACHE_DIR)/bench-pictures" \
	  --threads $(BENCH_THREADS) --reps $(BENCH_REPS)

# Remakes tests/fixtures/pictures from scikit-learn's sample photos
# (tests/fixtures/make_pictures.py).
pictures-fixtures: $(TABLES_STAMP)
	cd tests/fixtures && rm -rf pictures && "$(TABLES_PY)" make_pictures.py
