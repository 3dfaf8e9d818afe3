"""The MetricDefinitions the requests send, run over the real trainer's output.

The trainer (SMTRAIN_BIN, the release build) trains on the small real Fashion-MNIST fixture in a
temporary /opt/ml tree set up the way each request sets up its job: its channels and its
hyperparameters (two epochs instead of five, to be quick). SageMaker scans stdout and stderr
together and keeps the last value each regex captures; so does this test, and compares it with
the same number in the model's metrics.json.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
from pathlib import Path

from common import ROOT, rendered

FIXTURE = ROOT / "tests/fixtures/fmnist-small"

# Where each metric's true value is in metrics.json: the last epoch's entry, or the test entry.
TRUTH = {
    "train:loss": ("epoch", "train_loss"),
    "train:accuracy": ("epoch", "train_accuracy"),
    "validation:loss": ("epoch", "validation_loss"),
    "validation:accuracy": ("epoch", "validation_accuracy"),
    "test:loss": ("test", "loss"),
    "test:accuracy": ("test", "accuracy"),
    "epoch": ("epoch", "epoch"),
    "learning_rate": ("epoch", "learning_rate"),
    "epoch:seconds": ("epoch", "seconds"),
    "train:samples_per_second": ("epoch", "samples_per_second"),
}


def train_like(job, epochs="2", output_data=None):
    """Runs the trainer as `job` (a training job or a tuning job's definition) would, on the
    fixture. Returns (stdout + stderr lines, metrics.json); fills the dict `output_data`, when
    given, with the files of output/data (name → bytes)."""
    binary = os.environ.get("SMTRAIN_BIN")
    if not binary or not Path(binary).is_file():
        raise AssertionError(f"SMTRAIN_BIN={binary!r}: set it to the release train binary")
    hyperparameters = dict(job.get("HyperParameters") or job["StaticHyperParameters"])
    hyperparameters["epochs"] = epochs
    with tempfile.TemporaryDirectory(prefix="smtrain-infra-") as base:
        base = Path(base)
        config = base / "input/config"
        config.mkdir(parents=True)
        channels = {}
        for channel in job["InputDataConfig"]:
            name = channel["ChannelName"]
            # The fixture has a train and a test set; a validation channel would get the test set.
            shutil.copytree(FIXTURE / ("train" if name == "train" else "test"),
                            base / "input/data" / name)
            channels[name] = {"TrainingInputMode": channel["InputMode"],
                              "S3DistributionType": "FullyReplicated",
                              "RecordWrapperType": "None"}
        (config / "inputdataconfig.json").write_text(json.dumps(channels))
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        env = dict(os.environ, OMP_NUM_THREADS="1", RUST_LOG="info")
        env.pop("SAGEMAKER_BASE_DIR", None)
        run = subprocess.run([binary, "train", "--base-dir", str(base)], env=env,
                             capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            raise AssertionError(f"train failed ({run.returncode}):\n{run.stderr}")
        metrics = json.loads((base / "model/metrics.json").read_text())
        if output_data is not None:
            output_data.update({f.name: f.read_bytes()
                                for f in (base / "output/data").iterdir()})
    return run.stdout.splitlines(), run.stderr.splitlines(), metrics


def captured(regex, lines):
    """The last number a metric regex captures in the lines, as SageMaker keeps it."""
    values = [m.group(1) for m in map(re.compile(regex).search, lines) if m]
    return float(values[-1]) if values else None


def truth(metrics, name):
    where, key = TRUTH[name]
    entry = metrics["epochs"][-1] if where == "epoch" else metrics["test"]
    return entry.get(key) if entry else None


class MetricRegexesOnRealOutput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tuning = rendered("tuning")
        cls.training = rendered("training")
        # The tuning job's set-up emits every metric: validation from validation_split, test
        # from the test channel. Its definitions are the training job's (test_requests).
        cls.out, cls.err, cls.metrics = train_like(cls.tuning["TrainingJobDefinition"])

    def definitions(self, request):
        spec = request.get("TrainingJobDefinition", request)["AlgorithmSpecification"]
        return spec["MetricDefinitions"]

    def test_every_definition_captures_the_number_in_metrics_json(self):
        definitions = self.definitions(self.tuning)
        self.assertEqual({d["Name"] for d in definitions}, set(TRUTH),
                         "every definition has a true value to be checked against")
        lines = self.out + self.err
        for d in definitions:
            with self.subTest(d["Name"]):
                want = truth(self.metrics, d["Name"])
                self.assertIsNotNone(want, "metrics.json has no value for it")
                got = captured(d["Regex"], lines)
                self.assertIsNotNone(got, f"{d['Regex']} captured nothing")
                self.assertAlmostEqual(got, want, delta=1e-6 * max(1.0, abs(want)))

    def test_the_run_tells_the_metrics_apart(self):
        # Otherwise a regex that captured its neighbour's number would pass the test above.
        values = [truth(self.metrics, name) for name in TRUTH]
        self.assertEqual(len(set(values)), len(values), dict(zip(TRUTH, values)))
        self.assertEqual(len(self.metrics["epochs"]), 2)

    def test_the_tuning_objective_is_captured_every_epoch(self):
        config = self.tuning["HyperParameterTuningJobConfig"]
        name = config["HyperParameterTuningJobObjective"]["MetricName"]
        (regex,) = [d["Regex"] for d in self.definitions(self.tuning) if d["Name"] == name]
        per_epoch = [m.group(1) for m in map(re.compile(regex).search, self.out) if m]
        self.assertEqual(len(per_epoch), len(self.metrics["epochs"]),
                         "early stopping needs the objective at every epoch")

    def test_logs_on_stderr_never_match(self):
        # SageMaker reads stderr too; a log line must not look like a metric.
        for d in self.definitions(self.tuning):
            with self.subTest(d["Name"]):
                self.assertIsNone(captured(d["Regex"], self.err))

    def test_the_training_job_as_configured_trains_and_reports_test_metrics(self):
        out, err, metrics = train_like(self.training, epochs="1")
        by_name = {d["Name"]: d["Regex"] for d in self.definitions(self.training)}
        self.assertAlmostEqual(captured(by_name["test:accuracy"], out + err),
                               metrics["test"]["accuracy"], delta=1e-6)
        # No validation channel and no validation_split: no validation metrics, as configured.
        self.assertIsNone(captured(by_name["validation:accuracy"], out + err))


if __name__ == "__main__":
    unittest.main()
