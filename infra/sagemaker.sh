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
#   sagemaker.sh model-request, endpoint-config-request, endpoint-request, transform-request
#                                 print the CreateModel, CreateEndpointConfig, CreateEndpoint and
#                                 CreateTransformJob requests that deploy and transform send
#   sagemaker.sh deploy           serve training job $JOB_NAME's model on endpoint $ENDPOINT_NAME:
#                                 model, endpoint config (both named $JOB_NAME), endpoint; wait
#                                 until InService; exit 1 unless it is
#   sagemaker.sh invoke           send test image $INVOKE_INDEX to the endpoint, print the answer
#   sagemaker.sh transform        batch transform $TRANSFORM_IMAGES test images (CSV, one per
#                                 line) with $JOB_NAME's model; wait; print the first answers
#                                 and their accuracy; exit 1 unless Completed
#   sagemaker.sh undeploy         delete endpoint $ENDPOINT_NAME, then its endpoint config and
#                                 model (or those named $JOB_NAME, when given); what is already
#                                 gone is skipped
#   sagemaker.sh algorithm-request, algorithm
#                                 print, or create and wait for, the Algorithm $ALGORITHM
#                                 (default smtrain-<image tag>) of the image; an existing one is
#                                 kept. submit and tune with $ALGORITHM train through it
#   sagemaker.sh register         register training job $JOB_NAME's model in the Model Registry:
#                                 group $MODEL_PACKAGE_GROUP (created once), its
#                                 model_quality.json uploaded, a version PendingManualApproval
#   sagemaker.sh approve          approve model package $VERSION (a version number of the group,
#                                 or an ARN)
#   deploy with $PACKAGE          deploys an approved model package version (number or ARN)
#                                 instead of a training job's model
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
IMAGE_TAG_GIVEN=${IMAGE_TAG:+yes}
IMAGE_TAG=${IMAGE_TAG:-cpu}
JOB_PREFIX=${JOB_PREFIX:-smtrain}
POLL_SECONDS=${POLL_SECONDS:-60}
MAX_JOBS=${MAX_JOBS:-20}
MAX_PARALLEL_JOBS=${MAX_PARALLEL_JOBS:-4}
WARM_START_PARENT=${WARM_START_PARENT:-}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
# Job names: the time, so that each run is new (a tuning job's name has at most 32 characters).
# deploy, transform and undeploy name a finished training job instead: it must be given.
JOB_NAME_GIVEN=${JOB_NAME:+yes}
JOB_NAME=${JOB_NAME:-$JOB_PREFIX-$(date -u +%Y%m%d-%H%M%S)}
TUNING_JOB_NAME=${TUNING_JOB_NAME:-$JOB_PREFIX-$(date -u +%y%m%d-%H%M%S)}
TRANSFORM_JOB_NAME=${TRANSFORM_JOB_NAME:-$JOB_PREFIX-transform-$(date -u +%Y%m%d-%H%M%S)}
# Hosting: one endpoint at a time by default; its model and endpoint config take the training
# job's name.
ENDPOINT_NAME=${ENDPOINT_NAME:-$JOB_PREFIX}
MODEL_NAME=$JOB_NAME
INVOKE_INDEX=${INVOKE_INDEX:-0}
INVOKE_FORMAT=${INVOKE_FORMAT:-csv}
TRANSFORM_IMAGES=${TRANSFORM_IMAGES:-10000}
# The Algorithm submit and tune train through, instead of the image (empty: the image), and
# the one algorithm creates (default: named after its image tag).
ALGORITHM=${ALGORITHM:-}
# The Model Registry: register adds versions to this group; deploy with PACKAGE (a version
# number or ARN) serves an approved one.
MODEL_PACKAGE_GROUP=${MODEL_PACKAGE_GROUP:-$JOB_PREFIX}
PACKAGE=${PACKAGE:-}
# Where each sent request is kept, for the record.
REQUEST_DIR=${REQUEST_DIR:-.run/infra}
# submit: a JSON file of hyperparameters (an object of strings) to send instead of the
# template's, e.g. infra/recipe-hyperparameters.json.
HYPERPARAMETERS=${HYPERPARAMETERS:-}

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

# Hosting runs on the variant's kind of instance too: a small CPU one, or the same GPU one.
endpoint_instance_type() {
  if [[ -n ${ENDPOINT_INSTANCE_TYPE:-} ]]; then
    printf '%s' "$ENDPOINT_INSTANCE_TYPE"
  elif [[ $IMAGE_TAG == cuda* ]]; then
    printf 'ml.g4dn.xlarge'
  else
    printf 'ml.m5.large'
  fi
}

transform_instance_type() {
  if [[ -n ${TRANSFORM_INSTANCE_TYPE:-} ]]; then
    printf '%s' "$TRANSFORM_INSTANCE_TYPE"
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
    "INSTANCE_TYPE=$(instance_type)" | with_hyperparameters | with_algorithm
}

# The request on stdin, training through $ALGORITHM instead of the image when it is set: the
# job definition names the algorithm, whose metric definitions then apply.
with_algorithm() {
  [[ -n $ALGORITHM ]] || { cat; return; }
  "$PYTHON" -c '
import json, sys
request = json.load(sys.stdin)
spec = request.get("TrainingJobDefinition", request)["AlgorithmSpecification"]
del spec["TrainingImage"], spec["MetricDefinitions"]
spec["AlgorithmName"] = sys.argv[1]
json.dump(request, sys.stdout, indent=2)
print()' "$ALGORITHM"
}

# The image an algorithm is made of: IMAGE_TAG when given, else this commit's cuda build, which
# also runs on CPU instances (it falls back when there is no GPU).
algorithm_image_tag() {
  if [[ -n $IMAGE_TAG_GIVEN ]]; then
    printf '%s' "$IMAGE_TAG"
  else
    printf 'cuda-%s' "${VERSION:-$(version)}"
  fi
}

algorithm_name() {
  local name
  name=${ALGORITHM:-$JOB_PREFIX-$(algorithm_image_tag)}
  [[ $name =~ ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$ ]] ||
    die "algorithm name $name: at most 63 letters, digits and hyphens (set ALGORITHM=...)"
  printf '%s' "$name"
}

algorithm_request() {
  resolve REPOSITORY_URI
  "$PYTHON" "$INFRA/render.py" "$INFRA/algorithm.json" \
    "ALGORITHM=$(algorithm_name)" "IMAGE_URI=$REPOSITORY_URI:$(algorithm_image_tag)"
}

# The request on stdin, with $HYPERPARAMETERS' object in place of its HyperParameters.
with_hyperparameters() {
  [[ -n $HYPERPARAMETERS ]] || { cat; return; }
  [[ -f $HYPERPARAMETERS ]] || die "HYPERPARAMETERS=$HYPERPARAMETERS: no such file"
  "$PYTHON" -c '
import json, sys
path = sys.argv[1]
hp = json.load(open(path))
if not isinstance(hp, dict) or not all(isinstance(v, str) for v in hp.values()):
    sys.exit(f"HYPERPARAMETERS={path}: not a JSON object of strings")
request = json.load(sys.stdin)
request["HyperParameters"] = hp
json.dump(request, sys.stdout, indent=2)
print()' "$HYPERPARAMETERS"
}

tuning_request() {
  resolve BUCKET ROLE_ARN IMAGE_URI
  "$PYTHON" "$INFRA/render.py" "$INFRA/tuning-job.json" \
    "TUNING_JOB_NAME=$TUNING_JOB_NAME" "ROLE_ARN=$ROLE_ARN" "IMAGE_URI=$IMAGE_URI" \
    "BUCKET=$BUCKET" "INSTANCE_TYPE=$(instance_type)" "MAX_JOBS=$MAX_JOBS" \
    "MAX_PARALLEL_JOBS=$MAX_PARALLEL_JOBS" "WARM_START_PARENT=$WARM_START_PARENT" |
    with_algorithm
}

model_request() {
  if [[ -n $PACKAGE ]]; then
    resolve ROLE_ARN
    "$PYTHON" "$INFRA/render.py" "$INFRA/model-from-package.json" \
      "MODEL_NAME=$MODEL_NAME" "ROLE_ARN=$ROLE_ARN" "PACKAGE_ARN=$PACKAGE_ARN"
    return
  fi
  resolve BUCKET ROLE_ARN IMAGE_URI
  "$PYTHON" "$INFRA/render.py" "$INFRA/model.json" \
    "MODEL_NAME=$MODEL_NAME" "ROLE_ARN=$ROLE_ARN" "IMAGE_URI=$IMAGE_URI" "BUCKET=$BUCKET" \
    "JOB_NAME=$JOB_NAME"
}

# CreateModelPackage for training job $JOB_NAME, its model in image $1, its model quality file
# with SHA-256 $2.
model_package_request() {
  resolve BUCKET
  "$PYTHON" "$INFRA/render.py" "$INFRA/model-package.json" \
    "MODEL_PACKAGE_GROUP=$MODEL_PACKAGE_GROUP" "JOB_NAME=$JOB_NAME" "BUCKET=$BUCKET" \
    "IMAGE_URI=$1" "QUALITY_SHA256=$2"
}

# The ARN of model package $1 (a version number of $MODEL_PACKAGE_GROUP, or an ARN) in
# PACKAGE_ARN. A version's ARN is its group's, with model-package/ for model-package-group/ and
# the number appended.
package_arn() {
  local group
  case $1 in
    arn:*:model-package/*) PACKAGE_ARN=$1 ;;
    *[!0-9]* | "") die "model package \"$1\": expected a version number of group" \
      "$MODEL_PACKAGE_GROUP or a model package ARN" ;;
    *)
      group=$($AWS sagemaker describe-model-package-group --model-package-group-name \
        "$MODEL_PACKAGE_GROUP" --query ModelPackageGroupArn --output text) ||
        die "cannot describe model package group $MODEL_PACKAGE_GROUP"
      PACKAGE_ARN=${group/:model-package-group\//:model-package\/}/$1 ;;
  esac
}

endpoint_config_request() {
  "$PYTHON" "$INFRA/render.py" "$INFRA/endpoint-config.json" \
    "MODEL_NAME=$MODEL_NAME" "ENDPOINT_INSTANCE_TYPE=$(endpoint_instance_type)"
}

endpoint_request() {
  "$PYTHON" "$INFRA/render.py" "$INFRA/endpoint.json" \
    "ENDPOINT_NAME=$ENDPOINT_NAME" "MODEL_NAME=$MODEL_NAME"
}

transform_request() {
  resolve BUCKET
  "$PYTHON" "$INFRA/render.py" "$INFRA/transform-job.json" \
    "TRANSFORM_JOB_NAME=$TRANSFORM_JOB_NAME" "MODEL_NAME=$MODEL_NAME" "BUCKET=$BUCKET" \
    "TRANSFORM_INSTANCE_TYPE=$(transform_instance_type)"
}

# Deploying model package $PACKAGE: its ARN in PACKAGE_ARN, and the model (and endpoint
# config) named after its group and version, e.g. smtrain-v3.
use_package() {
  [[ -n $PACKAGE ]] || return 0
  package_arn "$PACKAGE"
  local group_version=${PACKAGE_ARN##*:model-package/}
  MODEL_NAME=${group_version%/*}-v${group_version##*/}
}

# Only an approved version may serve: the registry's approval is the gate to production.
check_approved() {
  local status
  status=$($AWS sagemaker describe-model-package --model-package-name "$PACKAGE_ARN" \
    --query ModelApprovalStatus --output text) || die "cannot describe model package $PACKAGE_ARN"
  [[ $status == Approved ]] ||
    die "model package $PACKAGE_ARN is $status, not Approved (make approve VERSION=${PACKAGE_ARN##*/})"
}

# The image training job $JOB_NAME ran: its own, or that of the algorithm it trained through.
job_image() {
  local image algorithm
  read -r image algorithm < <($AWS sagemaker describe-training-job --training-job-name "$JOB_NAME" \
    --query "AlgorithmSpecification.[TrainingImage, AlgorithmName]" --output text) ||
    die "cannot describe training job $JOB_NAME"
  if [[ $image == None || -z $image ]]; then
    image=$($AWS sagemaker describe-algorithm --algorithm-name "$algorithm" \
      --query TrainingSpecification.TrainingImage --output text) ||
      die "cannot describe algorithm $algorithm of training job $JOB_NAME"
  fi
  JOB_IMAGE=$image
}

# output/data's model_quality.json, from training job $JOB_NAME's output.tar.gz, into file $1.
fetch_model_quality() {
  local archive
  archive=$(mktemp)
  $AWS s3api get-object --bucket "$BUCKET" --key "output/$JOB_NAME/output/output.tar.gz" \
    "$archive" --output text >/dev/null ||
    die "cannot read s3://$BUCKET/output/$JOB_NAME/output/output.tar.gz"
  "$PYTHON" -c '
import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    names = [m for m in tar.getmembers() if m.name.lstrip("./") == "model_quality.json"]
    if not names:
        sys.exit("output.tar.gz holds no model_quality.json: the job had no test channel")
    sys.stdout.buffer.write(tar.extractfile(names[0]).read())' "$archive" >"$1" ||
    { rm -f "$archive"; die "training job $JOB_NAME: no model quality to register"; }
  rm -f "$archive"
}

need_job_name() {
  [[ -n $JOB_NAME_GIVEN ]] ||
    die "$1 needs the training job whose model to use: make $1 JOB_NAME=<training job name>"
}

# Runs an aws command whose failure may only mean "there is no such thing" (SageMaker's
# ValidationException "Could not find ..." or "... does not exist"): 0 done, 1 not found; any
# other failure exits.
aws_unless_missing() {
  local err
  err=$(mktemp)
  if $AWS "$@" 2>"$err"; then rm -f "$err"; return 0; fi
  if grep -Eq 'Could not find|does not exist' "$err"; then rm -f "$err"; return 1; fi
  cat "$err" >&2
  rm -f "$err"
  die "aws $1 $2 failed"
}

# Creates a model or endpoint config from a kept request; one that exists already (an earlier
# deploy or transform of the same training job) is used as it is.
create_once() {
  local what=$1 name=$2 request=$3 err
  err=$(mktemp)
  if $AWS sagemaker "create-$what" --cli-input-json "file://$request" --output text 2>"$err"
  then
    rm -f "$err"
  elif grep -q 'already existing' "$err"; then
    rm -f "$err"
    echo "$what $name exists already: using it (make undeploy JOB_NAME=$name deletes it)"
  else
    cat "$err" >&2
    rm -f "$err"
    die "create-$what $name failed"
  fi
}

# The training job must have completed, and its model must be where model.json says.
check_model_data() {
  local status artifacts expected
  expected="s3://$BUCKET/output/$JOB_NAME/output/model.tar.gz"
  read -r status artifacts < <($AWS sagemaker describe-training-job --training-job-name "$JOB_NAME" \
    --query "[TrainingJobStatus, ModelArtifacts.S3ModelArtifacts]" --output text) ||
    die "cannot describe training job $JOB_NAME"
  [[ $status == Completed ]] || die "training job $JOB_NAME is $status, not Completed"
  [[ $artifacts == "$expected" ]] ||
    die "training job $JOB_NAME's model is $artifacts, not $expected (model.json's ModelDataUrl)"
}

# The endpoint config endpoint $ENDPOINT_NAME uses, in ENDPOINT_CONFIG; 1 when there is no such
# endpoint. (Not in a $(...) subshell: there, die could not end the script.)
endpoint_config() {
  local out
  out=$(mktemp)
  if aws_unless_missing sagemaker describe-endpoint --endpoint-name "$ENDPOINT_NAME" \
      --query EndpointConfigName --output text >"$out"; then
    ENDPOINT_CONFIG=$(<"$out")
    rm -f "$out"
    return 0
  fi
  rm -f "$out"
  return 1
}

# A member of a kept request: request_field FILE KEY...
request_field() {
  "$PYTHON" -c 'import functools, json, sys
print(functools.reduce(lambda d, k: d[k], sys.argv[2:], json.load(open(sys.argv[1]))))' "$@"
}

upload_file() {
  local file=$1 uri=$2 bucket key
  bucket=${uri#s3://}
  bucket=${bucket%%/*}
  key=${uri#s3://"$bucket"/}
  $AWS s3api put-object --bucket "$bucket" --key "$key" --body "$file" --output text >/dev/null
}

# Polls until the job leaves InProgress/Stopping, printing each status change, then prints the
# report (status, metrics or best job, FailureReason) and fails unless the job completed.
await() {
  local kind=$1 name=$2 status last="" waiting="InProgress Stopping"
  local -a describe query
  case $kind in
    training)
      describe=(sagemaker describe-training-job --training-job-name "$name")
      query=(--query "[TrainingJobStatus, SecondaryStatus]") ;;
    tuning)
      describe=(sagemaker describe-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name "$name")
      query=(--query "[HyperParameterTuningJobStatus]") ;;
    transform)
      describe=(sagemaker describe-transform-job --transform-job-name "$name")
      query=(--query "[TransformJobStatus]") ;;
    endpoint)
      describe=(sagemaker describe-endpoint --endpoint-name "$name")
      query=(--query "[EndpointStatus]")
      waiting="Creating Updating SystemUpdating RollingBack" ;;
    algorithm)
      describe=(sagemaker describe-algorithm --algorithm-name "$name")
      query=(--query "[AlgorithmStatus]")
      waiting="Pending InProgress" ;;
  esac
  while :; do
    status=$($AWS "${describe[@]}" "${query[@]}" --output text)
    [[ $status == "$last" ]] || echo "$(date -u +%H:%M:%S) $name: ${status//$'\t'/ / }"
    last=$status
    if [[ " $waiting " == *" ${status%%$'\t'*} "* ]]; then sleep "$POLL_SECONDS"; else break; fi
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
  model-request) use_package; model_request ;;
  endpoint-config-request) use_package; endpoint_config_request ;;
  endpoint-request) use_package; endpoint_request ;;
  algorithm-request) name=$(algorithm_name); ALGORITHM=$name algorithm_request ;;
  algorithm)
    name=$(algorithm_name)
    if aws_unless_missing sagemaker describe-algorithm --algorithm-name "$name" \
        --query AlgorithmStatus --output text >/dev/null; then
      echo "algorithm $name exists already: keeping it (another image tag makes another one)"
    else
      mkdir -p "$REQUEST_DIR"
      ALGORITHM=$name algorithm_request >"$REQUEST_DIR/$name.algorithm.json"
      echo "creating algorithm $name (request: $REQUEST_DIR/$name.algorithm.json)"
      $AWS sagemaker create-algorithm --cli-input-json "file://$REQUEST_DIR/$name.algorithm.json" \
        --output text
    fi
    await algorithm "$name"
    echo "make submit ALGORITHM=$name (or make tune ALGORITHM=$name) trains through it; the" \
      "console lists it under Training, Algorithms, My algorithms"
    ;;
  register)
    need_job_name register
    resolve BUCKET
    check_model_data
    job_image
    mkdir -p "$REQUEST_DIR"
    quality=$REQUEST_DIR/$JOB_NAME.model_quality.json
    fetch_model_quality "$quality"
    digest=$(sha256sum "$quality" | cut -d' ' -f1)
    request=$REQUEST_DIR/$JOB_NAME.model-package.json
    model_package_request "$JOB_IMAGE" "$digest" >"$request"
    upload_file "$quality" "$(request_field "$request" ModelMetrics ModelQuality Statistics S3Uri)"
    if ! aws_unless_missing sagemaker describe-model-package-group \
        --model-package-group-name "$MODEL_PACKAGE_GROUP" --output text >/dev/null; then
      echo "creating model package group $MODEL_PACKAGE_GROUP"
      $AWS sagemaker create-model-package-group --model-package-group-name "$MODEL_PACKAGE_GROUP" \
        --model-package-group-description "smtrain models, one version per registered training job" \
        --output text
    fi
    arn=$($AWS sagemaker create-model-package --cli-input-json "file://$request" \
      --query ModelPackageArn --output text) || die "create-model-package for $JOB_NAME failed"
    printf '%s\n' "$arn" >"$REQUEST_DIR/$JOB_NAME.model-package-arn"
    [[ -z ${GITHUB_OUTPUT:-} ]] || echo "model-package-arn=$arn" >>"$GITHUB_OUTPUT"
    "$PYTHON" -c '
import json, sys
m = json.load(open(sys.argv[1]))["multiclass_classification_metrics"]
names = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")
print("test set: " + ", ".join("%s %.4f" % (k, m[k]["value"]) for k in names))' "$quality"
    echo "registered $arn (PendingManualApproval)"
    echo "make approve VERSION=${arn##*/} approves it; then make deploy PACKAGE=${arn##*/}"
    ;;
  approve)
    [[ -n ${VERSION:-} ]] ||
      die "approve needs the version: make approve VERSION=<version number or model package ARN>"
    package_arn "$VERSION"
    $AWS sagemaker update-model-package --model-package-arn "$PACKAGE_ARN" \
      --model-approval-status Approved \
      --approval-description "approved by ${GITHUB_ACTOR:-${USER:-$(id -un)}} (make approve)" \
      --output text >/dev/null
    check_approved
    echo "approved $PACKAGE_ARN: make deploy PACKAGE=${PACKAGE_ARN##*/} serves it"
    ;;
  transform-request) transform_request ;;
  deploy)
    if [[ -n $PACKAGE ]]; then
      use_package
      resolve ROLE_ARN
      check_approved
      what="model package $PACKAGE_ARN"
    else
      need_job_name deploy
      resolve BUCKET ROLE_ARN IMAGE_URI
      check_model_data
      what="training job $JOB_NAME's model"
    fi
    if endpoint_config; then
      die "endpoint $ENDPOINT_NAME exists (config $ENDPOINT_CONFIG): make undeploy first, or" \
        "name another ENDPOINT_NAME"
    fi
    mkdir -p "$REQUEST_DIR"
    model_request >"$REQUEST_DIR/$MODEL_NAME.model.json"
    endpoint_config_request >"$REQUEST_DIR/$MODEL_NAME.endpoint-config.json"
    endpoint_request >"$REQUEST_DIR/$ENDPOINT_NAME.endpoint.json"
    echo "deploying $what to endpoint $ENDPOINT_NAME" \
      "(requests: $REQUEST_DIR/)"
    create_once model "$MODEL_NAME" "$REQUEST_DIR/$MODEL_NAME.model.json"
    create_once endpoint-config "$MODEL_NAME" "$REQUEST_DIR/$MODEL_NAME.endpoint-config.json"
    $AWS sagemaker create-endpoint --cli-input-json "file://$REQUEST_DIR/$ENDPOINT_NAME.endpoint.json" \
      --output text
    if ! await endpoint "$ENDPOINT_NAME"; then
      echo "the endpoint is not serving; make undeploy deletes it with its config and model" >&2
      exit 1
    fi
    echo "make invoke sends it a test image; make undeploy deletes it (it is billed until then)"
    ;;
  invoke)
    mkdir -p "$REQUEST_DIR"
    images=$DATA_DIR/t10k-images-idx3-ubyte.gz
    case $INVOKE_FORMAT in
      csv) content_type=text/csv ;;
      png) content_type=image/png ;;
      *) die "INVOKE_FORMAT=$INVOKE_FORMAT: expected csv or png" ;;
    esac
    sample=$REQUEST_DIR/invoke-$INVOKE_INDEX.$INVOKE_FORMAT
    "$PYTHON" "$INFRA/hosting_data.py" "$INVOKE_FORMAT" "$images" --first "$INVOKE_INDEX" \
      --count 1 >"$sample" || die "cannot make test image $INVOKE_INDEX from $images"
    answer=$REQUEST_DIR/invoke-$INVOKE_INDEX.answer.json
    $AWS sagemaker-runtime invoke-endpoint --endpoint-name "$ENDPOINT_NAME" \
      --content-type "$content_type" --accept application/json --body "fileb://$sample" \
      "$answer" >/dev/null
    echo "test image $INVOKE_INDEX ($content_type), label" \
      "$("$PYTHON" "$INFRA/hosting_data.py" label "$DATA_DIR/t10k-labels-idx1-ubyte.gz" \
        --first "$INVOKE_INDEX")"
    echo "endpoint $ENDPOINT_NAME answered:"
    cat "$answer"
    echo
    ;;
  transform)
    need_job_name transform
    resolve BUCKET ROLE_ARN IMAGE_URI
    check_model_data
    mkdir -p "$REQUEST_DIR"
    csv=$REQUEST_DIR/$TRANSFORM_JOB_NAME.csv
    "$PYTHON" "$INFRA/hosting_data.py" csv "$DATA_DIR/t10k-images-idx3-ubyte.gz" \
      --count "$TRANSFORM_IMAGES" >"$csv"
    model_request >"$REQUEST_DIR/$MODEL_NAME.model.json"
    transform_request >"$REQUEST_DIR/$TRANSFORM_JOB_NAME.json"
    input=$(request_field "$REQUEST_DIR/$TRANSFORM_JOB_NAME.json" TransformInput DataSource \
      S3DataSource S3Uri)
    output=$(request_field "$REQUEST_DIR/$TRANSFORM_JOB_NAME.json" TransformOutput S3OutputPath)
    echo "uploading $TRANSFORM_IMAGES test images to ${input}test.csv"
    upload_file "$csv" "${input}test.csv"
    create_once model "$MODEL_NAME" "$REQUEST_DIR/$MODEL_NAME.model.json"
    echo "creating transform job $TRANSFORM_JOB_NAME (request: $REQUEST_DIR/$TRANSFORM_JOB_NAME.json)"
    $AWS sagemaker create-transform-job \
      --cli-input-json "file://$REQUEST_DIR/$TRANSFORM_JOB_NAME.json" --output text
    await transform "$TRANSFORM_JOB_NAME"
    # A transform job writes one INPUT.out per input file under the output path.
    answers=$REQUEST_DIR/$TRANSFORM_JOB_NAME.out.csv
    bucket=${output#s3://}
    bucket=${bucket%%/*}
    $AWS s3api get-object --bucket "$bucket" --key "${output#s3://"$bucket"/}test.csv.out" \
      "$answers" --output text >/dev/null
    echo "first answers (class,p0,...,p9) of ${output}test.csv.out:"
    head -n 3 "$answers" | cut -c1-100
    "$PYTHON" "$INFRA/hosting_data.py" score "$DATA_DIR/t10k-labels-idx1-ubyte.gz" <"$answers"
    ;;
  undeploy)
    names=()
    if endpoint_config; then
      names+=("$ENDPOINT_CONFIG")
      echo "deleting endpoint $ENDPOINT_NAME"
      $AWS sagemaker delete-endpoint --endpoint-name "$ENDPOINT_NAME"
      while aws_unless_missing sagemaker describe-endpoint --endpoint-name "$ENDPOINT_NAME" \
          --query EndpointStatus --output text >/dev/null; do
        sleep "$POLL_SECONDS"
      done
    else
      echo "no endpoint $ENDPOINT_NAME"
    fi
    if [[ -n $JOB_NAME_GIVEN && " ${names[*]} " != *" $MODEL_NAME "* ]]; then
      names+=("$MODEL_NAME")
    fi
    for name in "${names[@]}"; do
      if aws_unless_missing sagemaker delete-endpoint-config --endpoint-config-name "$name"; then
        echo "deleted endpoint config $name"
      else
        echo "no endpoint config $name"
      fi
      if aws_unless_missing sagemaker delete-model --model-name "$name"; then
        echo "deleted model $name"
      else
        echo "no model $name"
      fi
    done
    [[ ${#names[@]} -gt 0 ]] || echo "nothing else to delete (JOB_NAME=... names a model to delete)"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
