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

# The measuring build for the GPU machine and its script (docs/gpu.md).
include bench/gpu.mk
