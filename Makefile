# Everything a fresh machine needs is installed from here: `make train` and `make test` do all
# the set-up themselves (Debian's dataset-fashion-mnist, the torch wheel, the build).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Caches live outside the clone, so fresh clones (and CI) reuse them.
CACHE_DIR ?= $(HOME)/.cache/smtrain
TORCH_VERSION := 2.13.0
PYTHON ?= python3
# On a GPU host, libtorch needs the whole CUDA wheel set; elsewhere only the two CUDA runtime
# libraries that libtorch_cpu.so links against.
TORCH_FLAVOUR ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
TORCH_SITE := $(CACHE_DIR)/torch-$(TORCH_VERSION)-$(TORCH_FLAVOUR)
TORCH_STAMP := $(TORCH_SITE)/.complete
export LIBTORCH := $(TORCH_SITE)/torch
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/target
BIN := $(CARGO_TARGET_DIR)/release/train

DATA_DIR := /usr/share/datasets/fashion-mnist
DATA_STAMP := $(DATA_DIR)/train-images-idx3-ubyte.gz
# gloo's headers, which c10d's ProcessGroupGloo.hpp includes (multi-host training; the wheel
# ships c10d's headers but not gloo's).
GLOO_STAMP := /usr/include/gloo/context.h
# Where `make train` lays out its /opt/ml tree.
RUN_DIR ?= $(CURDIR)/.run
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: help setup build train train-recipe test test-rust lint fmt clean

# Fragments for the image, the S3 test server and infra add their own targets. Each may add
# prerequisites of the Rust tests (TEST_RUST_PREREQS: things the tests use, such as a server
# binary or an image) and further test targets (TEST_TARGETS), all run by `make test`.
TEST_RUST_PREREQS :=
TEST_TARGETS :=
-include docker/docker.mk tests/s3-server.mk infra/infra.mk bench/bench.mk

help:
	@echo "make train   set up, build, and train afresh on the real Fashion-MNIST (artifacts in .run/model)"
	@echo "make train-recipe  the same with the dense recipe of docs/recipe.md (.run-recipe/model)"
	@echo "make test    set up, build, and run every test"
	@echo "make lint    cargo fmt --check and clippy -D warnings"
	@echo "make build   release build of the train binary"

$(DATA_STAMP):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist

$(GLOO_STAMP):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgloo-dev

# The torch wheel of exactly the version tch expects, unpacked into the cache; the stamp is
# written last so an interrupted install is redone.
$(TORCH_STAMP):
	rm -rf "$(TORCH_SITE).tmp" "$(TORCH_SITE)"
	$(PYTHON) -m pip install --quiet --no-compile --target "$(TORCH_SITE).tmp" \
	  $(if $(filter cpu,$(TORCH_FLAVOUR)),--no-deps 'nvidia-cuda-runtime==13.0.96.*' 'nvidia-cuda-cupti==13.0.85.*') \
	  torch==$(TORCH_VERSION)
	echo "$(TORCH_VERSION)" > "$(TORCH_SITE).tmp/torch/build-version"
	mv "$(TORCH_SITE).tmp" "$(TORCH_SITE)"
	touch "$@"

setup: $(DATA_STAMP) $(GLOO_STAMP) $(TORCH_STAMP)

build: setup
	cargo build --release --locked

# Each run trains afresh: an earlier run's checkpoints would otherwise be resumed (a finished
# one trains no epoch) or, with other hyperparameters, refused.
train: build
	rm -rf "$(RUN_DIR)/model" "$(RUN_DIR)/output" "$(RUN_DIR)/checkpoints"
	$(BIN) train --base-dir "$(RUN_DIR)"
	@echo "model: $(RUN_DIR)/model"

# The dense recipe (docs/recipe.md, infra/recipe-hyperparameters.json) on the real Fashion-MNIST,
# in its own /opt/ml tree so that `make train` keeps the notebook's defaults.
RECIPE_DIR ?= $(CURDIR)/.run-recipe
train-recipe: build
	rm -rf "$(RECIPE_DIR)/model" "$(RECIPE_DIR)/output" "$(RECIPE_DIR)/checkpoints"
	mkdir -p "$(RECIPE_DIR)/input/config"
	cp infra/recipe-hyperparameters.json "$(RECIPE_DIR)/input/config/hyperparameters.json"
	$(BIN) train --base-dir "$(RECIPE_DIR)"
	@echo "model: $(RECIPE_DIR)/model"

# Tests pin libtorch to one thread: two threads on a busy two-core machine run many times slower.
test: test-rust $(TEST_TARGETS)

# The tests that need a server or the Docker image are #[ignore]d under a plain `cargo test`
# (reported as ignored, with the reason); here their parts are set up, and they all run.
test-rust: setup $(TEST_RUST_PREREQS)
	OMP_NUM_THREADS=1 cargo test --release --locked -- --include-ignored $(TEST_RUST_SKIP)

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --locked --all-targets -- -D warnings

fmt:
	cargo fmt --all

clean:
	rm -rf "$(RUN_DIR)"
	cargo clean
