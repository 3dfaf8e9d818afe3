"""`make deploy`, `make invoke`, `make transform` and `make undeploy` end to end: the real make
targets and AWS CLI against the stub of the AWS APIs (stub_aws.py), which keeps models, endpoint
configs and endpoints as SageMaker does, and the real Fashion-MNIST test set (make setup)."""

import json
import unittest
import zlib

from common import TEST_IMAGES, TEST_LABELS
from stub_aws import StubAws
from test_make_targets import OUTPUTS, MakeTargetsBase

import hosting_data

BUCKET = OUTPUTS["BucketName"]
JOB = "smtrain-20260101-120000"
MODEL_TAR = f"s3://{BUCKET}/output/{JOB}/output/model.tar.gz"


def finished(name=JOB, status="Completed", model=MODEL_TAR):
    """DescribeTrainingJob's answer for a training job that has ended."""
    answer = {"TrainingJobName": name, "TrainingJobStatus": status,
              "TrainingJobArn": f"arn:aws:sagemaker:eu-west-1:123456789012:training-job/{name}",
              "SecondaryStatus": status, "CreationTime": 1700000000,
              "AlgorithmSpecification": {"TrainingInputMode": "File"}}
    if model:
        answer["ModelArtifacts"] = {"S3ModelArtifacts": model}
    return {name: answer}


def test_rows(first, count):
    _, _, images = hosting_data.images(str(TEST_IMAGES), first, count)
    return images


def png_pixels(data):
    """The pixels of an 8-bit grayscale PNG without interlacing (as hosting_data writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat, width = 8, b"", None
    while i < len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        kind, payload = data[i + 4:i + 8], data[i + 8:i + 8 + size]
        if kind == b"IHDR":
            width = int.from_bytes(payload[:4], "big")
            assert payload[8:10] == b"\x08\x00", "8-bit grayscale"
        elif kind == b"IDAT":
            idat += payload
        i += 12 + size
    raw = zlib.decompress(idat)
    rows = [raw[r * (width + 1):(r + 1) * (width + 1)] for r in range(len(raw) // (width + 1))]
    assert all(row[0] == 0 for row in rows), "filter type None"
    return b"".join(row[1:] for row in rows)


class Hosting(MakeTargetsBase):
    def setUp(self):
        super().setUp()
        self.assertTrue(TEST_IMAGES.is_file(), f"{TEST_IMAGES}: make setup installs it")

    def deployed(self, stub, endpoint="smtrain", name=JOB):
        """Puts a deployed model into the stub, as make deploy leaves it."""
        stub.models[name] = self.expected_request("model", JOB_NAME=name)
        stub.endpoint_configs[name] = self.expected_request("endpoint-config", JOB_NAME=name)
        stub.endpoints[endpoint] = {"request": {"EndpointName": endpoint,
                                                "EndpointConfigName": name},
                                    "polls": 0, "deleting": False}

    def test_deploy_creates_model_config_and_endpoint_and_waits_until_in_service(self):
        statuses = [("Creating", None), ("Creating", None), ("InService", None)]
        final = {"ProductionVariants": [{"VariantName": "AllTraffic", "CurrentInstanceCount": 1}]}
        with StubAws(OUTPUTS, [], {}, training_jobs=finished(), endpoint_statuses=statuses,
                     endpoint_final=final) as stub:
            run = self.make(stub, "deploy", JOB_NAME=JOB)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(stub.requests("CreateModel"),
                         [self.expected_request("model", JOB_NAME=JOB)])
        self.assertEqual(stub.requests("CreateEndpointConfig"),
                         [self.expected_request("endpoint-config", JOB_NAME=JOB)])
        self.assertEqual(stub.requests("CreateEndpoint"),
                         [self.expected_request("endpoint", JOB_NAME=JOB)])
        (model,) = stub.requests("CreateModel")
        self.assertEqual(model["PrimaryContainer"]["ModelDataUrl"], MODEL_TAR)
        ops = stub.operations()
        self.assertLess(ops.index("DescribeTrainingJob"), ops.index("CreateModel"))
        self.assertLess(ops.index("CreateModel"), ops.index("CreateEndpointConfig"))
        self.assertLess(ops.index("CreateEndpointConfig"), ops.index("CreateEndpoint"))
        self.assertGreaterEqual(ops.count("DescribeEndpoint"), 4, "checked first, then polled")
        for text in ("smtrain: Creating", "smtrain: InService", "1 instance(s)", "make undeploy"):
            self.assertIn(text, run.stdout)
        kept = json.loads((self.tmp / f"requests/{JOB}.model.json").read_text())
        self.assertEqual(kept, model)

    def test_deploy_needs_the_training_job_named(self):
        with StubAws(OUTPUTS, [], {}) as stub:
            run = self.make(stub, "deploy")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("make deploy JOB_NAME=", run.stderr)
        self.assertEqual(stub.calls, [])

    def test_deploy_refuses_a_training_job_that_did_not_complete(self):
        with StubAws(OUTPUTS, [], {}, training_jobs=finished(status="Failed", model=None)) as stub:
            run = self.make(stub, "deploy", JOB_NAME=JOB)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(f"training job {JOB} is Failed", run.stderr)
        self.assertNotIn("CreateModel", stub.operations())

    def test_deploy_refuses_a_model_elsewhere_than_the_template_says(self):
        other = f"s3://{BUCKET}/elsewhere/model.tar.gz"
        with StubAws(OUTPUTS, [], {}, training_jobs=finished(model=other)) as stub:
            run = self.make(stub, "deploy", JOB_NAME=JOB)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(other, run.stderr)
        self.assertNotIn("CreateModel", stub.operations())

    def test_deploy_leaves_a_running_endpoint_alone(self):
        with StubAws(OUTPUTS, [], {}, training_jobs=finished()) as stub:
            self.deployed(stub, name="smtrain-earlier")
            run = self.make(stub, "deploy", JOB_NAME=JOB)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("endpoint smtrain exists (config smtrain-earlier)", run.stderr)
        self.assertIn("make undeploy", run.stderr)
        self.assertNotIn("CreateModel", stub.operations())

    def test_deploy_reuses_the_model_a_transform_created(self):
        with StubAws(OUTPUTS, [], {}, training_jobs=finished()) as stub:
            stub.models[JOB] = self.expected_request("model", JOB_NAME=JOB)
            run = self.make(stub, "deploy", JOB_NAME=JOB, ENDPOINT_NAME="smtrain-b")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn(f"model {JOB} exists already", run.stdout)
        self.assertEqual([e["request"]["EndpointConfigName"] for e in stub.endpoints.values()],
                         [JOB])

    def test_deploy_fails_when_the_endpoint_fails_and_shows_why(self):
        reason = "The primary container for production variant AllTraffic did not pass the ping"
        with StubAws(OUTPUTS, [], {}, training_jobs=finished(),
                     endpoint_statuses=[("Creating", None), ("Failed", None)],
                     endpoint_final={"FailureReason": reason}) as stub:
            run = self.make(stub, "deploy", JOB_NAME=JOB, GITHUB_ACTIONS="true")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(f"FailureReason: {reason}", run.stdout)
        self.assertIn(f"::error title=SageMaker endpoint failed::{reason}", run.stdout)
        self.assertIn("make undeploy deletes it", run.stderr)

    def test_invoke_sends_a_test_image_as_csv_and_prints_the_answer_and_label(self):
        answer = b'{"predictions": [{"class": 9, "class_name": "Ankle boot"}]}'
        with StubAws(OUTPUTS, [], {}, invoke_answer=answer) as stub:
            self.deployed(stub)
            run = self.make(stub, "invoke")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        ((name, headers, body),) = stub.invocations
        self.assertEqual(name, "smtrain")
        self.assertEqual(headers["content-type"], "text/csv")
        self.assertEqual(headers["accept"], "application/json")
        (image,) = test_rows(0, 1)
        self.assertEqual(body.decode(), ",".join(map(str, image)) + "\n")
        self.assertIn("label 9 Ankle boot", run.stdout)
        self.assertIn(answer.decode(), run.stdout)

    def test_invoke_can_send_a_png(self):
        with StubAws(OUTPUTS, [], {}) as stub:
            self.deployed(stub, endpoint="smtrain-b")
            run = self.make(stub, "invoke", ENDPOINT_NAME="smtrain-b", INVOKE_INDEX="7",
                            INVOKE_FORMAT="png")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        ((_, headers, body),) = stub.invocations
        self.assertEqual(headers["content-type"], "image/png")
        (image,) = test_rows(7, 1)
        self.assertEqual(png_pixels(body), image)
        label = hosting_data.labels(str(TEST_LABELS))[7]
        self.assertIn(f"test image 7 (image/png), label {label} ", run.stdout)

    def test_invoke_fails_without_an_endpoint(self):
        with StubAws(OUTPUTS, [], {}) as stub:
            run = self.make(stub, "invoke")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("Could not find endpoint", run.stderr)

    def test_transform_uploads_the_test_images_runs_the_job_and_scores_the_answers(self):
        labels = hosting_data.labels(str(TEST_LABELS))

        def answer(lines):
            # Right for all but the first line: the score must count.
            return [f"{(labels[i] + (i == 0)) % 10}," + ",".join(["0.1"] * 10)
                    for i in range(len(lines))]

        name = "smtrain-transform-1"
        statuses = [("InProgress", None), ("Completed", None)]
        with StubAws(OUTPUTS, statuses, {}, training_jobs=finished(),
                     transform_answer=answer) as stub:
            run = self.make(stub, "transform", JOB_NAME=JOB, TRANSFORM_JOB_NAME=name,
                            TRANSFORM_IMAGES="40")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(stub.requests("CreateModel"),
                         [self.expected_request("model", JOB_NAME=JOB)])
        (sent,) = stub.requests("CreateTransformJob")
        self.assertEqual(sent, self.expected_request("transform", JOB_NAME=JOB,
                                                     TRANSFORM_JOB_NAME=name))
        uploaded = stub.objects[(BUCKET, f"transform/input/{name}/test.csv")].decode()
        self.assertEqual(uploaded.splitlines(),
                         [",".join(map(str, row)) for row in test_rows(0, 40)])
        ops = stub.operations()
        self.assertLess(ops.index("PutObject"), ops.index("CreateTransformJob"))
        self.assertLess(ops.index("CreateModel"), ops.index("CreateTransformJob"))
        self.assertEqual(stub.requests("GetObject"),
                         [{"Bucket": BUCKET, "Key": f"transform/output/{name}/test.csv.out"}])
        self.assertIn("accuracy: 0.9750 (39 of 40 images right)", run.stdout)
        self.assertIn(f"{(labels[0] + 1) % 10},0.1,0.1", run.stdout)

    def test_transform_fails_when_the_job_fails_and_shows_why(self):
        reason = "ClientError: See job logs for more information"
        with StubAws(OUTPUTS, [("InProgress", None), ("Failed", None)],
                     {"FailureReason": reason}, training_jobs=finished()) as stub:
            run = self.make(stub, "transform", JOB_NAME=JOB, TRANSFORM_JOB_NAME="smtrain-t-2",
                            TRANSFORM_IMAGES="5")
        self.assertNotEqual(run.returncode, 0)
        self.assertIn(f"FailureReason: {reason}", run.stdout)
        self.assertNotIn("GetObject", stub.operations())

    def test_undeploy_deletes_the_endpoint_then_its_config_and_model(self):
        with StubAws(OUTPUTS, [], {}) as stub:
            self.deployed(stub)
            run = self.make(stub, "undeploy")
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual((stub.endpoints, stub.endpoint_configs, stub.models), ({}, {}, {}))
        ops = [op for op in stub.operations() if op.startswith("Delete")]
        self.assertEqual(ops, ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"])
        self.assertEqual(stub.requests("DeleteModel"), [{"ModelName": JOB}])
        self.assertIn(f"deleted model {JOB}", run.stdout)

    def test_undeploy_again_finds_nothing_and_succeeds(self):
        with StubAws(OUTPUTS, [], {}) as stub:
            run = self.make(stub, "undeploy")
            named = self.make(stub, "undeploy", JOB_NAME=JOB)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("no endpoint smtrain", run.stdout)
        self.assertEqual(named.returncode, 0, named.stdout + named.stderr)
        self.assertIn(f"no endpoint config {JOB}", named.stdout)
        self.assertIn(f"no model {JOB}", named.stdout)

    def test_undeploy_with_a_job_name_deletes_what_a_transform_left(self):
        with StubAws(OUTPUTS, [], {}) as stub:
            stub.models[JOB] = self.expected_request("model", JOB_NAME=JOB)
            run = self.make(stub, "undeploy", JOB_NAME=JOB)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertEqual(stub.models, {})
        self.assertIn(f"deleted model {JOB}", run.stdout)


if __name__ == "__main__":
    unittest.main()
