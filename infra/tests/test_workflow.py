"""The example GitHub Actions pipeline does what it says. (Its schema, and that every job has a
timeout, are checked by check-jsonschema in make test-infra.)"""

import re
import subprocess
import sys
import unittest

import yaml

from common import INFRA, rendered

WORKFLOW = yaml.safe_load((INFRA / "github-actions/sagemaker.yml").read_text())


def runs(job):
    return "\n".join(step.get("run", "") for step in WORKFLOW["jobs"][job]["steps"])


def uses(job):
    return [step["uses"].split("@")[0] for step in WORKFLOW["jobs"][job]["steps"]
            if "uses" in step]


class Pipeline(unittest.TestCase):
    def test_it_tests_then_builds_and_pushes_then_trains(self):
        jobs = WORKFLOW["jobs"]
        self.assertIn("bash .ci/run", runs("test"))
        self.assertEqual(jobs["image"]["needs"], "test")
        for variant in ("cpu", "cuda"):
            self.assertIn(f"--target {variant} -t smtrain:{variant}", runs("image"))
        self.assertIn("make push", runs("image"))
        self.assertEqual(jobs["train"]["needs"], "image")
        self.assertIn("make submit", runs("train"))

    def test_it_trains_the_image_this_run_pushed(self):
        env = WORKFLOW["jobs"]["train"]["env"]
        self.assertEqual(WORKFLOW["env"]["VERSION"], "${{ github.sha }}")
        self.assertTrue(env["IMAGE_TAG"].endswith("-${{ github.sha }}"), env["IMAGE_TAG"])

    def test_it_uses_oidc_not_stored_keys(self):
        self.assertEqual(WORKFLOW["permissions"]["id-token"], "write")
        for job in ("image", "train", "deploy"):
            (step,) = [s for s in WORKFLOW["jobs"][job]["steps"]
                       if s.get("uses", "").startswith("aws-actions/configure-aws-credentials")]
            self.assertIn("role-to-assume", step["with"])
            self.assertNotIn("aws-access-key-id", step["with"])

    def test_the_training_job_outlives_no_pipeline_timeout(self):
        # SageMaker must end the job (MaxWaitTimeInSeconds) before GitHub ends the pipeline,
        # or the job would run on with nobody watching.
        wait = rendered("training")["StoppingCondition"]["MaxWaitTimeInSeconds"]
        self.assertGreater(WORKFLOW["jobs"]["train"]["timeout-minutes"] * 60, wait)

    def test_a_model_below_the_threshold_fails_the_pipeline_before_it_is_registered(self):
        steps = WORKFLOW["jobs"]["train"]["steps"]
        (submit,) = [s for s in steps if s.get("run") == "make submit"]
        (gate,) = [s for s in steps if "describe-training-job" in s.get("run", "")]
        (register,) = [s for s in steps if s.get("run") == "make register"]
        self.assertLess(steps.index(submit), steps.index(gate))
        self.assertLess(steps.index(gate), steps.index(register))
        self.assertIn("vars.SMTRAIN_MIN_TEST_ACCURACY", gate["env"]["MIN_ACCURACY"])
        self.assertIn("MetricName=='test:accuracy'", gate["run"])
        # The comparison the step runs, on the values it may read.
        check = re.search(r"python3 -c '([^']*)'", gate["run"]).group(1)
        for accuracy, threshold, passes in [("0.87", "0.85", True), ("0.85", "0.85", True),
                                            ("0.84", "0.85", False), ("None", "0.85", False)]:
            run = subprocess.run([sys.executable, "-c", check, accuracy, threshold],
                                 capture_output=True)
            self.assertEqual(run.returncode == 0, passes, (accuracy, threshold))

    def test_it_registers_then_deploys_only_after_the_environments_approval(self):
        jobs = WORKFLOW["jobs"]
        (register,) = [s for s in jobs["train"]["steps"] if s.get("run") == "make register"]
        self.assertEqual(jobs["train"]["outputs"]["model-package-arn"],
                         f"${{{{ steps.{register['id']}.outputs.model-package-arn }}}}")
        deploy = jobs["deploy"]
        self.assertEqual(deploy["needs"], "train")
        self.assertEqual(deploy["environment"], "smtrain-production")
        self.assertEqual(deploy["env"]["PACKAGE"],
                         "${{ needs.train.outputs.model-package-arn }}")
        text = runs("deploy")
        self.assertLess(text.index('make approve VERSION="$PACKAGE"'), text.index("make deploy"))
        self.assertLess(text.index("make undeploy"), text.index("make deploy"))
        self.assertFalse(deploy["concurrency"]["cancel-in-progress"])

    def test_a_cancelled_pipeline_stops_its_job_and_the_request_is_kept(self):
        steps = WORKFLOW["jobs"]["train"]["steps"]
        (stop,) = [s for s in steps if s.get("if") == "cancelled()"]
        self.assertIn('stop-training-job --training-job-name "$JOB_NAME"', stop["run"])
        self.assertIn("actions/upload-artifact", uses("train"))


if __name__ == "__main__":
    unittest.main()
