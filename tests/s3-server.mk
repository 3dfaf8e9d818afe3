# The S3-compatible servers the S3 tests start on 127.0.0.1 (s3s-fs from crates.io: plain files
# under ROOT/bucket/key, SigV4 enforced with --access-key/--secret-key; and moto from PyPI, for
# requests that IAM policies deny), and the S3 benchmark.
# Included by the Makefile before its rules; everything is cached outside the clone.

S3S_FS_VERSION := 0.14.1
S3S_FS_ROOT := $(CACHE_DIR)/s3s-fs-$(S3S_FS_VERSION)
S3S_FS := $(S3S_FS_ROOT)/bin/s3s-fs
# The tests read the server's path from here; under CI a missing binary fails them.
export SMTRAIN_S3S_FS := $(S3S_FS)

# The AWS CLI (PyPI's awscli) that bench-s3 compares against, in its own venv.
AWSCLI_VENV := $(CACHE_DIR)/awscli-venv
AWSCLI := $(AWSCLI_VENV)/bin/aws

# moto's standalone server (PyPI's moto[server]), in its own venv: the tests' only server that
# denies a correctly signed request (AccessDenied from the IAM policy of the caller's key).
# Its dependencies are pinned in tests/moto-constraints.txt.
MOTO_VERSION := 5.2.5
MOTO_VENV := $(CACHE_DIR)/moto-$(MOTO_VERSION)
MOTO_STAMP := $(MOTO_VENV)/.complete
export SMTRAIN_MOTO_SERVER := $(MOTO_VENV)/bin/moto_server

TEST_RUST_PREREQS += $(S3S_FS) $(MOTO_STAMP)

.PHONY: s3-server bench-s3

s3-server: $(S3S_FS) $(MOTO_STAMP)

# 0.14.1 is the newest s3s-fs that builds on our rustc (0.17 needs a newer one). Built in its own
# target folder (not the project's) and installed into a temporary root that is renamed last, so
# an interrupted install is redone.
$(S3S_FS):
	rm -rf "$(S3S_FS_ROOT).tmp" "$(S3S_FS_ROOT).build"
	cargo install s3s-fs --version $(S3S_FS_VERSION) --features binary --locked \
	  --root "$(S3S_FS_ROOT).tmp" --target-dir "$(S3S_FS_ROOT).build"
	rm -rf "$(S3S_FS_ROOT).build" "$(S3S_FS_ROOT)"
	mv "$(S3S_FS_ROOT).tmp" "$(S3S_FS_ROOT)"

# A venv cannot be renamed into place (its scripts name their interpreter by absolute path), so
# the stamp is written last instead: an interrupted install is redone from scratch.
$(MOTO_STAMP):
	rm -rf "$(MOTO_VENV)"
	$(PYTHON) -m venv "$(MOTO_VENV)"
	"$(MOTO_VENV)/bin/pip" install --quiet --disable-pip-version-check \
	  -c tests/moto-constraints.txt 'moto[server]==$(MOTO_VERSION)'
	touch "$@"

$(AWSCLI):
	rm -rf "$(AWSCLI_VENV)"
	$(PYTHON) -m venv "$(AWSCLI_VENV)"
	"$(AWSCLI_VENV)/bin/pip" install --quiet awscli

# Throughput of our S3 code next to `aws s3 cp` on the same local server, in the same run.
# Heavy: run it alone on a shared machine (the numbers worth quoting are the ratios).
bench-s3: setup $(S3S_FS) $(AWSCLI)
	SMTRAIN_AWS_CLI="$(AWSCLI)" cargo run --release --locked --example bench_s3
