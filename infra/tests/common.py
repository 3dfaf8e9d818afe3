"""Shared by the infra tests: paths, made-up AWS values, and the requests exactly as
infra/sagemaker.sh renders them for `make submit`, `make tune`, `make deploy` and
`make transform`."""

import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
sys.path.insert(0, str(INFRA))

# Made-up values of the shape the stack's outputs have.
ACCOUNT = "123456789012"
REGION = "eu-west-1"
BUCKET = "smtrain-bucket-1a2b3c4d5e6f"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/smtrain-SageMakerExecutionRole-AbCdEf012345"
REPOSITORY_URI = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/smtrain"

METRIC_DEFINITIONS = json.loads((INFRA / "metric-definitions.json").read_text())


def script_env(**overrides):
    """An environment for infra/sagemaker.sh that never reaches AWS: every stack output is
    given, and `aws` is a command that fails, so a lookup that should not happen fails the
    test instead of calling out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "JOB_", "TUNING_", "TRANSFORM_", "ENDPOINT_", "INVOKE_"))}
    env.update(AWS="false", BUCKET=BUCKET, ROLE_ARN=ROLE_ARN, REPOSITORY_URI=REPOSITORY_URI,
               STACK="smtrain")
    for key in ("IMAGE_TAG", "INSTANCE_TYPE", "WARM_START_PARENT", "MAX_JOBS",
                "MAX_PARALLEL_JOBS"):
        env.pop(key, None)
    env.update(overrides)
    return env


def rendered(kind, **overrides):
    """The request `make submit` (kind "training") or `make tune` ("tuning") would send, or
    one of those `make deploy` ("model", "endpoint-config", "endpoint") and `make transform`
    ("model", "transform") send."""
    return copy.deepcopy(_rendered(kind, tuple(sorted(overrides.items()))))


@functools.lru_cache(maxsize=None)
def _rendered(kind, overrides):
    overrides = dict(overrides)
    out = subprocess.run([str(INFRA / "sagemaker.sh"), f"{kind}-request"], cwd=ROOT,
                         env=script_env(**overrides), capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"sagemaker.sh {kind}-request failed:\n{out.stderr}")
    return json.loads(out.stdout)


def template(name):
    """A raw template, as committed."""
    return json.loads((INFRA / name).read_text())


# Fashion-MNIST's test set, as make setup installs it (Debian's dataset-fashion-mnist).
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
TEST_IMAGES = DATA_DIR / "t10k-images-idx3-ubyte.gz"
TEST_LABELS = DATA_DIR / "t10k-labels-idx1-ubyte.gz"


def write_idx(path, dims, data):
    """A gzipped IDX file of unsigned bytes."""
    import gzip
    import struct
    header = bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    path.write_bytes(gzip.compress(header + bytes(data)))
