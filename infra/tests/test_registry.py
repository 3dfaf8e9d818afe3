"""The console and CI paths end to end: `make algorithm`, `make register`, `make approve` and
`make deploy PACKAGE=...` with the real AWS CLI against the local stub (stub_aws.py), the
requests they send against botocore's SageMaker model, the model quality file of a real job,
and the IAM policies that allow exactly these calls."""

import hashlib
import io
import json
import os
import socket
import subprocess
import tarfile
import tempfile
import time
import unittest
from pathlib import Path

from botocore.session import get_session

from common import ACCOUNT, REGION, rendered

import render
import sagemaker_model
from stub_aws import StubAws
from test_iam import ATTRIBUTES, allowed, operator_policy, role_policy
from test_make_targets import OUTPUTS, MakeTargetsBase
from test_metrics import train_like

BUCKET = OUTPUTS["BucketName"]
IMAGE = OUTPUTS["RepositoryUri"] + ":cpu-0123456789ab"
ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
METRICS = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")


def real_output_data():
    """output/data of a real training job (the release trainer, one epoch on the fixture, set
    up as `make submit` sets it up)."""
    files = {}
    train_like(rendered("training"), epochs="1", output_data=files)
    return files


def output_tar(files):
    """output.tar.gz as SageMaker packs output/data: the files at the top."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def completed_job(name, **spec):
    return {"TrainingJobName": name, "TrainingJobStatus": "Completed",
            "SecondaryStatus": "Completed", "CreationTime": 1700000000,
            "AlgorithmSpecification": dict({"TrainingInputMode": "File"}, **spec),
            "ModelArtifacts": {"S3ModelArtifacts":
                               f"s3://{BUCKET}/output/{name}/output/model.tar.gz"}}


def package_request(job, quality):
    return render.render_file(
        render.INFRA / "model-package.json",
        {"MODEL_PACKAGE_GROUP": "smtrain", "JOB_NAME": job, "BUCKET": BUCKET, "IMAGE_URI": IMAGE,
         "QUALITY_SHA256": hashlib.sha256(quality).hexdigest()})


class TheModelQualityFile(unittest.TestCase):
    """Model Monitor's multiclass_classification_metrics, checked on a real job's output/data."""

    @classmethod
    def setUpClass(cls):
        cls.files = real_output_data()
        cls.quality = json.loads(cls.files["model_quality.json"])
        cls.evaluation = json.loads(cls.files["evaluation.json"])

    def test_it_has_model_monitors_shape(self):
        self.assertEqual(set(self.quality), {"version", "dataset",
                                             "multiclass_classification_metrics"})
        m = self.quality["multiclass_classification_metrics"]
        self.assertEqual(set(m), set(METRICS) | {"confusion_matrix"})
        for name in METRICS:
            with self.subTest(name):
                self.assertEqual(set(m[name]), {"value", "standard_deviation"})
                self.assertTrue(0 < m[name]["value"] < 1)
                self.assertTrue(0 < m[name]["standard_deviation"] < 0.1)

    def test_its_numbers_are_the_evaluations(self):
        m = self.quality["multiclass_classification_metrics"]
        e = self.evaluation
        self.assertEqual(e["dataset"], "test")
        self.assertEqual(self.quality["dataset"]["item_count"], e["samples"])
        self.assertEqual(m["accuracy"]["value"], e["accuracy"])
        for name, key in [("weighted_precision", "precision"), ("weighted_recall", "recall"),
                          ("weighted_f1", "f1")]:
            self.assertAlmostEqual(m[name]["value"], e["weighted_average"][key], places=12)
        matrix = m["confusion_matrix"]
        names = e["class_names"]
        self.assertEqual(list(matrix), names)
        self.assertEqual([[matrix[t][p] for p in names] for t in names], e["confusion_matrix"])
        self.assertEqual(sum(sum(row.values()) for row in matrix.values()), e["samples"])


class Requests(unittest.TestCase):
    def test_the_model_package_validates_and_points_at_the_jobs_files(self):
        request = package_request("smtrain-1", b"{}")
        self.assertEqual(sagemaker_model.errors("CreateModelPackage", request), [])
        (container,) = request["InferenceSpecification"]["Containers"]
        # The model deploy would serve, and the quality file register uploads.
        self.assertEqual(container["ModelDataUrl"],
                         rendered("model", JOB_NAME="smtrain-1", BUCKET=BUCKET)
                         ["PrimaryContainer"]["ModelDataUrl"])
        statistics = request["ModelMetrics"]["ModelQuality"]["Statistics"]
        self.assertEqual(statistics["ContentType"], "application/json")
        self.assertTrue(statistics["S3Uri"].endswith("/smtrain-1/model_quality.json"))
        self.assertEqual(request["ModelApprovalStatus"], "PendingManualApproval")
        broken = dict(request, ModelApprovalStatus="Maybe")
        self.assertNotEqual(sagemaker_model.errors("CreateModelPackage", broken), [])

    def test_a_model_from_a_package_names_only_the_package(self):
        package = f"{ARN}:model-package/smtrain/3"
        model = rendered("model", PACKAGE=package)
        self.assertEqual(sagemaker_model.errors("CreateModel", model), [])
        self.assertEqual(model["ModelName"], "smtrain-v3")
        self.assertEqual(model["PrimaryContainer"]["ModelPackageName"], package)
        self.assertNotIn("Image", model["PrimaryContainer"])
        self.assertEqual(model["ExecutionRoleArn"], rendered("training")["RoleArn"])
        config = rendered("endpoint-config", PACKAGE=package)
        self.assertEqual(config["ProductionVariants"][0]["ModelName"], "smtrain-v3")
        self.assertEqual(sagemaker_model.errors("CreateEndpointConfig", config), [])


class RegistryTargets(MakeTargetsBase):
    def setUp(self):
        super().setUp()
        self.quality = json.dumps({"multiclass_classification_metrics": {
            m: {"value": 0.8, "standard_deviation": 0.004} for m in METRICS}}).encode()

    def stub(self, **kwargs):
        stub = StubAws(OUTPUTS, [("Completed", "Completed")], {}, **kwargs)
        for job in ("smtrain-1", "smtrain-2"):
            stub.training_jobs[job] = completed_job(job, TrainingImage=IMAGE)
            stub.objects[(BUCKET, f"output/{job}/output/output.tar.gz")] = output_tar(
                {"evaluation.json": b"{}", "model_quality.json": self.quality})
        return stub

    def test_algorithm_creates_it_once_waits_and_says_how_to_use_it(self):
        with self.stub(algorithm_statuses=("InProgress", "Completed")) as stub:
            run = self.make(stub, "algorithm", VERSION="0123456789ab")
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            (sent,) = stub.requests("CreateAlgorithm")
            self.assertEqual(sent, self.expected_request("algorithm", VERSION="0123456789ab"))
            self.assertIn("make submit ALGORITHM=smtrain-cuda-0123456789ab", run.stdout)
            self.assertIn("Completed", run.stdout)
            again = self.make(stub, "algorithm", VERSION="0123456789ab")
        self.assertEqual(again.returncode, 0, again.stdout + again.stderr)
        self.assertIn("exists already", again.stdout)
        self.assertEqual(len(stub.requests("CreateAlgorithm")), 1)

    def test_a_failed_algorithm_fails_the_target_with_the_reason(self):
        reason = "Image smtrain:cuda-0123456789ab not found"
        final = {"AlgorithmStatusDetails": {"ImageScanStatuses": [
            {"Name": "training", "Status": "Failed", "FailureReason": reason}]}}
        with self.stub(algorithm_statuses=("Failed",), algorithm_final=final) as stub:
            run = self.make(stub, "algorithm", VERSION="0123456789ab")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(reason, run.stdout)

    def test_submit_trains_through_the_algorithm(self):
        with self.stub() as stub:
            run = self.make(stub, "submit", JOB_NAME="smtrain-3",
                            ALGORITHM="smtrain-cuda-0123456789ab")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        (sent,) = stub.requests("CreateTrainingJob")
        self.assertEqual(sent, self.expected_request("training", JOB_NAME="smtrain-3",
                                                     ALGORITHM="smtrain-cuda-0123456789ab"))
        self.assertEqual(sent["AlgorithmSpecification"]["AlgorithmName"],
                         "smtrain-cuda-0123456789ab")

    def test_register_creates_the_group_once_uploads_the_quality_and_a_pending_version(self):
        with self.stub() as stub:
            output = self.tmp / "github-output"
            run = self.make(stub, "register", JOB_NAME="smtrain-1",
                            GITHUB_OUTPUT=str(output))
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            second = self.make(stub, "register", JOB_NAME="smtrain-2")
        self.assertEqual(second.returncode, 0, second.stdout + second.stderr)
        self.assertEqual(len(stub.requests("CreateModelPackageGroup")), 1)
        first, _ = stub.requests("CreateModelPackage")
        # The CLI adds an idempotency token of its own; the rest is the rendered request.
        self.assertIsInstance(first.pop("ClientToken"), str)
        self.assertEqual(first, package_request("smtrain-1", self.quality))
        self.assertEqual(stub.objects[(BUCKET, "registry/smtrain-1/model_quality.json")],
                         self.quality)
        arn = f"{ARN}:model-package/smtrain/1"
        self.assertEqual([p["status"] for p in stub.packages], ["PendingManualApproval"] * 2)
        self.assertEqual(output.read_text(), f"model-package-arn={arn}\n")
        self.assertEqual((self.tmp / "requests/smtrain-1.model-package-arn").read_text(),
                         arn + "\n")
        for text in ("accuracy 0.8000", "PendingManualApproval", "make approve VERSION=1"):
            self.assertIn(text, run.stdout)
        self.assertIn("make approve VERSION=2", second.stdout)

    def test_register_uses_the_image_of_the_algorithm_a_job_trained_through(self):
        with self.stub() as stub:
            self.make(stub, "algorithm", VERSION="0123456789ab")
            stub.training_jobs["smtrain-4"] = completed_job(
                "smtrain-4", AlgorithmName="smtrain-cuda-0123456789ab")
            stub.objects[(BUCKET, "output/smtrain-4/output/output.tar.gz")] = output_tar(
                {"model_quality.json": self.quality})
            run = self.make(stub, "register", JOB_NAME="smtrain-4")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        (sent,) = stub.requests("CreateModelPackage")
        self.assertEqual(sent["InferenceSpecification"]["Containers"][0]["Image"],
                         OUTPUTS["RepositoryUri"] + ":cuda-0123456789ab")

    def test_register_refuses_what_it_cannot_register(self):
        with self.stub() as stub:
            stub.training_jobs["smtrain-5"] = dict(completed_job("smtrain-5",
                                                                 TrainingImage=IMAGE),
                                                   TrainingJobStatus="Failed")
            stub.training_jobs["smtrain-6"] = completed_job("smtrain-6", TrainingImage=IMAGE)
            stub.objects[(BUCKET, "output/smtrain-6/output/output.tar.gz")] = output_tar(
                {"evaluation.json": b"{}"})
            cases = [({}, "register needs the training job"),
                     ({"JOB_NAME": "smtrain-5"}, "is Failed, not Completed"),
                     ({"JOB_NAME": "smtrain-6"}, "the job had no test channel")]
            for settings, message in cases:
                with self.subTest(message):
                    run = self.make(stub, "register", **settings)
                    self.assertNotEqual(run.returncode, 0)
                    self.assertIn(message, run.stderr)
        self.assertEqual(stub.requests("CreateModelPackage"), [])

    def test_only_an_approved_version_deploys_and_undeploy_removes_it(self):
        with self.stub() as stub:
            self.assertEqual(self.make(stub, "register", JOB_NAME="smtrain-1").returncode, 0)
            early = self.make(stub, "deploy", PACKAGE="1")
            self.assertNotEqual(early.returncode, 0)
            self.assertIn("PendingManualApproval, not Approved", early.stderr)
            self.assertEqual(stub.requests("CreateModel"), [])

            missing = self.make(stub, "approve")
            self.assertIn("approve needs the version", missing.stderr)
            approve = self.make(stub, "approve", VERSION="1")
            self.assertEqual(approve.returncode, 0, approve.stdout + approve.stderr)
            (update,) = stub.requests("UpdateModelPackage")
            self.assertEqual(update["ModelApprovalStatus"], "Approved")
            self.assertEqual(update["ModelPackageArn"], f"{ARN}:model-package/smtrain/1")

            deploy = self.make(stub, "deploy", PACKAGE="1")
            self.assertEqual(deploy.returncode, 0, deploy.stdout + deploy.stderr)
            (model,) = stub.requests("CreateModel")
            self.assertEqual(model, self.expected_request(
                "model", PACKAGE=f"{ARN}:model-package/smtrain/1"))
            self.assertEqual(stub.endpoints["smtrain"]["request"]["EndpointConfigName"],
                             "smtrain-v1")
            self.assertIn("InService", deploy.stdout)

            undeploy = self.make(stub, "undeploy")
        self.assertEqual(undeploy.returncode, 0, undeploy.stdout + undeploy.stderr)
        self.assertEqual((stub.models, stub.endpoint_configs, stub.endpoints), ({}, {}, {}))

    def test_approving_a_version_that_does_not_exist_fails(self):
        with self.stub() as stub:
            self.make(stub, "register", JOB_NAME="smtrain-1")
            run = self.make(stub, "approve", VERSION="7")
            bad = self.make(stub, "approve", VERSION="latest")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("does not exist", run.stderr)
        self.assertIn("expected a version number", bad.stderr)
        self.assertEqual(stub.packages[0]["status"], "PendingManualApproval")


class Moto:
    """moto's standalone server (SMTRAIN_MOTO_SERVER, installed by make test-infra) on a free
    port of 127.0.0.1: SageMaker and S3 as another implementation than ours sees them. It
    keeps model package groups, versions and their approval, models, endpoint configs,
    endpoints and training jobs (which it completes at once); it has no CreateAlgorithm or
    DescribeAlgorithm, which only the stub answers."""

    def __init__(self):
        binary = os.environ.get("SMTRAIN_MOTO_SERVER")
        if not binary or not Path(binary).is_file():
            raise AssertionError(f"SMTRAIN_MOTO_SERVER={binary!r}: make test-infra installs moto")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.errors = []
        self.dir = tempfile.TemporaryDirectory(prefix="smtrain-moto-")
        self.process = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(self.port)],
                                        cwd=self.dir.name, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise AssertionError("moto did not start listening")
                time.sleep(0.05)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, service):
        return get_session().create_client(service, region_name=REGION, endpoint_url=self.url,
                                           aws_access_key_id="stub",
                                           aws_secret_access_key="stub")

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.dir.cleanup()


class AgainstMoto(MakeTargetsBase):
    """submit, register, approve, deploy PACKAGE=... and undeploy end to end against moto."""

    def test_a_job_is_registered_approved_deployed_and_undeployed(self):
        moto = Moto()
        self.addCleanup(moto.close)
        given = {"BUCKET": BUCKET, "ROLE_ARN": OUTPUTS["ExecutionRoleArn"],
                 "REPOSITORY_URI": OUTPUTS["RepositoryUri"]}
        job = "smtrain-moto-1"
        s3 = moto.client("s3")
        s3.create_bucket(Bucket=BUCKET,
                         CreateBucketConfiguration={"LocationConstraint": REGION})
        run = self.make(moto, "submit", JOB_NAME=job, **given)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        files = real_output_data()
        s3.put_object(Bucket=BUCKET, Key=f"output/{job}/output/output.tar.gz",
                      Body=output_tar(files))

        run = self.make(moto, "register", JOB_NAME=job, **given)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        sagemaker = moto.client("sagemaker")
        (summary,) = sagemaker.list_model_packages(
            ModelPackageGroupName="smtrain")["ModelPackageSummaryList"]
        arn = summary["ModelPackageArn"]
        self.assertIn(f"registered {arn} (PendingManualApproval)", run.stdout)
        package = sagemaker.describe_model_package(ModelPackageName=arn)
        self.assertEqual(package["ModelApprovalStatus"], "PendingManualApproval")
        uploaded = s3.get_object(Bucket=BUCKET,
                                 Key=f"registry/{job}/model_quality.json")["Body"].read()
        self.assertEqual(uploaded, files["model_quality.json"])

        refused = self.make(moto, "deploy", PACKAGE=arn.rsplit("/", 1)[1], **given)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("not Approved", refused.stderr)
        run = self.make(moto, "approve", VERSION=arn.rsplit("/", 1)[1], **given)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(sagemaker.describe_model_package(ModelPackageName=arn)
                         ["ModelApprovalStatus"], "Approved")

        run = self.make(moto, "deploy", PACKAGE=arn, **given)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        model_name = f"smtrain-v{arn.rsplit('/', 1)[1]}"
        model = sagemaker.describe_model(ModelName=model_name)
        self.assertEqual(model["PrimaryContainer"]["ModelPackageName"], arn)
        self.assertEqual(sagemaker.describe_endpoint(EndpointName="smtrain")["EndpointConfigName"],
                         model_name)
        run = self.make(moto, "undeploy", **given)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(sagemaker.list_models()["Models"], [])
        self.assertEqual(sagemaker.list_endpoints()["Endpoints"], [])


class Permissions(unittest.TestCase):
    def setUp(self):
        self.operator = operator_policy()
        self.role = role_policy()

    def test_operators_may_make_the_algorithm_and_nobody_elses(self):
        name = rendered("algorithm", VERSION="0123456789ab")["AlgorithmName"]
        for action in ("sagemaker:CreateAlgorithm", "sagemaker:DescribeAlgorithm"):
            self.assertTrue(allowed(self.operator, action, f"{ARN}:algorithm/{name}"), action)
            self.assertFalse(allowed(self.operator, action, f"{ARN}:algorithm/someone-else"))
        self.assertFalse(allowed(self.operator, "sagemaker:DeleteAlgorithm",
                                 f"{ARN}:algorithm/{name}"))

    def test_operators_may_register_approve_and_deploy_smtrain_versions_only(self):
        group, version = f"{ARN}:model-package-group/smtrain", f"{ARN}:model-package/smtrain/3"
        for action in ("sagemaker:CreateModelPackageGroup", "sagemaker:DescribeModelPackageGroup"):
            self.assertTrue(allowed(self.operator, action, group), action)
            self.assertFalse(allowed(self.operator, action,
                                     f"{ARN}:model-package-group/someone-else"))
        for action in ("sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage",
                       "sagemaker:UpdateModelPackage"):
            self.assertTrue(allowed(self.operator, action, version), action)
            self.assertFalse(allowed(self.operator, action,
                                     f"{ARN}:model-package/someone-else/3"))
        for action in ("sagemaker:DeleteModelPackage", "sagemaker:DeleteModelPackageGroup",
                       "sagemaker:PutModelPackageGroupPolicy"):
            self.assertFalse(allowed(self.operator, action, group), action)
        self.assertTrue(allowed(self.operator, "sagemaker:CreateModel",
                                f"{ARN}:model/smtrain-v3"))
        quality = package_request("smtrain-1", b"{}")["ModelMetrics"]["ModelQuality"][
            "Statistics"]["S3Uri"]
        key = quality[len("s3://"):].partition("/")[2]
        for action in ("s3:PutObject", "s3:GetObject"):
            self.assertTrue(allowed(self.operator, action,
                                    f"{ATTRIBUTES['Bucket.Arn']}/{key}"), action)
        self.assertTrue(allowed(self.operator, "s3:GetObject",
                                f"{ATTRIBUTES['Bucket.Arn']}/output/smtrain-1/output/output.tar.gz"))

    def test_the_execution_role_serves_a_version_and_reads_nothing_of_the_registry(self):
        (container,) = package_request("smtrain-1", b"{}")["InferenceSpecification"]["Containers"]
        bucket, _, key = container["ModelDataUrl"][len("s3://"):].partition("/")
        bucket_arn = ATTRIBUTES["Bucket.Arn"]
        self.assertTrue(allowed(self.role, "s3:GetObject", f"{bucket_arn}/{key}"))
        self.assertFalse(allowed(self.role, "s3:GetObject",
                                 f"{bucket_arn}/registry/smtrain-1/model_quality.json"))
        for action in ("sagemaker:CreateModelPackage", "sagemaker:UpdateModelPackage"):
            self.assertFalse(allowed(self.role, action, f"{ARN}:model-package/smtrain/1"))


if __name__ == "__main__":
    unittest.main()
