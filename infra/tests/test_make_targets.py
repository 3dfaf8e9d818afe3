"""`make push`, `make submit` and `make tune` end to end: the real make targets, the real AWS
CLI (awscli v1 from the pinned venv), a stub of the AWS APIs on 127.0.0.1 (stub_aws.py) and a
docker stand-in that records what it is asked to do.

Nothing leaves the machine: the CLI is pointed at the stub with AWS_ENDPOINT_URL, has made-up
keys and no config files, instance metadata is off, and every proxy variable points at a closed
local port, so a request that missed the stub would fail here instead of going out.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from common import ACCOUNT, REGION, ROOT, rendered
from stub_aws import StubAws

AWS_CLI = Path(sys.executable).parent / "aws"
OUTPUTS = {
    "BucketName": "smtrain-stub-bucket",
    "ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/smtrain-stub-role",
    "RepositoryUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/smtrain",
}
REGISTRY = OUTPUTS["RepositoryUri"].split("/")[0]

FAKE_DOCKER = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
entry = {{"args": args}}
if args[:1] == ["login"]:
    entry["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_DOCKER_LOG"], "a") as f:
    f.write(json.dumps(entry) + "\\n")
if args[:2] == ["image", "inspect"]:
    sys.exit(0 if args[2] in os.environ["FAKE_DOCKER_IMAGES"].split() else 1)
"""


class MakeTargetsBase(unittest.TestCase):
    """Runs make targets against a stub; the tests are in the subclasses."""

    def setUp(self):
        self.assertTrue(AWS_CLI.is_file(), f"{AWS_CLI}: run under the infra venv's python")
        self.tmp = Path(tempfile.mkdtemp(prefix="smtrain-make-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.tmp)])
        self.docker = self.tmp / "docker"
        self.docker.write_text(FAKE_DOCKER.format(python=sys.executable))
        self.docker.chmod(0o755)
        self.docker_log = self.tmp / "docker.log"

    def make(self, stub, target, **settings):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "GITHUB_", "JOB_", "TUNING_", "TRANSFORM_",
                                    "ENDPOINT_", "INVOKE_"))
               and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        closed = "http://127.0.0.1:9"
        env.update(
            AWS=str(AWS_CLI), DOCKER=str(self.docker), AWS_ENDPOINT_URL=stub.url,
            AWS_ACCESS_KEY_ID="stub", AWS_SECRET_ACCESS_KEY="stub", AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=str(self.tmp / "none"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.tmp / "none"),
            AWS_EC2_METADATA_DISABLED="true", HTTP_PROXY=closed, HTTPS_PROXY=closed,
            http_proxy=closed, https_proxy=closed, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
            POLL_SECONDS="0", REQUEST_DIR=str(self.tmp / "requests"),
            FAKE_DOCKER_LOG=str(self.docker_log), FAKE_DOCKER_IMAGES="")
        for key in ("BUCKET", "ROLE_ARN", "REPOSITORY_URI", "IMAGE_TAG", "INSTANCE_TYPE",
                    "WARM_START_PARENT", "VERSION", "STACK"):
            env.pop(key, None)
        env.update(settings)
        run = subprocess.run(["make", "--no-print-directory", "-s", target], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(stub.errors, [], "the stub rejected a request")
        return run

    def docker_calls(self):
        if not self.docker_log.exists():
            return []
        return [json.loads(line) for line in self.docker_log.read_text().splitlines()]

    def expected_request(self, kind, **names):
        return rendered(kind, BUCKET=OUTPUTS["BucketName"], ROLE_ARN=OUTPUTS["ExecutionRoleArn"],
                        REPOSITORY_URI=OUTPUTS["RepositoryUri"], **names)


class MakeTargets(MakeTargetsBase):
    def test_submit_sends_the_rendered_request_waits_and_reports_the_metrics(self):
        final = {"FinalMetricDataList": [
                     {"MetricName": "test:accuracy", "Value": 0.8707, "Timestamp": 1700000300},
                     {"MetricName": "train:loss", "Value": 0.2911, "Timestamp": 1700000300}],
                 "ModelArtifacts": {"S3ModelArtifacts": "s3://smtrain-stub-bucket/output/"
                                                        "smtrain-stub-1/output/model.tar.gz"},
                 "TrainingTimeInSeconds": 400, "BillableTimeInSeconds": 120}
        statuses = [("InProgress", "Starting"), ("InProgress", "Training"),
                    ("Completed", "Completed")]
        with StubAws(OUTPUTS, statuses, final) as stub:
            run = self.make(stub, "submit", JOB_NAME="smtrain-stub-1")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        (sent,) = stub.requests("CreateTrainingJob")
        self.assertEqual(sent, self.expected_request("training", JOB_NAME="smtrain-stub-1"))
        kept = json.loads((self.tmp / "requests/smtrain-stub-1.json").read_text())
        self.assertEqual(kept, sent)
        self.assertEqual(stub.operations().count("DescribeStacks"), 3,
                         "each stack output is looked up once")
        self.assertGreaterEqual(stub.operations().count("DescribeTrainingJob"), 3)
        for text in ("InProgress / Training", "Completed", "test:accuracy", "0.8707",
                     "model.tar.gz", "managed spot saved 70%"):
            self.assertIn(text, run.stdout)

    def test_submit_fails_when_the_job_fails_and_shows_why(self):
        reason = 'ClientError: hyperparameter "epochs": value "five" is not a whole number'
        with StubAws(OUTPUTS, [("InProgress", "Training"), ("Failed", "Failed")],
                     {"FailureReason": reason}) as stub:
            summary = self.tmp / "summary.md"
            run = self.make(stub, "submit", JOB_NAME="smtrain-stub-2", GITHUB_ACTIONS="true",
                            GITHUB_STEP_SUMMARY=str(summary))
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(f"FailureReason: {reason}", run.stdout)
        self.assertIn(f"::error title=SageMaker training job failed::{reason}", run.stdout)
        self.assertIn(reason, summary.read_text())

    def test_submit_fails_when_the_job_is_stopped(self):
        with StubAws(OUTPUTS, [("Stopping", "Stopping"), ("Stopped", "MaxRuntimeExceeded")],
                     {}) as stub:
            run = self.make(stub, "submit", JOB_NAME="smtrain-stub-3")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("Stopped (MaxRuntimeExceeded)", run.stdout)

    def test_submit_uses_the_chosen_variant_and_given_values_without_the_stack(self):
        with StubAws({}, [("Completed", "Completed")], {}) as stub:
            run = self.make(stub, "submit", JOB_NAME="smtrain-stub-4", IMAGE_TAG="cuda-abc",
                            BUCKET="other-bucket", ROLE_ARN=OUTPUTS["ExecutionRoleArn"],
                            REPOSITORY_URI=OUTPUTS["RepositoryUri"])
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertNotIn("DescribeStacks", stub.operations())
        (sent,) = stub.requests("CreateTrainingJob")
        self.assertEqual(sent["AlgorithmSpecification"]["TrainingImage"],
                         OUTPUTS["RepositoryUri"] + ":cuda-abc")
        self.assertTrue(sent["ResourceConfig"]["InstanceType"].startswith("ml.g"))
        self.assertEqual(sent["OutputDataConfig"]["S3OutputPath"], "s3://other-bucket/output/")

    def test_tune_sends_the_rendered_request_and_reports_the_best_job(self):
        final = {"TrainingJobStatusCounters": {"Completed": 3, "InProgress": 0,
                                               "RetryableError": 0, "NonRetryableError": 1,
                                               "Stopped": 0},
                 "BestTrainingJob": {
                     "TrainingJobName": "smtrain-t1-003-abcd", "CreationTime": 1700000000,
                     "TrainingJobStatus": "Completed",
                     "TunedHyperParameters": {"learning_rate": "0.0021", "hidden_units": "256"},
                     "FinalHyperParameterTuningJobObjectiveMetric": {
                         "MetricName": "validation:accuracy", "Value": 0.8912}}}
        with StubAws(OUTPUTS, [("InProgress", None), ("Completed", None)], final) as stub:
            run = self.make(stub, "tune", TUNING_JOB_NAME="smtrain-t1",
                            WARM_START_PARENT="smtrain-t0")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        (sent,) = stub.requests("CreateHyperParameterTuningJob")
        self.assertEqual(sent, self.expected_request("tuning", TUNING_JOB_NAME="smtrain-t1",
                                                     WARM_START_PARENT="smtrain-t0"))
        for text in ("smtrain-t1-003-abcd", "validation:accuracy=0.8912", "learning_rate=0.0021"):
            self.assertIn(text, run.stdout)

    def test_tune_fails_when_no_training_job_completed(self):
        final = {"TrainingJobStatusCounters": {"Completed": 0, "NonRetryableError": 4}}
        with StubAws(OUTPUTS, [("Completed", None)], final) as stub:
            run = self.make(stub, "tune", TUNING_JOB_NAME="smtrain-t2")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("no training job of the tuning job completed", run.stdout)

    def test_push_logs_in_and_pushes_both_variants_with_moving_and_pinned_tags(self):
        with StubAws(OUTPUTS, [("Completed", None)], {}) as stub:
            run = self.make(stub, "push", VERSION="0123456789ab",
                            FAKE_DOCKER_IMAGES="smtrain:cpu smtrain:cuda")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        calls = self.docker_calls()
        (login,) = [c for c in calls if c["args"][0] == "login"]
        self.assertEqual(login["args"], ["login", "--username", "AWS", "--password-stdin",
                                         REGISTRY])
        self.assertEqual(login["stdin"].strip(), "stub-ecr-password")
        repo = OUTPUTS["RepositoryUri"]
        pushed = [c["args"][1] for c in calls if c["args"][0] == "push"]
        self.assertEqual(sorted(pushed), sorted(f"{repo}:{t}" for t in (
            "cpu", "cpu-0123456789ab", "cuda", "cuda-0123456789ab")))
        tagged = {(c["args"][1], c["args"][2]) for c in calls if c["args"][0] == "tag"}
        self.assertIn(("smtrain:cuda", f"{repo}:cuda-0123456789ab"), tagged)
        self.assertIn(("smtrain:cpu", f"{repo}:cpu"), tagged)
        self.assertLess(calls.index(login), min(i for i, c in enumerate(calls)
                                                if c["args"][0] == "push"))

    def test_push_stops_before_logging_in_when_a_variant_is_not_built(self):
        with StubAws(OUTPUTS, [("Completed", None)], {}) as stub:
            run = self.make(stub, "push", FAKE_DOCKER_IMAGES="smtrain:cpu")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("no local image smtrain:cuda", run.stderr)
        self.assertEqual([c for c in self.docker_calls() if c["args"][0] != "image"], [])
        self.assertNotIn("GetAuthorizationToken", stub.operations())


if __name__ == "__main__":
    unittest.main()
