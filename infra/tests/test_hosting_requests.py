"""The CreateModel, CreateEndpointConfig, CreateEndpoint and CreateTransformJob requests, as
`make deploy` and `make transform` render them, against botocore's SageMaker model and what
`train serve` and the training job's layout need; and the data infra/hosting_data.py makes."""

import json
import subprocess
import sys
import tempfile
import unittest
import zlib
from pathlib import Path

from common import INFRA, ROOT, rendered, template, write_idx  # first: puts infra/ on the path

import hosting_data
import render
import sagemaker_model

MODEL, CONFIG, ENDPOINT, TRANSFORM = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                      "CreateTransformJob")
JOB = "smtrain-20260101-120000"
# What `train serve` reads from its environment besides SageMaker's own variables.
SERVER_SETTINGS = {"RUST_LOG", "SMTRAIN_SERVE_WORKERS", "SMTRAIN_SERVE_QUEUE",
                   "SMTRAIN_SERVE_SUMMARY_SECONDS"}
# Set by SageMaker itself: on an endpoint the port, in a transform job the job's settings (from
# the request, or from the container's /execution-parameters).
SAGEMAKER_SETS = {"SAGEMAKER_BIND_TO_PORT", "SAGEMAKER_SAFE_PORT_RANGE", "SAGEMAKER_BATCH",
                  "SAGEMAKER_MAX_PAYLOAD_IN_MB", "SAGEMAKER_BATCH_STRATEGY",
                  "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"}
# InvokeEndpoint's limit, and `train serve`'s default SAGEMAKER_MAX_PAYLOAD_IN_MB.
MAX_PAYLOAD_MB = 6


def variants():
    """Every shape of hosting request the make targets can send."""
    yield "model cpu", MODEL, rendered("model", JOB_NAME=JOB)
    yield "model cuda", MODEL, rendered("model", JOB_NAME=JOB, IMAGE_TAG="cuda-0123456789ab")
    yield "endpoint config cpu", CONFIG, rendered("endpoint-config", JOB_NAME=JOB)
    yield "endpoint config cuda", CONFIG, rendered("endpoint-config", JOB_NAME=JOB,
                                                   IMAGE_TAG="cuda")
    yield "endpoint", ENDPOINT, rendered("endpoint", JOB_NAME=JOB)
    yield "endpoint, named", ENDPOINT, rendered("endpoint", JOB_NAME=JOB,
                                                ENDPOINT_NAME="smtrain-canary")
    yield "transform cpu", TRANSFORM, rendered("transform", JOB_NAME=JOB)
    yield "transform cuda", TRANSFORM, rendered("transform", JOB_NAME=JOB, IMAGE_TAG="cuda")


class AgainstTheApiModel(unittest.TestCase):
    def test_every_hosting_request_validates_against_botocores_sagemaker_model(self):
        for label, operation, request in variants():
            with self.subTest(label):
                self.assertEqual(sagemaker_model.errors(operation, request), [])

    def test_the_validator_rejects_each_kind_of_mistake(self):
        def broken(kind, operation, change):
            request = rendered(kind, JOB_NAME=JOB)
            change(request)
            return sagemaker_model.errors(operation, request)

        mistakes = {
            "not a URL": ("model", MODEL, lambda r: r["PrimaryContainer"].update(
                ModelDataUrl="bucket/model.tar.gz")),
            "bad variable name": ("model", MODEL, lambda r: r["PrimaryContainer"].update(
                Environment={"RUST-LOG": "info"})),
            "a number for a string": ("model", MODEL, lambda r: r["PrimaryContainer"].update(
                Environment={"SMTRAIN_SERVE_WORKERS": 2})),
            "unknown hosting instance": ("endpoint-config", CONFIG,
                                         lambda r: r["ProductionVariants"][0].update(
                                             InstanceType="ml.m5.huge")),
            "no instance": ("endpoint-config", CONFIG,
                            lambda r: r["ProductionVariants"][0].update(InitialInstanceCount=0)),
            "name with underscore": ("endpoint", ENDPOINT,
                                     lambda r: r.update(EndpointName="smtrain_1")),
            "bad split type": ("transform", TRANSFORM,
                               lambda r: r["TransformInput"].update(SplitType="line")),
            "bad batch strategy": ("transform", TRANSFORM,
                                   lambda r: r.update(BatchStrategy="MULTI_RECORD")),
            "string payload limit": ("transform", TRANSFORM,
                                     lambda r: r.update(MaxPayloadInMB="6")),
            "training-only member": ("transform", TRANSFORM,
                                     lambda r: r["TransformResources"].update(VolumeSizeInGB=10)),
        }
        for label, (kind, operation, change) in mistakes.items():
            with self.subTest(label):
                self.assertNotEqual(broken(kind, operation, change), [])


class WhatHostingNeeds(unittest.TestCase):
    def test_the_model_is_the_training_jobs_model_tar_gz_in_its_image(self):
        for tag in ("cpu", "cuda-0123456789ab"):
            with self.subTest(tag):
                training = rendered("training", JOB_NAME=JOB, IMAGE_TAG=tag)
                model = rendered("model", JOB_NAME=JOB, IMAGE_TAG=tag)
                container = model["PrimaryContainer"]
                # SageMaker writes a job's model to S3OutputPath/JOB/output/model.tar.gz.
                self.assertEqual(container["ModelDataUrl"],
                                 f"{training['OutputDataConfig']['S3OutputPath']}{JOB}"
                                 "/output/model.tar.gz")
                self.assertEqual(container["Image"],
                                 training["AlgorithmSpecification"]["TrainingImage"])
                self.assertEqual(container["Mode"], "SingleModel")
                self.assertEqual(model["ExecutionRoleArn"], training["RoleArn"])
                self.assertEqual(model["ModelName"], JOB)

    def test_the_container_gets_only_settings_the_server_reads(self):
        model = rendered("model", JOB_NAME=JOB)
        environments = [model["PrimaryContainer"].get("Environment", {}),
                        rendered("transform", JOB_NAME=JOB).get("Environment", {})]
        for env in environments:
            self.assertLessEqual(set(env), SERVER_SETTINGS)
            self.assertEqual(set(env) & SAGEMAKER_SETS, set())
            for key, value in env.items():
                self.assertIsInstance(value, str, key)
            # The service's limit on a container's environment, all entries together.
            self.assertLessEqual(sum(len(k) + len(v) for k, v in env.items()), 32 * 1024)

    def test_the_serving_container_needs_no_network(self):
        # `train serve` reads only /opt/ml/model, which SageMaker fills before the start.
        self.assertIs(rendered("model", JOB_NAME=JOB)["EnableNetworkIsolation"], True)

    def test_endpoint_config_and_endpoint_name_each_other(self):
        model = rendered("model", JOB_NAME=JOB)
        config = rendered("endpoint-config", JOB_NAME=JOB)
        endpoint = rendered("endpoint", JOB_NAME=JOB)
        (variant,) = config["ProductionVariants"]
        self.assertEqual(variant["ModelName"], model["ModelName"])
        self.assertEqual(variant["InitialInstanceCount"], 1)
        self.assertEqual(endpoint["EndpointConfigName"], config["EndpointConfigName"])
        self.assertEqual(endpoint["EndpointName"], "smtrain")
        self.assertEqual(rendered("transform", JOB_NAME=JOB)["ModelName"], model["ModelName"])

    def test_the_transform_splits_csv_by_line_and_joins_the_answers_by_line(self):
        job = rendered("transform", JOB_NAME=JOB, TRANSFORM_JOB_NAME="smtrain-transform-1")
        self.assertEqual(job["BatchStrategy"], "MultiRecord")
        self.assertLessEqual(job["MaxPayloadInMB"], MAX_PAYLOAD_MB)
        self.assertNotIn("MaxConcurrentTransforms", job,
                         "left to the container's /execution-parameters")
        inp, out = job["TransformInput"], job["TransformOutput"]
        self.assertEqual((inp["ContentType"], inp["SplitType"], inp["CompressionType"]),
                         ("text/csv", "Line", "None"))
        self.assertEqual((out["Accept"], out["AssembleWith"]), ("text/csv", "Line"))
        self.assertEqual(inp["DataSource"]["S3DataSource"]["S3DataType"], "S3Prefix")
        source = inp["DataSource"]["S3DataSource"]["S3Uri"]
        self.assertTrue(source.endswith("/transform/input/smtrain-transform-1/"), source)
        self.assertTrue(out["S3OutputPath"].endswith("/transform/output/smtrain-transform-1/"))
        self.assertEqual(job["TransformResources"]["InstanceCount"], 1)

    def test_instance_types_follow_the_variant_unless_given(self):
        def hosting(**kw):
            config = rendered("endpoint-config", JOB_NAME=JOB, **kw)
            job = rendered("transform", JOB_NAME=JOB, **kw)
            return (config["ProductionVariants"][0]["InstanceType"],
                    job["TransformResources"]["InstanceType"])

        self.assertEqual(hosting(), ("ml.m5.large", "ml.m5.xlarge"))
        self.assertEqual(hosting(IMAGE_TAG="cuda-abc"), ("ml.g4dn.xlarge", "ml.g4dn.xlarge"))
        self.assertEqual(hosting(ENDPOINT_INSTANCE_TYPE="ml.c5.large",
                                 TRANSFORM_INSTANCE_TYPE="ml.c5.2xlarge"),
                         ("ml.c5.large", "ml.c5.2xlarge"))

    def test_the_templates_use_known_variables_only(self):
        known = {"MODEL_NAME", "ROLE_ARN", "IMAGE_URI", "BUCKET", "JOB_NAME",
                 "ENDPOINT_INSTANCE_TYPE", "ENDPOINT_NAME", "TRANSFORM_JOB_NAME",
                 "TRANSFORM_INSTANCE_TYPE"}
        for name in ("model.json", "endpoint-config.json", "endpoint.json",
                     "transform-job.json"):
            with self.subTest(name):
                self.assertLessEqual(render.variables_in(template(name)), known)

    def test_deploy_and_transform_need_a_training_job_name(self):
        for command in ("deploy", "transform"):
            with self.subTest(command):
                env = {"PATH": "/usr/bin:/bin", "AWS": "false", "PYTHON": sys.executable}
                out = subprocess.run([str(INFRA / "sagemaker.sh"), command], cwd=ROOT, env=env,
                                     capture_output=True, text=True)
                self.assertNotEqual(out.returncode, 0)
                self.assertIn(f"make {command} JOB_NAME=", out.stderr)


class HostingData(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="smtrain-hosting-"))
        self.addCleanup(subprocess.run, ["rm", "-rf", str(self.tmp)])
        # Three 4x3 images: pixel k of image i is 10 * i + k.
        self.images = self.tmp / "images.gz"
        write_idx(self.images, (3, 4, 3), [10 * i + k for i in range(3) for k in range(12)])
        self.labels = self.tmp / "labels.gz"
        write_idx(self.labels, (3,), [9, 0, 4])

    def run_it(self, *args, stdin=""):
        return subprocess.run([sys.executable, str(INFRA / "hosting_data.py"), *map(str, args)],
                              input=stdin.encode(), capture_output=True)

    def test_csv_has_one_image_per_line(self):
        out = self.run_it("csv", self.images, "--first", 1, "--count", 2)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.decode().splitlines(),
                         [",".join(str(10 * i + k) for k in range(12)) for i in (1, 2)])

    def test_png_holds_the_images_pixels(self):
        data = self.run_it("png", self.images, "--first", 2).stdout
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        # IHDR: width 3, height 4, 8-bit grayscale.
        self.assertEqual(data[16:26], (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"\x08\0")
        idat = data.index(b"IDAT")
        size = int.from_bytes(data[idat - 4:idat], "big")
        raw = zlib.decompress(data[idat + 4:idat + 4 + size])
        self.assertEqual(raw, b"".join(b"\0" + bytes(20 + 3 * r + c for c in range(3))
                                       for r in range(4)))

    def test_label_and_score(self):
        self.assertEqual(self.run_it("label", self.labels, "--first", 0).stdout, b"9 Ankle boot\n")
        answers = "9,0.9,0.1\n1,0.5,0.5\n4,0.2,0.8\n"
        out = self.run_it("score", self.labels, stdin=answers)
        self.assertEqual(out.stdout, b"accuracy: 0.6667 (2 of 3 images right)\n")

    def test_bad_input_fails_with_a_reason(self):
        cases = [
            (("csv", self.images, "--first", 2, "--count", 2), "", b"images 2 to 3"),
            (("csv", self.labels), "", b"not an image file"),
            (("score", self.labels), "9,1\n0,1\n4,1\n4,1\n", b"only 3 labels"),
            (("score", self.labels), '{"class": 9}\n', b"does not start with a class"),
            (("score", self.labels), "", b"no answers"),
            (("label", self.labels, "--first", 3), "", b"hosting_data.py:"),
        ]
        for args, stdin, message in cases:
            with self.subTest(args[0], message=message):
                out = self.run_it(*args, stdin=stdin)
                self.assertEqual(out.returncode, 1)
                self.assertIn(message, out.stderr)

    def test_the_classes_are_the_trainers(self):
        # The labels printed beside an answer must mean what the model's class_names say.
        config = (ROOT / "src/config/mod.rs").read_text()
        for name in hosting_data.CLASS_NAMES:
            self.assertIn(json.dumps(name), config)


if __name__ == "__main__":
    unittest.main()
