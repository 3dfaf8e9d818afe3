"""The CloudFormation stack's policies, resolved with made-up account values, against what the
requests make SageMaker do and what the issue allows: exactly the access a job needs, no more.

cfn-lint (run by make test-infra) checks the template's syntax, types and policy grammar; this
checks its meaning, with a small evaluator of Allow statements (actions and resources with IAM
wildcards, and the StringEquals/StringLike conditions the template uses).
"""

import fnmatch
import json
import re
import unittest

from cfnlint.decode import cfn_yaml

from common import ACCOUNT, BUCKET, INFRA, REGION, rendered

STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/smtrain/0f0e0d0c"
REPOSITORY = "smtrain"
ATTRIBUTES = {
    "Bucket.Arn": f"arn:aws:s3:::{BUCKET}",
    "Repository.Arn": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{REPOSITORY}",
    "SageMakerExecutionRole.Arn": f"arn:aws:iam::{ACCOUNT}:role/smtrain-SageMakerExecutionRole",
}


def load_template():
    return cfn_yaml.load(str(INFRA / "cloudformation.yaml"))


TEMPLATE = load_template()
PARAMETERS = {name: str(p.get("Default")) for name, p in TEMPLATE["Parameters"].items()}
REFS = dict(PARAMETERS, **{
    "AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws",
    "AWS::StackId": STACK_ID, "Bucket": BUCKET, "Repository": REPOSITORY,
    "OperatorPolicy": f"arn:aws:iam::{ACCOUNT}:policy/smtrain-OperatorPolicy",
})

# Evaluated with the CI role wanted and the account's OIDC provider already there.
CONDITIONS = {"WantsCiRole": True, "WantsOidcProvider": False}


def resolve(node):
    """The template node with Ref, Fn::GetAtt and Fn::Sub replaced by made-up values."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return REFS[node["Ref"]]
        if set(node) == {"Fn::If"}:
            condition, then, otherwise = node["Fn::If"]
            return resolve(then if CONDITIONS[condition] else otherwise)
        if set(node) == {"Fn::GetAtt"}:
            return ATTRIBUTES[".".join(node["Fn::GetAtt"])]
        if set(node) == {"Fn::Sub"}:
            def value(m):
                name = m.group(1)
                return ATTRIBUTES[name] if "." in name else REFS[name]
            return re.sub(r"\$\{([A-Za-z0-9:.]+)\}", value, node["Fn::Sub"])
        return {k: resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v) for v in node]
    return node


def listed(x):
    return x if isinstance(x, list) else [x]


def wildcard(pattern, value):
    # IAM: * any run of characters, ? one character, case-sensitive for resources.
    return fnmatch.fnmatchcase(value, pattern)


def statements(policy):
    return listed(resolve(policy)["Statement"])


def allowed(policy, action, resource, context=None):
    """Whether an Allow statement grants the action on the resource (there are no Denys in
    identity policies here; the test below checks that)."""
    context = context or {}
    for s in statements(policy):
        if s["Effect"] != "Allow":
            continue
        if not any(wildcard(a.lower(), action.lower()) for a in listed(s["Action"])):
            continue
        if not any(wildcard(r, resource) for r in listed(s["Resource"])):
            continue
        if conditions_hold(s.get("Condition", {}), context):
            return True
    return False


def conditions_hold(conditions, context):
    for operator, pairs in conditions.items():
        for key, wanted in pairs.items():
            if key not in context:
                return False
            match = {"StringEquals": lambda p, v: p == v, "StringLike": wildcard}[operator]
            if not any(match(p, context[key]) for p in listed(wanted)):
                return False
    return True


def role_policy():
    """The execution role's policies (training, hosting) as one document."""
    policies = TEMPLATE["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"]
    return {"Version": "2012-10-17",
            "Statement": [s for p in policies for s in listed(p["PolicyDocument"]["Statement"])]}


def operator_policy():
    return TEMPLATE["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]


def s3_parts(uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def object_arn(uri, name="part-0"):
    bucket, key = s3_parts(uri)
    return f"arn:aws:s3:::{bucket}/{key}{name}"


class ExecutionRole(unittest.TestCase):
    def setUp(self):
        self.role = role_policy()
        self.jobs = [rendered("training"), rendered("tuning")["TrainingJobDefinition"]]

    def test_it_grants_exactly_the_actions_a_training_job_needs(self):
        actions = {a for s in statements(self.role) for a in listed(s["Action"])}
        self.assertEqual(actions, {
            "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
            "s3:AbortMultipartUpload",
            "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
            "logs:DescribeLogStreams", "cloudwatch:PutMetricData",
            "ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
            "ecr:BatchCheckLayerAvailability",
        })
        for s in statements(self.role):
            with self.subTest(s.get("Sid")):
                self.assertEqual(s["Effect"], "Allow")
                self.assertFalse(any("*" in a for a in listed(s["Action"])))
                if "*" in listed(s["Resource"]):
                    # Only the two actions that have no resource-level permissions.
                    self.assertIn(s["Action"], ("ecr:GetAuthorizationToken",
                                                "cloudwatch:PutMetricData"))

    def test_jobs_can_read_their_channels(self):
        for job in self.jobs:
            for channel in job["InputDataConfig"]:
                uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
                bucket, prefix = s3_parts(uri)
                with self.subTest(uri):
                    self.assertTrue(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{bucket}",
                                            {"s3:prefix": prefix}))
                    self.assertTrue(allowed(self.role, "s3:GetObject", object_arn(uri)))
                    self.assertFalse(allowed(self.role, "s3:PutObject", object_arn(uri)))
                    self.assertFalse(allowed(self.role, "s3:DeleteObject", object_arn(uri)))

    def test_jobs_can_write_their_output(self):
        for job in self.jobs:
            uri = job["OutputDataConfig"]["S3OutputPath"]
            model = object_arn(uri, "smtrain-1/output/model.tar.gz")
            other = object_arn(uri, "smtrain-1/output/output.tar.gz")
            with self.subTest(uri):
                self.assertTrue(allowed(self.role, "s3:PutObject", model))
                self.assertTrue(allowed(self.role, "s3:PutObject", other))
                # Models are read back for hosting (below); nothing else a job wrote is.
                self.assertFalse(allowed(self.role, "s3:GetObject", other))
                self.assertFalse(allowed(self.role, "s3:DeleteObject", model))

    def test_endpoints_and_transforms_can_read_the_model_and_nothing_else_of_the_output(self):
        model = rendered("model", JOB_NAME="smtrain-1")
        url = model["PrimaryContainer"]["ModelDataUrl"]
        self.assertEqual(model["ExecutionRoleArn"], rendered("training")["RoleArn"])
        bucket, key = s3_parts(url)
        self.assertTrue(allowed(self.role, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}"))
        for other in ("output/smtrain-1/output/output.tar.gz", "output/smtrain-1/model.tar.gz",
                      "transform/output/x/model.tar.gz", "model.tar.gz"):
            with self.subTest(other):
                self.assertFalse(allowed(self.role, "s3:GetObject",
                                         f"arn:aws:s3:::{bucket}/{other}"))
        self.assertFalse(allowed(self.role, "s3:GetObject",
                                 f"arn:aws:s3:::someone-elses-bucket/{key}"))

    def test_transform_jobs_can_read_their_input_and_write_their_output(self):
        job = rendered("transform", JOB_NAME="smtrain-1", TRANSFORM_JOB_NAME="smtrain-t-1")
        source = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, prefix = s3_parts(source)
        self.assertTrue(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{bucket}",
                                {"s3:prefix": prefix}))
        self.assertTrue(allowed(self.role, "s3:GetObject", object_arn(source, "test.csv")))
        self.assertFalse(allowed(self.role, "s3:PutObject", object_arn(source, "test.csv")))
        self.assertFalse(allowed(self.role, "s3:DeleteObject", object_arn(source, "test.csv")))
        output = job["TransformOutput"]["S3OutputPath"]
        self.assertTrue(allowed(self.role, "s3:PutObject", object_arn(output, "test.csv.out")))
        self.assertTrue(allowed(self.role, "s3:AbortMultipartUpload",
                                object_arn(output, "test.csv.out")))
        self.assertFalse(allowed(self.role, "s3:GetObject", object_arn(output, "test.csv.out")))
        self.assertFalse(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{bucket}",
                                 {"s3:prefix": "transform/output/smtrain-t-1/"}))

    def test_endpoints_and_transforms_can_write_their_logs(self):
        base = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker"
        endpoint = rendered("endpoint", JOB_NAME="smtrain-1")["EndpointName"]
        for group in (f"{base}/Endpoints/{endpoint}", f"{base}/TransformJobs"):
            with self.subTest(group):
                self.assertTrue(allowed(self.role, "logs:CreateLogGroup", group))
                stream = f"{group}:log-stream:AllTraffic/i-0123456789abcdef0"
                for action in ("logs:CreateLogStream", "logs:PutLogEvents",
                               "logs:DescribeLogStreams"):
                    self.assertTrue(allowed(self.role, action, stream), action)
        self.assertFalse(allowed(self.role, "logs:PutLogEvents",
                                 f"{base}/Endpoints/someone-else:log-stream:x"))

    def test_jobs_can_sync_their_checkpoints_both_ways(self):
        for job in self.jobs:
            uri = job["CheckpointConfig"]["S3Uri"]
            bucket, prefix = s3_parts(uri)
            with self.subTest(uri):
                self.assertTrue(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{bucket}",
                                        {"s3:prefix": prefix}))
                for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
                    self.assertTrue(allowed(self.role, action, object_arn(uri)), action)

    def test_nothing_else_in_s3(self):
        other = "arn:aws:s3:::someone-elses-bucket"
        for action in ("s3:GetObject", "s3:PutObject"):
            self.assertFalse(allowed(self.role, action, f"{other}/data/train/x"))
            self.assertFalse(allowed(self.role, action, f"arn:aws:s3:::{BUCKET}/elsewhere/x"))
        self.assertFalse(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}",
                                 {"s3:prefix": "output/"}))
        self.assertFalse(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}",
                                 {"s3:prefix": "transform/output/"}))
        self.assertFalse(allowed(self.role, "s3:PutObject",
                                 f"arn:aws:s3:::{BUCKET}/transform/input/x/test.csv"))
        self.assertFalse(allowed(self.role, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {}))
        self.assertFalse(allowed(self.role, "s3:DeleteObject",
                                 f"arn:aws:s3:::{BUCKET}/output/smtrain-1/output/model.tar.gz"))

    def test_jobs_can_pull_their_image_and_no_other(self):
        for job in self.jobs:
            image = job["AlgorithmSpecification"]["TrainingImage"]
            repository = image.split("/", 1)[1].split(":")[0]
            arn = f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{repository}"
            with self.subTest(image):
                for action in ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                               "ecr:BatchCheckLayerAvailability"):
                    self.assertTrue(allowed(self.role, action, arn))
                self.assertFalse(allowed(self.role, "ecr:BatchGetImage", arn + "-other"))
                self.assertFalse(allowed(self.role, "ecr:PutImage", arn))
        self.assertTrue(allowed(self.role, "ecr:GetAuthorizationToken", "*"))

    def test_jobs_can_write_their_logs_and_metrics(self):
        group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs"
        stream = f"{group}:log-stream:smtrain-1/algo-1-1700000000"
        self.assertTrue(allowed(self.role, "logs:CreateLogGroup", group))
        for action in ("logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"):
            self.assertTrue(allowed(self.role, action, stream), action)
        other = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/x:log-stream:y"
        self.assertFalse(allowed(self.role, "logs:PutLogEvents", other))
        self.assertTrue(allowed(self.role, "cloudwatch:PutMetricData", "*",
                                {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}))
        self.assertFalse(allowed(self.role, "cloudwatch:PutMetricData", "*",
                                 {"cloudwatch:namespace": "Billing"}))

    def test_only_sagemaker_in_this_account_may_assume_it(self):
        trust = resolve(TEMPLATE["Resources"]["SageMakerExecutionRole"]["Properties"]
                        ["AssumeRolePolicyDocument"])
        (s,) = trust["Statement"]
        self.assertEqual(s["Principal"], {"Service": "sagemaker.amazonaws.com"})
        self.assertEqual(s["Action"], "sts:AssumeRole")
        self.assertEqual(s["Condition"], {"StringEquals": {"aws:SourceAccount": ACCOUNT}})


class Storage(unittest.TestCase):
    def test_the_bucket_is_encrypted_versioned_and_not_public(self):
        bucket = resolve(TEMPLATE["Resources"]["Bucket"]["Properties"])
        (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        self.assertIn(rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"], ("AES256", "aws:kms"))
        self.assertEqual(set(bucket["PublicAccessBlockConfiguration"].values()), {True})
        self.assertEqual(len(bucket["PublicAccessBlockConfiguration"]), 4)
        self.assertEqual(bucket["VersioningConfiguration"], {"Status": "Enabled"})
        policy = resolve(TEMPLATE["Resources"]["BucketPolicy"]["Properties"]["PolicyDocument"])
        (deny,) = policy["Statement"]
        self.assertEqual((deny["Effect"], deny["Condition"]),
                         ("Deny", {"Bool": {"aws:SecureTransport": "false"}}))

    def test_the_repository_scans_on_push_and_expires_old_images(self):
        repo = resolve(TEMPLATE["Resources"]["Repository"]["Properties"])
        self.assertIs(repo["ImageScanningConfiguration"]["ScanOnPush"], True)
        rules = json.loads(repo["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
        priorities = [r["rulePriority"] for r in rules]
        self.assertEqual(len(priorities), len(set(priorities)))
        untagged, tagged = sorted(rules, key=lambda r: r["rulePriority"])
        self.assertEqual(untagged["selection"]["tagStatus"], "untagged")
        # The commit-pinned tags push makes (<variant>-<commit>) expire; cpu and cuda stay.
        patterns = tagged["selection"]["tagPatternList"]
        self.assertTrue(any(fnmatch.fnmatchcase("cpu-0123456789ab", p) for p in patterns))
        self.assertTrue(any(fnmatch.fnmatchcase("cuda-0123456789ab", p) for p in patterns))
        self.assertFalse(any(fnmatch.fnmatchcase(t, p) for t in ("cpu", "cuda") for p in patterns))
        self.assertEqual(tagged["selection"]["countNumber"],
                         int(TEMPLATE["Parameters"]["KeepTaggedImages"]["Default"]))


class Operators(unittest.TestCase):
    def setUp(self):
        self.policy = operator_policy()

    def test_the_job_name_prefix_is_the_one_the_make_targets_use(self):
        script = (INFRA / "sagemaker.sh").read_text()
        self.assertIn(f"JOB_PREFIX=${{JOB_PREFIX:-{PARAMETERS['JobNamePrefix']}}}", script)

    def test_operators_may_run_the_jobs_the_make_targets_and_pipeline_name(self):
        training = rendered("training")["TrainingJobName"]
        tuning = rendered("tuning")["HyperParameterTuningJobName"]
        workflow = (INFRA / "github-actions/sagemaker.yml").read_text()
        (ci_name,) = re.findall(r"JOB_NAME: (\S+)", workflow)
        ci_name = re.sub(r"\$\{\{[^}]*\}\}", "1", ci_name)
        base = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
        for name in (training, ci_name):
            for action in ("sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob",
                           "sagemaker:StopTrainingJob"):
                self.assertTrue(allowed(self.policy, action, f"{base}:training-job/{name}"),
                                (action, name))
        for action in ("sagemaker:CreateHyperParameterTuningJob",
                       "sagemaker:DescribeHyperParameterTuningJob"):
            self.assertTrue(allowed(self.policy, action,
                                    f"{base}:hyper-parameter-tuning-job/{tuning}"))
        self.assertFalse(allowed(self.policy, "sagemaker:CreateTrainingJob",
                                 f"{base}:training-job/someone-else"))
        self.assertFalse(allowed(self.policy, "sagemaker:DeleteModel",
                                 f"{base}:model/someone-else"))

    def test_operators_may_deploy_invoke_transform_and_undeploy_what_the_targets_name(self):
        job = "smtrain-20260101-120000"
        model = rendered("model", JOB_NAME=job)["ModelName"]
        config = rendered("endpoint-config", JOB_NAME=job)["EndpointConfigName"]
        endpoint = rendered("endpoint", JOB_NAME=job)["EndpointName"]
        transform = rendered("transform", JOB_NAME=job)["TransformJobName"]
        base = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
        # SageMaker writes the names in its ARNs in lower case.
        arns = {"model": f"{base}:model/{model.lower()}",
                "endpoint-config": f"{base}:endpoint-config/{config.lower()}",
                "endpoint": f"{base}:endpoint/{endpoint.lower()}",
                "transform-job": f"{base}:transform-job/{transform.lower()}"}
        needs = {
            "sagemaker:CreateModel": ["model"], "sagemaker:DeleteModel": ["model"],
            "sagemaker:CreateEndpointConfig": ["endpoint-config"],
            "sagemaker:DeleteEndpointConfig": ["endpoint-config"],
            "sagemaker:CreateEndpoint": ["endpoint", "endpoint-config"],
            "sagemaker:DescribeEndpoint": ["endpoint"], "sagemaker:DeleteEndpoint": ["endpoint"],
            "sagemaker:InvokeEndpoint": ["endpoint"],
            "sagemaker:CreateTransformJob": ["transform-job", "model"],
            "sagemaker:DescribeTransformJob": ["transform-job"],
        }
        for action, kinds in needs.items():
            for kind in kinds:
                with self.subTest(action, resource=kind):
                    self.assertTrue(allowed(self.policy, action, arns[kind]))
                    other = arns[kind].rsplit("/", 1)[0] + "/someone-else"
                    self.assertFalse(allowed(self.policy, action, other))
        # Only what the targets call: no updates, no other hosting resources.
        for action in ("sagemaker:UpdateEndpoint", "sagemaker:StopTransformJob",
                       "sagemaker:CreateInferenceComponent"):
            self.assertFalse(allowed(self.policy, action, arns["endpoint"]), action)
        # The hosting logs, for when an endpoint does not start.
        logs = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker"
        self.assertTrue(allowed(self.policy, "logs:FilterLogEvents",
                                f"{logs}/Endpoints/{endpoint}"))
        self.assertTrue(allowed(self.policy, "logs:GetLogEvents",
                                f"{logs}/TransformJobs:log-stream:{transform}/i-1"))

    def test_operators_may_upload_transform_input_and_read_its_output_only(self):
        job = rendered("transform", JOB_NAME="smtrain-1", TRANSFORM_JOB_NAME="smtrain-t-1")
        source = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        output = job["TransformOutput"]["S3OutputPath"]
        self.assertTrue(allowed(self.policy, "s3:PutObject", object_arn(source, "test.csv")))
        self.assertTrue(allowed(self.policy, "s3:GetObject", object_arn(output, "test.csv.out")))
        self.assertFalse(allowed(self.policy, "s3:PutObject", object_arn(output, "test.csv.out")))
        self.assertFalse(allowed(self.policy, "s3:DeleteObject", object_arn(source, "test.csv")))

    def test_operators_may_pass_only_the_execution_role_and_only_to_sagemaker(self):
        role = ATTRIBUTES["SageMakerExecutionRole.Arn"]
        to_sagemaker = {"iam:PassedToService": "sagemaker.amazonaws.com"}
        self.assertTrue(allowed(self.policy, "iam:PassRole", role, to_sagemaker))
        self.assertFalse(allowed(self.policy, "iam:PassRole", role,
                                 {"iam:PassedToService": "ec2.amazonaws.com"}))
        self.assertFalse(allowed(self.policy, "iam:PassRole",
                                 f"arn:aws:iam::{ACCOUNT}:role/Admin", to_sagemaker))

    def test_operators_may_push_both_variants_and_upload_data(self):
        repo = ATTRIBUTES["Repository.Arn"]
        for action in ("ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                       "ecr:CompleteLayerUpload", "ecr:PutImage",
                       "ecr:BatchCheckLayerAvailability"):
            self.assertTrue(allowed(self.policy, action, repo), action)
        self.assertTrue(allowed(self.policy, "ecr:GetAuthorizationToken", "*"))
        self.assertTrue(allowed(self.policy, "s3:PutObject",
                                f"arn:aws:s3:::{BUCKET}/data/train/train-images-idx3-ubyte.gz"))
        self.assertFalse(allowed(self.policy, "s3:PutObject",
                                 f"arn:aws:s3:::{BUCKET}/output/x/model.tar.gz"))
        self.assertTrue(allowed(self.policy, "cloudformation:DescribeStacks", STACK_ID))

    def test_the_ci_role_trusts_only_this_repositorys_workflows(self):
        REFS["GitHubRepository"] = "octo/smtrain"
        try:
            ci = resolve(TEMPLATE["Resources"]["CiRole"]["Properties"])
        finally:
            REFS["GitHubRepository"] = PARAMETERS["GitHubRepository"]
        (s,) = ci["AssumeRolePolicyDocument"]["Statement"]
        self.assertEqual(s["Action"], "sts:AssumeRoleWithWebIdentity")
        self.assertEqual(s["Condition"]["StringLike"],
                         {"token.actions.githubusercontent.com:sub": "repo:octo/smtrain:*"})
        self.assertEqual(s["Condition"]["StringEquals"],
                         {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"})
        # The workflow asks for a 3-hour session; the role must allow it.
        workflow = (INFRA / "github-actions/sagemaker.yml").read_text()
        (seconds,) = re.findall(r"role-duration-seconds: (\d+)", workflow)
        self.assertLessEqual(int(seconds), ci["MaxSessionDuration"])


if __name__ == "__main__":
    unittest.main()
