"""The example GitHub Actions pipeline does what it says. (Its schema, and that every job has a
timeout, are checked by check-jsonschema in make test-infra.)"""

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
        for job in ("image", "train"):
            (step,) = [s for s in WORKFLOW["jobs"][job]["steps"]
                       if s.get("uses", "").startswith("aws-actions/configure-aws-credentials")]
            self.assertIn("role-to-assume", step["with"])
            self.assertNotIn("aws-access-key-id", step["with"])

    def test_the_training_job_outlives_no_pipeline_timeout(self):
        # SageMaker must end the job (MaxWaitTimeInSeconds) before GitHub ends the pipeline,
        # or the job would run on with nobody watching.
        wait = rendered("training")["StoppingCondition"]["MaxWaitTimeInSeconds"]
        self.assertGreater(WORKFLOW["jobs"]["train"]["timeout-minutes"] * 60, wait)

    def test_deploying_is_asked_for_and_the_endpoint_is_always_deleted(self):
        deploy = WORKFLOW[True]["workflow_dispatch"]["inputs"]["deploy"]
        self.assertEqual((deploy["type"], deploy["default"]), ("boolean", False))
        steps = WORKFLOW["jobs"]["train"]["steps"]
        (up,) = [s for s in steps if "make deploy" in s.get("run", "")]
        (down,) = [s for s in steps if "make undeploy" in s.get("run", "")]
        self.assertEqual(up["if"], "inputs.deploy")
        self.assertIn("make invoke", up["run"])
        self.assertEqual(down["if"], "always() && inputs.deploy")
        self.assertLess(steps.index(up), steps.index(down))
        # Each run deploys to an endpoint of its own; deploy uses the job this run trained.
        env = WORKFLOW["jobs"]["train"]["env"]
        self.assertIn("${{ github.run_id }}", env["ENDPOINT_NAME"])
        self.assertIn("JOB_NAME", env)

    def test_a_cancelled_pipeline_stops_its_job_and_the_request_is_kept(self):
        steps = WORKFLOW["jobs"]["train"]["steps"]
        (stop,) = [s for s in steps if s.get("if") == "cancelled()"]
        self.assertIn('stop-training-job --training-job-name "$JOB_NAME"', stop["run"])
        self.assertIn("actions/upload-artifact", uses("train"))


if __name__ == "__main__":
    unittest.main()
