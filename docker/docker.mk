# The Docker image (docker/Dockerfile), built without a registry: included by the Makefile.
#
#   make docker-image        the cpu image ($(IMAGE_CPU)); the Rust tests run it (tests/it/docker.rs)
#   make docker-image-cuda   the cuda image ($(IMAGE_CUDA)); 2.7 GB of CUDA wheels, not in `make test`
#   make docker-check-cuda   inside the cuda image: every library resolves; trains on this CPU host
#   make docker-train        the cpu image on the real Fashion-MNIST; prints the test accuracy
#   make docker-sizes        both images' sizes
#
# Route: the host builds the binary (`make build`); docker/gather.sh lays out the files the image
# adds, exactly as the Dockerfile's build stage does; that tree is imported as an image and named
# in the Dockerfile's ARTIFACTS argument, and a debootstrapped Debian stands in for
# debian:bookworm-slim. BuildKit then builds the Dockerfile's runtime stage, skipping the build
# stages that would need a registry. Every step is skipped when its inputs have not changed.

DOCKER ?= docker
IMAGE_NAME ?= smtrain
IMAGE_CPU ?= $(IMAGE_NAME):cpu
IMAGE_CUDA ?= $(IMAGE_NAME):cuda
BASE_IMAGE ?= smtrain/debian:bookworm-slim-local
ARTIFACTS_CPU ?= smtrain/artifacts:cpu
ARTIFACTS_CUDA ?= smtrain/artifacts:cuda
DOCKER_WORK := $(CACHE_DIR)/docker
CUDA_TORCH_SITE := $(CACHE_DIR)/torch-$(TORCH_VERSION)-cuda
# Threads of the containers that `make docker-train` runs: one by default, as the tests, because
# this project's machines are two shared cores; give a real host its physical cores.
DOCKER_THREADS ?= 1

IMAGE_VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE_REVISION = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)$(shell test -z "$$(git status --porcelain 2>/dev/null)" || echo -dirty)
IMAGE_SOURCE = $(shell git remote get-url origin 2>/dev/null)

DOCKER_BUILD_ARGS = -f docker/Dockerfile \
  --build-arg RUNTIME_IMAGE=$(BASE_IMAGE) \
  --build-arg ARTIFACTS=$(ARTIFACTS_CPU) \
  --build-arg VERSION=$(IMAGE_VERSION) \
  --build-arg REVISION=$(IMAGE_REVISION) \
  --build-arg SOURCE=$(IMAGE_SOURCE)

.PHONY: docker-deps docker-init docker-base docker-artifacts docker-image docker-image-cuda docker-check-cuda \
  docker-image-from-source \
  docker-train docker-sizes docker-clean

# The Rust tests run the cpu image; `make test` builds it first, and a missing Docker engine fails
# the run: a test that did not run must not read as passed. SMTRAIN_TESTS_ALLOW_SKIP=1 (a machine
# without Docker) probes the engine instead, and without one leaves the image tests out (cargo
# reports them as ignored).
# The engine is probed only when tests are asked for: other targets (push, submit) must not
# touch Docker at parse time.
ifeq ($(SMTRAIN_TESTS_ALLOW_SKIP),1)
ifneq ($(filter test test-rust,$(MAKECMDGOALS)),)
DOCKER_ENGINE := $(shell $(DOCKER) info >/dev/null 2>&1 && echo yes)
endif
else
DOCKER_ENGINE := required
endif
ifneq ($(DOCKER_ENGINE),)
TEST_RUST_PREREQS += docker-image
test-rust: export SMTRAIN_IMAGE = $(IMAGE_CPU)
else ifneq ($(filter test test-rust,$(MAKECMDGOALS)),)
TEST_RUST_SKIP := --skip docker
$(info No Docker engine here: SMTRAIN_TESTS_ALLOW_SKIP=1, so the image tests are left out.)
endif

docker-deps:
	@command -v $(DOCKER) >/dev/null || { echo "docker is not installed" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "the Docker engine is not reachable" >&2; exit 1; }
	@DOCKER=$(DOCKER) docker/buildkit.sh --check
	@command -v debootstrap >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }

# Kept while it exists: debootstrap takes minutes and the base changes only with Debian.
docker-base: docker-deps
	$(SUDO) env DOCKER=$(DOCKER) docker/base-image.sh $(BASE_IMAGE)

# The entry point, linked statically: no loader and no library file stands between the exec and
# its first instruction, which blocks the stop signals (src/bin/smtrain-init.rs). `cargo rustc`
# relinks only that binary with these flags; the copy keeps it apart from the dynamic one that
# `cargo build` and `cargo test` link at the same path.
INIT_BIN := $(CARGO_TARGET_DIR)/smtrain-init-static
STATIC_INIT_FLAGS := -C target-feature=+crt-static -C relocation-model=static
docker-init: build
	cargo rustc --release --locked --bin smtrain-init -- $(STATIC_INIT_FLAGS)
	cp "$(dir $(BIN))smtrain-init" "$(INIT_BIN).tmp"
	mv "$(INIT_BIN).tmp" "$(INIT_BIN)"

# The cpu variant's files, imported as the image that ARTIFACTS names. Re-imported only when the
# binary, the libraries, the data or gather.sh change (their digest is the image's label).
docker-artifacts: build docker-init docker-deps
	@set -eu; \
	key=$$(cat "$(BIN)" "$(INIT_BIN)" docker/gather.sh "$(TORCH_SITE)/.complete" $(DATA_DIR)/*.gz \
	  | sha256sum | cut -c1-32); \
	have=$$($(DOCKER) image inspect -f '{{index .Config.Labels "smtrain.inputs"}}' $(ARTIFACTS_CPU) 2>/dev/null || true); \
	if [ "$$have" = "$$key" ]; then echo "$(ARTIFACTS_CPU) is up to date"; exit 0; fi; \
	rm -rf "$(DOCKER_WORK)/cpu"; mkdir -p "$(DOCKER_WORK)/cpu"; \
	docker/gather.sh cpu "$(DOCKER_WORK)/cpu/out" "$(BIN)" "$(TORCH_SITE)" "$(DATA_DIR)" "$(INIT_BIN)"; \
	tar --numeric-owner --owner=0 --group=0 -C "$(DOCKER_WORK)/cpu" -c out \
	  | $(DOCKER) import --change "LABEL smtrain.inputs=$$key" - $(ARTIFACTS_CPU); \
	rm -rf "$(DOCKER_WORK)/cpu"

docker-image: docker-base docker-artifacts
	DOCKER=$(DOCKER) docker/buildkit.sh $(DOCKER_BUILD_ARGS) --target cpu -t $(IMAGE_CPU) .
	@$(DOCKER) image inspect -f '$(IMAGE_CPU): {{.Size}} bytes' $(IMAGE_CPU)

# The CUDA wheel set, installed by the Makefile's own rule (TORCH_FLAVOUR=cuda) into its own
# folder; on a GPU host that rule already names it.
ifneq ($(TORCH_FLAVOUR),cuda)
$(CUDA_TORCH_SITE)/.complete:
	$(MAKE) --no-print-directory TORCH_FLAVOUR=cuda setup
endif

docker-image-cuda: docker-image $(CUDA_TORCH_SITE)/.complete
	@set -eu; \
	key=$$(cat docker/gather.sh "$(CUDA_TORCH_SITE)/.complete" | sha256sum | cut -c1-32); \
	have=$$($(DOCKER) image inspect -f '{{index .Config.Labels "smtrain.inputs"}}' $(ARTIFACTS_CUDA) 2>/dev/null || true); \
	if [ "$$have" = "$$key" ]; then echo "$(ARTIFACTS_CUDA) is up to date"; exit 0; fi; \
	rm -rf "$(DOCKER_WORK)/cuda"; mkdir -p "$(DOCKER_WORK)/cuda"; \
	docker/gather.sh cpu "$(DOCKER_WORK)/cuda/cpu" "$(BIN)" "$(TORCH_SITE)" "$(DATA_DIR)" "$(INIT_BIN)" >/dev/null; \
	docker/gather.sh cuda "$(DOCKER_WORK)/cuda/out" "$(CUDA_TORCH_SITE)" "$(DOCKER_WORK)/cuda/cpu/cpu"; \
	tar --numeric-owner --owner=0 --group=0 -C "$(DOCKER_WORK)/cuda" -c out \
	  | $(DOCKER) import --change "LABEL smtrain.inputs=$$key" - $(ARTIFACTS_CUDA); \
	rm -rf "$(DOCKER_WORK)/cuda"
	DOCKER=$(DOCKER) docker/buildkit.sh $(DOCKER_BUILD_ARGS) --build-arg ARTIFACTS_CUDA=$(ARTIFACTS_CUDA) \
	  --target cuda -t $(IMAGE_CUDA) .
	@$(DOCKER) image inspect -f '$(IMAGE_CUDA): {{.Size}} bytes' $(IMAGE_CUDA)

# No GPU here: show that libtorch_cuda.so and everything it needs resolve inside the image (ldd -r
# also binds every symbol, as dlopen(RTLD_NOW) does); that the loader finds it by the bare name the
# binary dlopen()s and runs every CUDA library's initialisers (LD_PRELOAD, the same search); and
# that the image trains on a CPU-only host, falling back to the CPU.
docker-check-cuda: docker-image-cuda
	$(DOCKER) run --rm --entrypoint /bin/sh $(IMAGE_CUDA) -c '\
	  set -e; cd /opt/smtrain/lib; \
	  for l in libtorch_cuda.so libtorch_cuda_linalg.so libcudnn.so.9 libcudnn_*.so.9; do \
	    out=$$(ldd -r $$l 2>&1); \
	    if echo "$$out" | grep -E "not found|undefined symbol" | grep -v libcuda.so.1; then \
	      echo "$$l: unresolved" >&2; exit 1; fi; \
	  done; echo "all CUDA libraries resolve (libcuda.so.1 comes from the host driver)"'
	$(DOCKER) run --rm -e LD_PRELOAD=libtorch_cuda.so $(IMAGE_CUDA) --version
	rm -rf "$(RUN_DIR)/docker-cuda"
	@mkdir -p "$(RUN_DIR)/docker-cuda/input/config"
	@echo '{"epochs": "1", "threads": "1"}' > "$(RUN_DIR)/docker-cuda/input/config/hyperparameters.json"
	$(DOCKER) run --rm -e OMP_NUM_THREADS=1 -v "$(RUN_DIR)/docker-cuda:/opt/ml" $(IMAGE_CUDA) train \
	  2>"$(RUN_DIR)/docker-cuda/stderr.log"
	grep "device device=cpu" "$(RUN_DIR)/docker-cuda/stderr.log"
	test -s "$(RUN_DIR)/docker-cuda/model/model.safetensors"

# The notebook's job in the image: real Fashion-MNIST (inside the image), 5 epochs; the model
# lands in $(RUN_DIR)/docker/model.
docker-train: docker-image
	rm -rf "$(RUN_DIR)/docker"
	mkdir -p "$(RUN_DIR)/docker/model" "$(RUN_DIR)/docker/output"
	$(DOCKER) run --rm -e OMP_NUM_THREADS=$(DOCKER_THREADS) \
	  -v "$(RUN_DIR)/docker/model:/opt/ml/model" -v "$(RUN_DIR)/docker/output:/opt/ml/output" \
	  $(IMAGE_CPU) train | tee "$(RUN_DIR)/docker/stdout.log"
	@echo "model: $(RUN_DIR)/docker/model"
	@grep -o 'test_accuracy=[0-9.]*' "$(RUN_DIR)/docker/stdout.log" | sed 's/test_accuracy=/test accuracy: /'

docker-sizes:
	@for i in $(IMAGE_CPU) $(IMAGE_CUDA); do \
	  if size=$$($(DOCKER) image inspect -f '{{.Size}}' $$i 2>/dev/null); then \
	    echo "$$i $$size" | awk '{printf "%-16s %d bytes (%.0f MB)\n", $$1, $$2, $$2/1e6}'; \
	  else echo "$$i: not built"; fi; \
	done

docker-clean:
	-$(DOCKER) image rm $(IMAGE_CPU) $(IMAGE_CUDA) $(ARTIFACTS_CPU) $(ARTIFACTS_CUDA)
	rm -rf "$(DOCKER_WORK)"

# The users' route, run here: the whole Dockerfile, build stage included, with the plain
# `docker build` (the classic builder on this machine, where the CLI has no buildx), a stand-in
# for rust:1.95-bookworm made from the host's toolchain, and network access for apt, PyPI and
# crates.io inside the build. Slow (the torch wheel, a clean release build): not in `make test`.
# Test the result with `SMTRAIN_IMAGE=$(IMAGE_NAME):cpu-from-source cargo test --release docker::`.
RUST_STANDIN ?= smtrain/rust:1.95-bookworm-local
docker-image-from-source: docker-base
	DOCKER=$(DOCKER) docker/rust-standin.sh $(RUST_STANDIN) $(BASE_IMAGE)
	$(DOCKER) build -f docker/Dockerfile --target cpu \
	  --build-arg RUST_IMAGE=$(RUST_STANDIN) --build-arg RUNTIME_IMAGE=$(BASE_IMAGE) \
	  --build-arg VERSION=$(IMAGE_VERSION) --build-arg REVISION=$(IMAGE_REVISION) \
	  --build-arg SOURCE=$(IMAGE_SOURCE) -t $(IMAGE_NAME):cpu-from-source .
	@$(DOCKER) image inspect -f '$(IMAGE_NAME):cpu-from-source: {{.Size}} bytes' $(IMAGE_NAME):cpu-from-source
