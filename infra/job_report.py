#!/usr/bin/env python3
"""Prints how a finished SageMaker job went and exits 0 only when it completed.

    aws sagemaker describe-training-job ... --output json | job_report.py training
    aws sagemaker describe-hyper-parameter-tuning-job ... --output json | job_report.py tuning
    aws sagemaker describe-transform-job ... --output json | job_report.py transform
    aws sagemaker describe-endpoint ... --output json | job_report.py endpoint
    aws sagemaker describe-algorithm ... --output json | job_report.py algorithm

Training: status, FailureReason, final metrics, model location, billable time.
Tuning: status, FailureReason, job counts, the best job with its objective value and tuned
hyperparameters. A tuning job that "completed" without one successful training job fails too.
Transform: status, FailureReason, where the answers are, how long it ran. Endpoint: status,
FailureReason, each variant's instances; 0 only when InService. Algorithm: status, its image,
each failed validation or image scan with its reason; 0 only when Completed.
Under GitHub Actions the failure reason also becomes an error annotation and the report goes to
the step summary. Python standard library only.
"""

import json
import os
import sys


def training(job):
    lines = [f"training job {job.get('TrainingJobName')}: {job.get('TrainingJobStatus')}"
             f" ({job.get('SecondaryStatus')})"]
    ok = job.get("TrainingJobStatus") == "Completed"
    failure = job.get("FailureReason")
    if failure:
        lines.append(f"FailureReason: {failure}")
    metrics = job.get("FinalMetricDataList") or []
    if metrics:
        lines.append("final metrics:")
        width = max(len(m["MetricName"]) for m in metrics)
        lines += [f"  {m['MetricName']:<{width}}  {m['Value']:.6g}"
                  for m in sorted(metrics, key=lambda m: m["MetricName"])]
    model = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if model:
        lines.append(f"model: {model}")
    billable, total = job.get("BillableTimeInSeconds"), job.get("TrainingTimeInSeconds")
    if billable is not None:
        saved = f" (managed spot saved {100 * (1 - billable / total):.0f}%)" if total else ""
        lines.append(f"billable seconds: {billable}{saved}")
    return ok, failure, lines


def tuning(job):
    status = job.get("HyperParameterTuningJobStatus")
    lines = [f"tuning job {job.get('HyperParameterTuningJobName')}: {status}"]
    failure = job.get("FailureReason")
    if failure:
        lines.append(f"FailureReason: {failure}")
    counts = job.get("TrainingJobStatusCounters") or {}
    if counts:
        lines.append("training jobs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    best = job.get("BestTrainingJob")
    if best:
        objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
        lines.append(f"best training job: {best.get('TrainingJobName')}"
                     f" {objective.get('MetricName')}={objective.get('Value')}")
        for key, value in sorted((best.get("TunedHyperParameters") or {}).items()):
            lines.append(f"  {key}={value}")
    ok = status == "Completed" and counts.get("Completed", 0) > 0
    if status == "Completed" and not ok:
        failure = failure or "no training job of the tuning job completed"
        lines.append(failure)
    return ok, failure, lines


def transform(job):
    status = job.get("TransformJobStatus")
    lines = [f"transform job {job.get('TransformJobName')}: {status}"]
    failure = job.get("FailureReason")
    if failure:
        lines.append(f"FailureReason: {failure}")
    output = (job.get("TransformOutput") or {}).get("S3OutputPath")
    if output:
        lines.append(f"output: {output}")
    start, end = job.get("TransformStartTime"), job.get("TransformEndTime")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)):
        lines.append(f"ran {end - start:.0f} s")
    return status == "Completed", failure, lines


def endpoint(job):
    status = job.get("EndpointStatus")
    lines = [f"endpoint {job.get('EndpointName')}: {status}"
             f" (config {job.get('EndpointConfigName')})"]
    failure = job.get("FailureReason")
    if failure:
        lines.append(f"FailureReason: {failure}")
    for v in job.get("ProductionVariants") or []:
        lines.append(f"  variant {v.get('VariantName')}: {v.get('CurrentInstanceCount')}"
                     f" instance(s)")
    return status == "InService", failure, lines


def algorithm(spec):
    status = spec.get("AlgorithmStatus")
    image = (spec.get("TrainingSpecification") or {}).get("TrainingImage")
    lines = [f"algorithm {spec.get('AlgorithmName')}: {status} (image {image})"]
    details = spec.get("AlgorithmStatusDetails") or {}
    reasons = [f"{what} {d.get('Name')}: {d.get('Status')}: {d.get('FailureReason')}"
               for what, key in (("validation", "ValidationStatuses"),
                                 ("image scan", "ImageScanStatuses"))
               for d in details.get(key) or [] if d.get("Status") == "Failed"]
    lines += reasons
    return status == "Completed", "; ".join(reasons) or None, lines


KINDS = {"training": training, "tuning": tuning, "transform": transform, "endpoint": endpoint,
         "algorithm": algorithm}


def main(argv):
    if len(argv) != 2 or argv[1] not in KINDS:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    job = json.load(sys.stdin)
    ok, failure, lines = KINDS[argv[1]](job)
    print("\n".join(lines))
    if os.environ.get("GITHUB_ACTIONS") == "true":
        if not ok:
            reason = (failure or "the job did not complete").replace("%", "%25")
            reason = reason.replace("\r", "%0D").replace("\n", "%0A")
            what = argv[1] if argv[1] in ("endpoint", "algorithm") else f"{argv[1]} job"
            print(f"::error title=SageMaker {what} failed::{reason}")
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            with open(summary, "a") as f:
                f.write("```\n" + "\n".join(lines) + "\n```\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
