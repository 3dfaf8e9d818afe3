#!/usr/bin/env bash
# The AWS side of smtrain, one subcommand per make target (infra/infra.mk):
#
#   sagemaker.sh stack            deploy infra/cloudformation.yaml as $STACK
#   sagemaker.sh push             ECR login, tag and push every local $IMAGE:<variant>
#   sagemaker.sh upload-data      copy the Fashion-MNIST files to s3://$BUCKET/data/{train,test}/
#   sagemaker.sh training-request print the CreateTrainingJob request that submit sends
#   sagemaker.sh tuning-request   print the CreateHyperParameterTuningJob request that tune sends
#   sagemaker.sh submit           create the training job, wait, report; exit 1 unless Completed
#   sagemaker.sh tune             create the tuning job, wait, report; exit 1 unless Completed
#
# push tags each variant twice: <variant> (moving) and <variant>-$VERSION (default: the short
# commit, "-dirty" when the tree has changes), which a job can name in IMAGE_TAG to pin a build.
# Settings come from the environment (make passes its variables). BUCKET, ROLE_ARN and
# REPOSITORY_URI default to the outputs of the CloudFormation stack $STACK, looked up once.
# Only the aws and docker commands talk to AWS; nothing here stores credentials.
set -euo pipefail

INFRA=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
AWS=${AWS:-aws}
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3}
STACK=${STACK:-smtrain}
IMAGE=${IMAGE:-smtrain}
VARIANTS=${VARIANTS:-cpu cuda}
IMAGE_TAG=${IMAGE_TAG:-cpu}
JOB_PREFIX=${JOB_PREFIX:-smtrain}
POLL_SECONDS=${POLL_SECONDS:-60}
MAX_JOBS=${MAX_JOBS:-20}
MAX_PARALLEL_JOBS=${MAX_PARALLEL_JOBS:-4}
WARM_START_PARENT=${WARM_START_PARENT:-}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
# Job names: the time, so that each run is new (a tuning job's name has at most 32 characters).
JOB_NAME=${JOB_NAME:-$JOB_PREFIX-$(date -u +%Y%m%d-%H%M%S)}
TUNING_JOB_NAME=${TUNING_JOB_NAME:-$JOB_PREFIX-$(date -u +%y%m%d-%H%M%S)}
# Where each sent request is kept, for the record.
REQUEST_DIR=${REQUEST_DIR:-.run/infra}

die() { echo "sagemaker.sh: $*" >&2; exit 1; }

stack_output() {
  local value
  value=$($AWS cloudformation describe-stacks --stack-name "$STACK" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue | [0]" --output text) ||
    die "cannot read the outputs of stack $STACK (deploy it with: make stack)"
  [[ -n $value && $value != None ]] || die "stack $STACK has no output $1"
  printf '%s' "$value"
}

resolve() {
  local name
  for name in "$@"; do
    case $name in
      BUCKET) : "${BUCKET:=$(stack_output BucketName)}" ;;
      ROLE_ARN) : "${ROLE_ARN:=$(stack_output ExecutionRoleArn)}" ;;
      REPOSITORY_URI) : "${REPOSITORY_URI:=$(stack_output RepositoryUri)}" ;;
      IMAGE_URI) resolve REPOSITORY_URI; : "${IMAGE_URI:=$REPOSITORY_URI:$IMAGE_TAG}" ;;
      *) die "resolve: unknown $name" ;;
    esac
  done
}

# GPU variants train on a GPU instance, the rest on a CPU one, unless INSTANCE_TYPE says.
instance_type() {
  if [[ -n ${INSTANCE_TYPE:-} ]]; then
    printf '%s' "$INSTANCE_TYPE"
  elif [[ $IMAGE_TAG == cuda* ]]; then
    printf 'ml.g4dn.xlarge'
  else
    printf 'ml.m5.xlarge'
  fi
}

# A commit-pinned tag suffix: the short commit, marked when the tree has local changes.
version() {
  local v
  v=$(git -C "$INFRA" rev-parse --short=12 HEAD 2>/dev/null) || { printf 'local'; return; }
  [[ -z $(git -C "$INFRA" status --porcelain 2>/dev/null) ]] || v="$v-dirty"
  printf '%s' "$v"
}

training_request() {
  resolve BUCKET ROLE_ARN IMAGE_URI
  "$PYTHON" "$INFRA/render.py" "$INFRA/training-job.json" \
    "JOB_NAME=$JOB_NAME" "ROLE_ARN=$ROLE_ARN" "IMAGE_URI=$IMAGE_URI" "BUCKET=$BUCKET" \
    "INSTANCE_TYPE=$(instance_type)"
}

tuning_request() {
  resolve BUCKET ROLE_ARN IMAGE_URI
  "$PYTHON" "$INFRA/render.py" "$INFRA/tuning-job.json" \
    "TUNING_JOB_NAME=$TUNING_JOB_NAME" "ROLE_ARN=$ROLE_ARN" "IMAGE_URI=$IMAGE_URI" \
    "BUCKET=$BUCKET" "INSTANCE_TYPE=$(instance_type)" "MAX_JOBS=$MAX_JOBS" \
    "MAX_PARALLEL_JOBS=$MAX_PARALLEL_JOBS" "WARM_START_PARENT=$WARM_START_PARENT"
}

# Polls until the job leaves InProgress/Stopping, printing each status change, then prints the
# report (status, metrics or best job, FailureReason) and fails unless the job completed.
await() {
  local kind=$1 name=$2 status last=""
  local -a describe query
  if [[ $kind == training ]]; then
    describe=(sagemaker describe-training-job --training-job-name "$name")
    query=(--query "[TrainingJobStatus, SecondaryStatus]")
  else
    describe=(sagemaker describe-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name "$name")
    query=(--query "[HyperParameterTuningJobStatus]")
  fi
  while :; do
    status=$($AWS "${describe[@]}" "${query[@]}" --output text)
    [[ $status == "$last" ]] || echo "$(date -u +%H:%M:%S) $name: ${status//$'\t'/ / }"
    last=$status
    case ${status%%$'\t'*} in
      InProgress | Stopping) sleep "$POLL_SECONDS" ;;
      *) break ;;
    esac
  done
  $AWS "${describe[@]}" --output json | "$PYTHON" "$INFRA/job_report.py" "$kind"
}

cmd=${1:-}
case $cmd in
  stack)
    $AWS cloudformation deploy --stack-name "$STACK" \
      --template-file "$INFRA/cloudformation.yaml" --capabilities CAPABILITY_NAMED_IAM \
      --no-fail-on-empty-changeset ${STACK_PARAMETERS:+--parameter-overrides $STACK_PARAMETERS}
    $AWS cloudformation describe-stacks --stack-name "$STACK" \
      --query "Stacks[0].Outputs[].[OutputKey, OutputValue]" --output text
    ;;
  push)
    resolve REPOSITORY_URI
    tag=${VERSION:-$(version)}
    for v in $VARIANTS; do
      $DOCKER image inspect "$IMAGE:$v" >/dev/null 2>&1 ||
        die "no local image $IMAGE:$v: build the image variants ($VARIANTS) first"
    done
    $AWS ecr get-login-password |
      $DOCKER login --username AWS --password-stdin "${REPOSITORY_URI%%/*}"
    for v in $VARIANTS; do
      for t in "$v" "$v-$tag"; do
        $DOCKER tag "$IMAGE:$v" "$REPOSITORY_URI:$t"
        $DOCKER push "$REPOSITORY_URI:$t"
      done
    done
    echo "pushed: $(for v in $VARIANTS; do printf '%s ' "$REPOSITORY_URI:$v-$tag"; done)"
    ;;
  upload-data)
    resolve BUCKET
    for split in train:train t10k:test; do
      for kind in images-idx3 labels-idx1; do
        f="$DATA_DIR/${split%%:*}-$kind-ubyte.gz"
        [[ -f $f ]] || die "$f is missing (make setup installs Debian's dataset-fashion-mnist)"
        $AWS s3 cp "$f" "s3://$BUCKET/data/${split##*:}/"
      done
    done
    ;;
  training-request) training_request ;;
  tuning-request) tuning_request ;;
  submit | tune)
    # Resolved here, once, not in the subshells below.
    resolve BUCKET ROLE_ARN IMAGE_URI
    mkdir -p "$REQUEST_DIR"
    if [[ $cmd == submit ]]; then
      kind=training name=$JOB_NAME create=create-training-job
      training_request >"$REQUEST_DIR/$name.json"
    else
      kind=tuning name=$TUNING_JOB_NAME create=create-hyper-parameter-tuning-job
      tuning_request >"$REQUEST_DIR/$name.json"
    fi
    echo "creating $kind job $name (request: $REQUEST_DIR/$name.json)"
    $AWS sagemaker "$create" --cli-input-json "file://$REQUEST_DIR/$name.json" --output text
    await "$kind" "$name"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
