"""The image as a SageMaker Algorithm: the CreateAlgorithm request `make algorithm` renders,
against botocore's SageMaker model and the service's limits that botocore does not know, and
the training and tuning requests that train through it. (tests/it/infra.rs generates the
specification's hyperparameters and content types from the trainer and runs its defaults.)"""

import copy
import json
import re
import unittest

from common import INFRA, METRIC_DEFINITIONS, ROOT, rendered, template

import regex
import sagemaker_model

CREATE = "CreateAlgorithm"
# Service limits that botocore's client-side validation leaves to the server (the API
# reference's CreateAlgorithm and HyperParameterSpecification pages).
NAME = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
CHANNEL_NAME = r"[A-Za-z0-9\.\-_]+"
DESCRIPTION = r"[\p{L}\p{M}\p{Z}\p{S}\p{N}\p{P}]*"
TYPES = ("Integer", "Continuous", "Categorical", "FreeText")
# CUDA 13, which the cuda image carries, runs on compute capability 7.5 and newer: T4 (g4dn),
# A10G (g5), L4 (g6), L40S (g6e); not K80 (p2) or V100 (p3).
GPU_FAMILIES = ("ml.g4dn.", "ml.g5.", "ml.g6.", "ml.g6e.")


def algorithm(**overrides):
    overrides.setdefault("VERSION", "0123456789ab")
    return rendered("algorithm", **overrides)


def limit_errors(request):
    """What the service would refuse in a CreateAlgorithm request that botocore accepts."""
    errors = []

    def text(where, value, most):
        if len(value) > most:
            errors.append(f"{where}: {len(value)} characters, at most {most}")
        if not regex.fullmatch(DESCRIPTION, value):
            errors.append(f"{where}: a newline, tab or other control character")

    if not re.fullmatch(NAME, request["AlgorithmName"]):
        errors.append(f"AlgorithmName {request['AlgorithmName']!r}: not {NAME}")
    text("AlgorithmDescription", request.get("AlgorithmDescription", ""), 1024)
    spec = request["TrainingSpecification"]
    hps = spec.get("SupportedHyperParameters", [])
    if len(hps) > 100:
        errors.append(f"{len(hps)} hyperparameters, at most 100")
    names = [h["Name"] for h in hps]
    if len(set(names)) != len(names):
        errors.append("a hyperparameter is listed twice")
    for h in hps:
        where = f"hyperparameter {h['Name']}"
        text(f"{where} Description", h.get("Description", ""), 1024)
        if len(h.get("DefaultValue", "")) > 2500:
            errors.append(f"{where}: default longer than 2500 characters")
        values = (h.get("Range", {}).get("CategoricalParameterRangeSpecification") or {}) \
            .get("Values")
        if values is not None and not 1 <= len(values) <= 30:
            errors.append(f"{where}: {len(values)} categorical values, 1 to 30 allowed")
    for c in spec["TrainingChannels"]:
        if not re.fullmatch(CHANNEL_NAME, c["Name"]) or len(c["Name"]) > 64:
            errors.append(f"channel name {c['Name']!r}: not {CHANNEL_NAME} of at most 64")
        text(f"channel {c['Name']} Description", c.get("Description", ""), 1024)
    return errors


def contract_table():
    """docs/contract.md's generated table of hyperparameters: key → its description."""
    doc = (ROOT / "docs/contract.md").read_text()
    table = doc[doc.index("<!-- generated from KEYS"):doc.index("<!-- end of generated table")]
    rows = {}
    for line in table.splitlines():
        m = re.fullmatch(r"\| `([a-z0-9_]+)` \| (.*) \|", line)
        if m:
            rows[m.group(1)] = m.group(2).replace("\\|", "|")
    return rows


class TheRequest(unittest.TestCase):
    def test_it_validates_against_botocore_and_the_service_limits(self):
        for label, request in [("cuda of this commit", algorithm()),
                               ("a given tag", algorithm(IMAGE_TAG="cpu-0123456789ab")),
                               ("a given name", algorithm(ALGORITHM="smtrain-console"))]:
            with self.subTest(label):
                self.assertEqual(sagemaker_model.errors(CREATE, request), [])
                self.assertEqual(limit_errors(request), [])

    def test_the_limit_checks_reject_each_kind_of_mistake(self):
        def broken(change):
            request = algorithm()
            change(request)
            return limit_errors(request)

        hps = lambda r: r["TrainingSpecification"]["SupportedHyperParameters"]  # noqa: E731
        categorical = lambda r: next(  # noqa: E731
            h for h in hps(r) if h["Type"] == "Categorical")["Range"][
                "CategoricalParameterRangeSpecification"]
        mistakes = {
            "newline in a description": lambda r: hps(r)[0].update(Description="a\nb"),
            "tab in a description": lambda r: hps(r)[0].update(Description="a\tb"),
            "description too long": lambda r: hps(r)[0].update(Description="x" * 1025),
            "101 hyperparameters": lambda r: hps(r).extend(
                dict(hps(r)[0], Name=f"k{i}") for i in range(101 - len(hps(r)))),
            "a key twice": lambda r: hps(r).append(hps(r)[0]),
            "31 categorical values": lambda r: categorical(r).update(
                Values=[str(i) for i in range(31)]),
            "no categorical value": lambda r: categorical(r).update(Values=[]),
            "default too long": lambda r: hps(r)[0].update(DefaultValue="1" * 2501),
            "underscore in the name": lambda r: r.update(AlgorithmName="smtrain_cuda"),
            "name too long": lambda r: r.update(AlgorithmName="a" * 64),
            "space in a channel name": lambda r: r["TrainingSpecification"][
                "TrainingChannels"][0].update(Name="train data"),
        }
        for label, change in mistakes.items():
            with self.subTest(label):
                self.assertNotEqual(broken(change), [])

    def test_botocore_rejects_what_it_knows(self):
        request = algorithm()
        request["TrainingSpecification"]["SupportedTrainingInstanceTypes"].append("ml.m5.huge")
        self.assertNotEqual(sagemaker_model.errors(CREATE, request), [])
        request = algorithm()
        request["TrainingSpecification"]["SupportedHyperParameters"][0]["Type"] = "Float"
        self.assertNotEqual(sagemaker_model.errors(CREATE, request), [])

    def test_the_name_and_image_follow_the_tag(self):
        request = algorithm()
        self.assertEqual(request["AlgorithmName"], "smtrain-cuda-0123456789ab")
        image = request["TrainingSpecification"]["TrainingImage"]
        self.assertTrue(image.endswith("/smtrain:cuda-0123456789ab"), image)
        given = algorithm(IMAGE_TAG="cpu-abc", ALGORITHM="smtrain-mine")
        self.assertEqual(given["AlgorithmName"], "smtrain-mine")
        self.assertTrue(given["TrainingSpecification"]["TrainingImage"].endswith(":cpu-abc"))

    def test_a_name_the_service_refuses_fails_before_any_call(self):
        import subprocess
        from common import script_env
        run = subprocess.run([str(INFRA / "sagemaker.sh"), "algorithm-request"], cwd=ROOT,
                             env=script_env(ALGORITHM="smtrain_cuda"), capture_output=True,
                             text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("algorithm name smtrain_cuda", run.stderr)


class TheSpecification(unittest.TestCase):
    def setUp(self):
        self.request = algorithm()
        self.spec = self.request["TrainingSpecification"]

    def test_the_hyperparameters_are_the_key_table(self):
        hps = self.spec["SupportedHyperParameters"]
        self.assertEqual(hps, template("algorithm-hyperparameters.json"))
        # The same keys, in the same order, with the same descriptions as docs/contract.md's
        # table, which is generated from the key table too.
        table = contract_table()
        self.assertEqual([h["Name"] for h in hps], list(table))
        for h in hps:
            with self.subTest(h["Name"]):
                self.assertEqual(h["Description"], table[h["Name"]])
                self.assertIn(h["Type"], TYPES)
                kind = {"Integer": "IntegerParameterRangeSpecification",
                        "Continuous": "ContinuousParameterRangeSpecification",
                        "Categorical": "CategoricalParameterRangeSpecification"}.get(h["Type"])
                self.assertEqual(list(h.get("Range", {})), [kind] if kind else [])
                self.assertIs(h["IsRequired"], False)
                if "DefaultValue" in h:
                    self.assertIn(f"(default {h['DefaultValue']})", h["Description"])
                if kind and h["Type"] != "Categorical":
                    lo, hi = (float(h["Range"][kind][e]) for e in ("MinValue", "MaxValue"))
                    self.assertLess(lo, hi)
                    if "DefaultValue" in h:
                        self.assertTrue(lo <= float(h["DefaultValue"]) <= hi)
                if h["Type"] == "Categorical" and "DefaultValue" in h:
                    self.assertIn(h["DefaultValue"], h["Range"][kind]["Values"])

    def test_what_a_console_user_tunes(self):
        tunable = {h["Name"] for h in self.spec["SupportedHyperParameters"] if h["IsTunable"]}
        for key in ("learning_rate", "batch_size", "dropout", "optimizer", "hidden_units",
                    "epochs", "weight_decay"):
            self.assertIn(key, tunable)
        for key in ("seed", "device", "threads", "checkpoint_keep", "class_names"):
            self.assertNotIn(key, tunable)
        # What the tuning template searches, the algorithm lets a tuning job search.
        ranges = rendered("tuning")["HyperParameterTuningJobConfig"]["ParameterRanges"]
        searched = {r["Name"] for rs in ranges.values() for r in rs}
        self.assertLessEqual(searched, tunable)

    def test_the_channels_and_their_formats(self):
        channels = {c["Name"]: c for c in self.spec["TrainingChannels"]}
        self.assertEqual(list(channels), ["train", "validation", "test"])
        self.assertEqual([c["IsRequired"] for c in channels.values()], [True, False, False])
        types = template("algorithm-content-types.json")
        for key in ("text/csv", "application/x-parquet", "application/x-npy",
                    "application/x-npz", "application/x-image", "application/x-idx"):
            self.assertIn(key, types)
        for c in channels.values():
            with self.subTest(c["Name"]):
                self.assertEqual(c["SupportedContentTypes"], types)
                self.assertEqual(c["SupportedInputModes"], ["File", "FastFile"])
                self.assertEqual(c["SupportedCompressionTypes"], ["None", "Gzip"])

    def test_metrics_and_objectives(self):
        self.assertEqual(self.spec["MetricDefinitions"], METRIC_DEFINITIONS)
        names = {d["Name"] for d in METRIC_DEFINITIONS}
        objectives = {(o["MetricName"], o["Type"])
                      for o in self.spec["SupportedTuningJobObjectiveMetrics"]}
        self.assertEqual(objectives, {("validation:accuracy", "Maximize"),
                                      ("validation:loss", "Minimize"),
                                      ("test:accuracy", "Maximize"),
                                      ("test:loss", "Minimize")})
        self.assertLessEqual({m for m, _ in objectives}, names)
        tuning = rendered("tuning")["HyperParameterTuningJobConfig"]
        objective = tuning["HyperParameterTuningJobObjective"]
        self.assertIn((objective["MetricName"], objective["Type"]), objectives)

    def test_instances_cpu_and_gpu_the_image_runs_on(self):
        self.assertIs(self.spec["SupportsDistributedTraining"], True)
        inference = self.request["InferenceSpecification"]
        for label, types in [
                ("training", self.spec["SupportedTrainingInstanceTypes"]),
                ("real-time", inference["SupportedRealtimeInferenceInstanceTypes"]),
                ("transform", inference["SupportedTransformInstanceTypes"])]:
            with self.subTest(label):
                gpu = [t for t in types if t.startswith("ml.g") or t.startswith("ml.p")]
                self.assertTrue(gpu and len(gpu) < len(types), types)
                for t in gpu:
                    self.assertTrue(t.startswith(GPU_FAMILIES), t)
        # The defaults of submit, deploy and transform are among them.
        self.assertIn(rendered("training")["ResourceConfig"]["InstanceType"],
                      self.spec["SupportedTrainingInstanceTypes"])
        self.assertIn(rendered("training", IMAGE_TAG="cuda")["ResourceConfig"]["InstanceType"],
                      self.spec["SupportedTrainingInstanceTypes"])
        config = rendered("endpoint-config", JOB_NAME="smtrain-1")
        self.assertIn(config["ProductionVariants"][0]["InstanceType"],
                      inference["SupportedRealtimeInferenceInstanceTypes"])

    def test_the_image_serves_what_it_trains(self):
        inference = self.request["InferenceSpecification"]
        (container,) = inference["Containers"]
        self.assertEqual(container, {"Image": self.spec["TrainingImage"]})
        # The registry's versions offer the same (tests/it/infra.rs checks the server reads
        # and writes each type).
        package = template("model-package.json")["InferenceSpecification"]
        for key in ("SupportedContentTypes", "SupportedResponseMIMETypes",
                    "SupportedRealtimeInferenceInstanceTypes", "SupportedTransformInstanceTypes"):
            self.assertEqual(inference[key], package[key], key)


class TrainingThroughTheAlgorithm(unittest.TestCase):
    def test_submit_and_tune_name_the_algorithm_instead_of_the_image(self):
        for kind, operation in [("training", "CreateTrainingJob"),
                                ("tuning", "CreateHyperParameterTuningJob")]:
            with self.subTest(kind):
                names = {"JOB_NAME": "smtrain-1", "TUNING_JOB_NAME": "smtrain-t1"}
                by_image = rendered(kind, **names)
                through = rendered(kind, ALGORITHM="smtrain-cuda-0123456789ab", **names)
                self.assertEqual(sagemaker_model.errors(operation, through), [])
                definition = through.get("TrainingJobDefinition", through)
                spec = definition["AlgorithmSpecification"]
                self.assertEqual(spec["AlgorithmName"], "smtrain-cuda-0123456789ab")
                # The algorithm's metric definitions apply; the image is the algorithm's.
                self.assertNotIn("TrainingImage", spec)
                self.assertNotIn("MetricDefinitions", spec)
                # Nothing else changes.
                expected = copy.deepcopy(by_image)
                expected_spec = expected.get("TrainingJobDefinition", expected)[
                    "AlgorithmSpecification"]
                del expected_spec["TrainingImage"], expected_spec["MetricDefinitions"]
                expected_spec["AlgorithmName"] = "smtrain-cuda-0123456789ab"
                self.assertEqual(json.dumps(through, sort_keys=True),
                                 json.dumps(expected, sort_keys=True))


if __name__ == "__main__":
    unittest.main()
