# `make gpu-build`: the measuring build for the GPU machine (docs/gpu.md). That machine has
# PyTorch 2.11.0+cu130 and no Rust, so the same sources are built here against libtorch 2.11
# through tch 0.24 (torch-sys 0.24 expects 2.11; tch 0.26's wrapper calls ops that 2.11 lacks),
# in a copy of the tree so the product build (tch 0.26, libtorch 2.13) stays as it is. What
# travels to the GPU machine is $(GPU_CARRY): the stripped binary and the real Fashion-MNIST.
#
# `make gpu-test` runs the integration tests against the 2.11 libraries; `make gpu-rehearse`
# runs bench/gpu.sh here on the CPU with a short job.

.PHONY: gpu-build gpu-test gpu-rehearse

GPU_TORCH_VERSION := 2.11.0
# The whole CUDA wheel set: the carried binary links libtorch_cuda.so, so it only starts where
# the CUDA libraries are (and `import torch` of the cu130 wheel needs them too).
GPU_TORCH_SITE := $(CACHE_DIR)/torch-$(GPU_TORCH_VERSION)-cuda
GPU_TORCH_STAMP := $(GPU_TORCH_SITE)/.complete
GPU_LIBTORCH := $(GPU_TORCH_SITE)/torch
GPU_TARGET_DIR := $(CACHE_DIR)/target-torch211
GPU_TREE := $(CURDIR)/.gpu/build
GPU_CARRY := $(CURDIR)/.gpu/run
GPU_TCH := 0.24.0
# Build load on a shared machine: `make gpu-build GPU_JOBS=4` where there are cores to spare.
GPU_JOBS ?= 1

# torch 2.11's own pins (its METADATA), without triton; the Python packages `import torch` needs.
$(GPU_TORCH_STAMP):
	rm -rf "$(GPU_TORCH_SITE).tmp" "$(GPU_TORCH_SITE)"
	$(PYTHON) -m pip install --quiet --no-compile --target "$(GPU_TORCH_SITE).tmp" \
	  'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.2' \
	  'nvidia-cudnn-cu13==9.19.0.56' 'nvidia-cusparselt-cu13==0.8.0' 'nvidia-nccl-cu13==2.28.9' \
	  'nvidia-nvshmem-cu13==3.4.5' filelock 'typing-extensions>=4.10.0' 'sympy>=1.13.3' \
	  'networkx>=2.5.1' jinja2 'fsspec>=0.8.5'
	$(PYTHON) -m pip install --quiet --no-compile --no-deps --target "$(GPU_TORCH_SITE).tmp" \
	  torch==$(GPU_TORCH_VERSION)
	echo "$(GPU_TORCH_VERSION)" > "$(GPU_TORCH_SITE).tmp/torch/build-version"
	mv "$(GPU_TORCH_SITE).tmp" "$(GPU_TORCH_SITE)"
	touch "$@"

# The tracked and untracked-but-not-ignored files, with tch and torch-sys pinned to the 2.11
# release; Cargo.lock starts from the product's, so only those two (and what they pull) move.
define gpu_tree
	rm -rf "$(GPU_TREE)" && mkdir -p "$(GPU_TREE)"
	git ls-files -z --cached --others --exclude-standard \
	  | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$(GPU_TREE)"
	sed -i -E 's/^tch = "[^"]*"/tch = "=$(GPU_TCH)"/; s/^torch-sys = "[^"]*"/torch-sys = "=$(GPU_TCH)"/' \
	  "$(GPU_TREE)/Cargo.toml"
	grep -q '^tch = "=$(GPU_TCH)"' "$(GPU_TREE)/Cargo.toml"
	grep -q '^torch-sys = "=$(GPU_TCH)"' "$(GPU_TREE)/Cargo.toml"
endef

GPU_ENV := env -u LIBTORCH_USE_PYTORCH LIBTORCH="$(GPU_LIBTORCH)" CARGO_TARGET_DIR="$(GPU_TARGET_DIR)"
# --no-as-needed: rustc's --as-needed would drop libtorch_cuda.so, which no symbol of ours
# references; linked, CUDA registers at start-up, whatever src/device.rs's dlopen finds.
GPU_LINK := -C link-arg=-Wl,--no-as-needed -C link-arg=-ltorch_cuda -C link-arg=-ltorch

gpu-build: $(GPU_TORCH_STAMP) $(DATA_STAMP) $(GLOO_STAMP)
	$(gpu_tree)
	cd "$(GPU_TREE)" && $(GPU_ENV) nice -n 19 cargo rustc -j $(GPU_JOBS) --release --bin train -- $(GPU_LINK)
	rm -rf "$(GPU_CARRY)" && mkdir -p "$(GPU_CARRY)/data/train" "$(GPU_CARRY)/data/test"
	strip -o "$(GPU_CARRY)/train" "$(GPU_TARGET_DIR)/release/train"
	# No build-machine path in the run path: LD_LIBRARY_PATH, or lib/ beside the binary.
	patchelf --set-rpath '$$ORIGIN/lib' "$(GPU_CARRY)/train"
	readelf -d "$(GPU_CARRY)/train" | grep -q 'NEEDED.*libtorch_cuda.so'
	cp $(DATA_DIR)/train-*-ubyte.gz "$(GPU_CARRY)/data/train/"
	cp $(DATA_DIR)/t10k-*-ubyte.gz "$(GPU_CARRY)/data/test/"
	git describe --always --dirty --abbrev=12 > "$(GPU_CARRY)/commit"
	du -ab "$(GPU_CARRY)" | sort -n | tail -n 8
	test $$(du -sb "$(GPU_CARRY)" | cut -f1) -lt $$((64 * 1024 * 1024))

# The integration tests, built from the same tree against the 2.11 libraries (one thread).
GPU_TESTS ?= training:: checkpoints:: predict:: distributed::
gpu-test: $(GPU_TORCH_STAMP) $(DATA_STAMP) $(GLOO_STAMP)
	$(gpu_tree)
	cd "$(GPU_TREE)" && for t in $(GPU_TESTS); do \
	  $(GPU_ENV) OMP_NUM_THREADS=1 nice -n 19 cargo test -j $(GPU_JOBS) --release --test it $$t || exit 1; done

# bench/gpu.sh on this machine's CPU, short: the same steps the GPU run takes.
GPU_REHEARSE_EPOCHS ?= 1
gpu-rehearse: gpu-build
	OUT="$(CURDIR)/.gpu/out" DEVICE=cpu EPOCHS=$(GPU_REHEARSE_EPOCHS) OMP_NUM_THREADS=1 \
	  PYTHONPATH="$(GPU_TORCH_SITE)" bash bench/gpu.sh
