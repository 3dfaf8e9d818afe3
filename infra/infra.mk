# infra/: the AWS side — CloudFormation stack, ECR push, SageMaker training and tuning jobs — and
# the offline checks that prove it valid. Included by the main Makefile; infra/README.md tells
# the story from a fresh account to a finished job.
#
# Settings (command line or environment): STACK, IMAGE_TAG (cpu or cuda: the variant submit and
# tune run), INSTANCE_TYPE, JOB_NAME, TUNING_JOB_NAME, MAX_JOBS, MAX_PARALLEL_JOBS,
# WARM_START_PARENT, POLL_SECONDS, HYPERPARAMETERS (submit: a JSON file of hyperparameters, e.g.
# infra/recipe-hyperparameters.json), and BUCKET, ROLE_ARN, REPOSITORY_URI (default: the stack's
# outputs); for hosting ENDPOINT_NAME, ENDPOINT_INSTANCE_TYPE, INVOKE_INDEX, INVOKE_FORMAT,
# TRANSFORM_JOB_NAME, TRANSFORM_INSTANCE_TYPE, TRANSFORM_IMAGES; for the console and the registry
# ALGORITHM, MODEL_PACKAGE_GROUP, PACKAGE (deploy) and VERSION (approve). AWS and DOCKER name the
# commands used. See the top of infra/sagemaker.sh.

.PHONY: stack push upload-data submit tune infra-requests test-infra infra-venv
.PHONY: deploy invoke transform undeploy algorithm register approve

INFRA_SH = PYTHON="$(PYTHON)" infra/sagemaker.sh

# The checks' Python tools, pinned in infra/requirements.txt, live in a venv outside the clone,
# one per version of that file. The stamp is written last, so an interrupted install is redone.
INFRA_VENV := $(CACHE_DIR)/infra-venv-$(shell sha256sum infra/requirements.txt | cut -c1-12)
INFRA_STAMP := $(INFRA_VENV)/.complete

$(INFRA_STAMP): infra/requirements.txt
	rm -rf "$(INFRA_VENV)"
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv "$(INFRA_VENV)"
	"$(INFRA_VENV)/bin/pip" install --quiet --disable-pip-version-check --no-deps \
	  -r infra/requirements.txt
	"$(INFRA_VENV)/bin/pip" check --disable-pip-version-check
	touch "$@"

infra-venv: $(INFRA_STAMP)

stack:
	$(INFRA_SH) stack

push:
	$(INFRA_SH) push

upload-data:
	$(INFRA_SH) upload-data

# Print the requests submit, tune, deploy, transform and algorithm would send (resolving the
# stack's outputs; the hosting ones for training job JOB_NAME).
infra-requests:
	@$(INFRA_SH) training-request
	@$(INFRA_SH) tuning-request
	@$(INFRA_SH) model-request
	@$(INFRA_SH) endpoint-config-request
	@$(INFRA_SH) endpoint-request
	@$(INFRA_SH) transform-request
	@$(INFRA_SH) algorithm-request

submit:
	$(INFRA_SH) submit

tune:
	$(INFRA_SH) tune

# Hosting training job JOB_NAME's model (infra/README.md): an endpoint billed until undeploy, and
# batch transform of the test set.
deploy:
	$(INFRA_SH) deploy

invoke:
	$(INFRA_SH) invoke

transform:
	$(INFRA_SH) transform

undeploy:
	$(INFRA_SH) undeploy

# The console and CI (infra/README.md): the image as a SageMaker Algorithm (ALGORITHM, default
# smtrain-<image tag>), and trained models in the Model Registry: register JOB_NAME's model as a
# version pending approval, approve VERSION; deploy PACKAGE=VERSION serves an approved one.
algorithm:
	$(INFRA_SH) algorithm

register:
	$(INFRA_SH) register

approve:
	$(INFRA_SH) approve

# Offline: no AWS account, no network. cfn-lint with its informational rules; the workflow
# against GitHub's schema (and the rule that every job has a timeout); shellcheck; then
# infra/tests: the requests against botocore's SageMaker model, the metric regexes against the
# real trainer's output, the IAM policies, and the make targets against a local stub of the AWS
# APIs, and the registry targets against moto's server too (tests/s3-server.mk installs it).
# (tests/it/infra.rs, run by test-rust, checks the templates' hyperparameters and generates the
# Algorithm's.)
test-infra: $(INFRA_STAMP) $(MOTO_STAMP) build
	"$(INFRA_VENV)/bin/cfn-lint" --include-checks I -- infra/cloudformation.yaml
	"$(INFRA_VENV)/bin/check-jsonschema" --builtin-schema vendor.github-workflows \
	  infra/github-actions/sagemaker.yml
	"$(INFRA_VENV)/bin/check-jsonschema" --builtin-schema custom.github-workflows-require-timeout \
	  infra/github-actions/sagemaker.yml
	"$(INFRA_VENV)/bin/shellcheck" infra/sagemaker.sh
	SMTRAIN_BIN="$(BIN)" OMP_NUM_THREADS=1 "$(INFRA_VENV)/bin/python" -m unittest discover \
	  --start-directory infra/tests --top-level-directory infra/tests

TEST_TARGETS += test-infra
