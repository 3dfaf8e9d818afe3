"""The CreateTrainingJob and CreateHyperParameterTuningJob requests, as `make submit` and
`make tune` render them, against botocore's SageMaker model and what this project needs."""

import copy
import json
import unittest

from common import INFRA, METRIC_DEFINITIONS, rendered, template  # first: puts infra/ on the path

import render
import sagemaker_model

TRAINING = "CreateTrainingJob"
RECIPE = INFRA / "recipe-hyperparameters.json"
TUNING = "CreateHyperParameterTuningJob"


def variants():
    """Every shape of request the make targets can send."""
    yield "training cpu", TRAINING, rendered("training")
    yield "training cuda", TRAINING, rendered("training", IMAGE_TAG="cuda")
    yield "training, the recipe", TRAINING, rendered("training", HYPERPARAMETERS=str(RECIPE))
    yield "tuning", TUNING, rendered("tuning")
    yield "tuning, warm start", TUNING, rendered("tuning", WARM_START_PARENT="smtrain-earlier")
    yield "tuning cuda", TUNING, rendered("tuning", IMAGE_TAG="cuda-0123456789ab")


def job_definitions():
    """(request, the part with the job's settings) for the training and the tuning request."""
    training = rendered("training")
    tuning = rendered("tuning")
    return [(training, training), (tuning, tuning["TrainingJobDefinition"])]


class AgainstTheApiModel(unittest.TestCase):
    def test_every_request_validates_against_botocores_sagemaker_model(self):
        for label, operation, request in variants():
            with self.subTest(label):
                self.assertEqual(sagemaker_model.errors(operation, request), [])

    def test_the_validator_rejects_each_kind_of_mistake(self):
        # Each mistake on its own, in the real request: the check above is only worth something
        # if it catches these.
        def broken(change):
            request = rendered("training")
            change(request)
            return sagemaker_model.errors(TRAINING, request)

        mistakes = {
            "misspelled member": lambda r: r["StoppingCondition"].update(
                MaxRunTimeInSeconds=r["StoppingCondition"].pop("MaxRuntimeInSeconds")),
            "missing required member": lambda r: r.pop("RoleArn"),
            "string for an integer": lambda r: r["ResourceConfig"].update(InstanceCount="1"),
            "integer for a string": lambda r: r["HyperParameters"].update(epochs=5),
            "unknown instance type": lambda r: r["ResourceConfig"].update(
                InstanceType="ml.m5.huge"),
            "bad enum": lambda r: r["AlgorithmSpecification"].update(TrainingInputMode="file"),
            "name too long": lambda r: r.update(TrainingJobName="j" * 64),
            "name with underscore": lambda r: r.update(TrainingJobName="smtrain_1"),
            "not an S3 URI": lambda r: r["OutputDataConfig"].update(S3OutputPath="bucket/out"),
            "regex too long": lambda r: r["AlgorithmSpecification"]["MetricDefinitions"].append(
                {"Name": "x", "Regex": "x" * 501}),
            "runtime below 1 s": lambda r: r["StoppingCondition"].update(MaxRuntimeInSeconds=0),
        }
        for label, change in mistakes.items():
            with self.subTest(label):
                self.assertNotEqual(broken(change), [])

    def test_tuning_job_names_fit_the_32_character_limit(self):
        name = rendered("tuning")["HyperParameterTuningJobName"]
        self.assertLessEqual(len(name), 32, name)
        long_name = rendered("tuning", TUNING_JOB_NAME="smtrain-tuning-" + "9" * 20)
        self.assertNotEqual(sagemaker_model.errors(TUNING, long_name), [])


class WhatTheJobsNeed(unittest.TestCase):
    def test_metric_definitions_are_the_one_file(self):
        for name, path in [("training-job.json", ["AlgorithmSpecification"]),
                           ("tuning-job.json", ["TrainingJobDefinition",
                                                "AlgorithmSpecification"])]:
            raw, sent = template(name), rendered(name.split("-")[0])
            for key in path:
                raw, sent = raw[key], sent[key]
            with self.subTest(name):
                self.assertEqual(raw["MetricDefinitions"], "@file:metric-definitions.json")
                self.assertEqual(sent["MetricDefinitions"], METRIC_DEFINITIONS)

    def test_metric_names_are_unique_and_each_regex_has_one_group(self):
        import re
        names = [d["Name"] for d in METRIC_DEFINITIONS]
        self.assertEqual(len(names), len(set(names)))
        for d in METRIC_DEFINITIONS:
            with self.subTest(d["Name"]):
                self.assertEqual(re.compile(d["Regex"]).groups, 1)

    def test_the_objective_is_validation_accuracy_maximised_and_is_a_defined_metric(self):
        request = rendered("tuning")
        objective = request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        self.assertEqual(objective, {"Type": "Maximize", "MetricName": "validation:accuracy"})
        defined = [d["Name"] for d in
                   request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]]
        self.assertIn(objective["MetricName"], defined)

    def test_spot_training_with_a_wait_limit_and_checkpoints(self):
        for request, job in job_definitions():
            with self.subTest(next(iter(request))):
                self.assertIs(job["EnableManagedSpotTraining"], True)
                stop = job["StoppingCondition"]
                self.assertGreaterEqual(stop["MaxWaitTimeInSeconds"], stop["MaxRuntimeInSeconds"])
                checkpoint = job["CheckpointConfig"]
                self.assertEqual(checkpoint["LocalPath"], "/opt/ml/checkpoints")
                # Without the slash, S3 sync would also pull in every job whose name starts
                # with this one's (smtrain-1 and smtrain-10).
                self.assertTrue(checkpoint["S3Uri"].endswith("/"), checkpoint["S3Uri"])

    def test_each_training_job_checkpoints_under_its_own_name(self):
        request = rendered("training", JOB_NAME="smtrain-one")
        self.assertTrue(request["CheckpointConfig"]["S3Uri"].endswith("/smtrain-one/"))

    def test_channels_are_the_ones_the_trainer_reads(self):
        for request, job in job_definitions():
            with self.subTest(next(iter(request))):
                names = [c["ChannelName"] for c in job["InputDataConfig"]]
                self.assertEqual(names[0], "train")
                self.assertLessEqual(set(names), {"train", "validation", "test"})
                for channel in job["InputDataConfig"]:
                    self.assertEqual(channel["InputMode"], "File")
                    uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
                    self.assertTrue(uri.endswith(f"/{channel['ChannelName']}/"), uri)

    def test_the_tuning_job_validates_on_held_out_training_data_not_the_test_set(self):
        job = rendered("tuning")["TrainingJobDefinition"]
        channels = [c["ChannelName"] for c in job["InputDataConfig"]]
        self.assertNotIn("validation", channels)
        self.assertGreater(float(job["StaticHyperParameters"]["validation_split"]), 0)

    def test_the_tuning_ranges_cover_the_recipes_hyperparameters(self):
        config = rendered("tuning")["HyperParameterTuningJobConfig"]
        ranges = config["ParameterRanges"]
        by_name = {r["Name"]: kind for kind, rs in ranges.items() for r in rs}
        self.assertEqual(by_name, {
            "learning_rate": "ContinuousParameterRanges",
            "dropout": "ContinuousParameterRanges",
            "label_smoothing": "ContinuousParameterRanges",
            "batch_size": "IntegerParameterRanges",
            "augment_shift": "IntegerParameterRanges",
            "hidden_units": "CategoricalParameterRanges",
            "augment_flip": "CategoricalParameterRanges",
        })
        for kind in ("ContinuousParameterRanges", "IntegerParameterRanges"):
            for r in ranges[kind]:
                with self.subTest(r["Name"]):
                    low, high = float(r["MinValue"]), float(r["MaxValue"])
                    self.assertLess(low, high)
                    if r["ScalingType"] == "Logarithmic":
                        self.assertGreater(low, 0, "a logarithmic range must stay above 0")
        static = rendered("tuning")["TrainingJobDefinition"]["StaticHyperParameters"]
        self.assertEqual(set(static) & set(by_name), set(), "a tuned key may not be static too")
        limits = config["ResourceLimits"]
        self.assertLessEqual(limits["MaxParallelTrainingJobs"], limits["MaxNumberOfTrainingJobs"])

    def test_submit_sends_a_hyperparameters_file_in_place_of_the_templates(self):
        # One job name for both: the default is the time.
        request = rendered("training", JOB_NAME="smtrain-recipe", HYPERPARAMETERS=str(RECIPE))
        self.assertEqual(request["HyperParameters"], json.loads(RECIPE.read_text()))
        plain = rendered("training", JOB_NAME="smtrain-recipe")
        del request["HyperParameters"], plain["HyperParameters"]
        self.assertEqual(request, plain)

    def test_a_hyperparameters_file_must_be_an_object_of_strings(self):
        import subprocess
        import tempfile
        from common import ROOT, script_env
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump({"epochs": 40}, f)
            f.flush()
            out = subprocess.run([str(INFRA / "sagemaker.sh"), "training-request"],
                                 cwd=ROOT, env=script_env(HYPERPARAMETERS=f.name),
                                 capture_output=True, text=True)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("not a JSON object of strings", out.stderr)

    def test_warm_start_is_there_only_when_asked_for(self):
        self.assertNotIn("WarmStartConfig", rendered("tuning"))
        warm = rendered("tuning", WARM_START_PARENT="smtrain-earlier")["WarmStartConfig"]
        self.assertEqual(warm["ParentHyperParameterTuningJobs"],
                         [{"HyperParameterTuningJobName": "smtrain-earlier"}])

    def test_hyperparameters_are_literal_strings_in_the_templates(self):
        # tests/it/infra.rs parses them from the committed templates with the trainer's own
        # parser; that only covers what is sent if rendering leaves them alone.
        raw = template("training-job.json")["HyperParameters"]
        self.assertEqual(rendered("training")["HyperParameters"], raw)
        raw = template("tuning-job.json")
        sent = rendered("tuning")
        self.assertEqual(sent["TrainingJobDefinition"]["StaticHyperParameters"],
                         raw["TrainingJobDefinition"]["StaticHyperParameters"])
        self.assertEqual(sent["HyperParameterTuningJobConfig"]["ParameterRanges"],
                         raw["HyperParameterTuningJobConfig"]["ParameterRanges"])

    def test_the_image_and_instance_follow_the_variant(self):
        cpu, cuda = rendered("training"), rendered("training", IMAGE_TAG="cuda-abc")
        self.assertTrue(cpu["AlgorithmSpecification"]["TrainingImage"].endswith("/smtrain:cpu"))
        self.assertTrue(cuda["AlgorithmSpecification"]["TrainingImage"].endswith(":cuda-abc"))
        self.assertTrue(cpu["ResourceConfig"]["InstanceType"].startswith("ml.m"))
        self.assertTrue(cuda["ResourceConfig"]["InstanceType"].startswith("ml.g"))
        chosen = rendered("training", INSTANCE_TYPE="ml.c5.2xlarge")
        self.assertEqual(chosen["ResourceConfig"]["InstanceType"], "ml.c5.2xlarge")


class Rendering(unittest.TestCase):
    def test_every_variable_must_be_given_and_used(self):
        tpl = {"A": "${X}-${Y}", "N": "${int:Z}"}
        self.assertEqual(render.render(tpl, {"X": "a", "Y": "b", "Z": "3"}),
                         {"A": "a-b", "N": 3})
        with self.assertRaisesRegex(render.RenderError, "missing values for: Y"):
            render.render(tpl, {"X": "a", "Z": "3"})
        with self.assertRaisesRegex(render.RenderError, "no variable named: W"):
            render.render(tpl, {"X": "a", "Y": "b", "Z": "3", "W": ""})
        with self.assertRaisesRegex(render.RenderError, "not a whole number"):
            render.render(tpl, {"X": "a", "Y": "b", "Z": "3x"})

    def test_optional_members_need_all_or_none_of_their_variables(self):
        tpl = {"?W": {"P": "${P}", "Q": "${Q}"}}
        self.assertEqual(render.render(tpl, {"P": "", "Q": ""}), {})
        self.assertEqual(render.render(tpl, {"P": "p", "Q": "q"}), {"W": {"P": "p", "Q": "q"}})
        with self.assertRaisesRegex(render.RenderError, "needs Q"):
            render.render(tpl, {"P": "p", "Q": ""})

    def test_file_includes_stay_inside_infra(self):
        self.assertEqual(render.render({"M": "@file:metric-definitions.json"}, {}),
                         {"M": METRIC_DEFINITIONS})
        with self.assertRaisesRegex(render.RenderError, "names no file"):
            render.render({"M": "@file:../Cargo.toml"}, {})

    def test_the_committed_templates_parse_and_use_known_variables(self):
        for name in ("training-job.json", "tuning-job.json"):
            with self.subTest(name):
                used = render.variables_in(json.loads((INFRA / name).read_text()))
                self.assertLessEqual(used, {
                    "JOB_NAME", "TUNING_JOB_NAME", "ROLE_ARN", "IMAGE_URI", "BUCKET",
                    "INSTANCE_TYPE", "MAX_JOBS", "MAX_PARALLEL_JOBS", "WARM_START_PARENT"})

    def test_rendering_does_not_change_the_template(self):
        tpl = template("tuning-job.json")
        before = copy.deepcopy(tpl)
        render.render(tpl, {"TUNING_JOB_NAME": "t", "ROLE_ARN": "r", "IMAGE_URI": "i",
                            "BUCKET": "b", "INSTANCE_TYPE": "x", "MAX_JOBS": "2",
                            "MAX_PARALLEL_JOBS": "1", "WARM_START_PARENT": ""})
        self.assertEqual(tpl, before)


if __name__ == "__main__":
    unittest.main()
