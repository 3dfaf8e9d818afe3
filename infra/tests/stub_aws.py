"""A stand-in for the few AWS APIs the make targets call, on 127.0.0.1, so that `make push`,
`make submit`, `make tune`, `make deploy`, `make invoke`, `make transform` and `make undeploy`
can run end to end with the real AWS CLI and no AWS account.

It speaks the wire protocols the CLI uses: SageMaker's and ECR's JSON 1.1 (X-Amz-Target
header), CloudFormation's query protocol (form body, XML answer), SageMaker Runtime's REST
InvokeEndpoint (POST /endpoints/NAME/invocations) and S3's REST PutObject and GetObject (path
style). It records every call, checks each SageMaker request against botocore's SageMaker model
once more, and plays a scripted job: `statuses` are the Describe answers in order (the last one
repeats); a transform job that completes writes INPUT.out for each input object, one answer
line per input line, from `transform_answer`. Models, endpoint configs and endpoints are kept
as SageMaker keeps them: a name is created once, a missing one is "Could not find", an endpoint
config in use cannot be deleted, a deleted endpoint answers Deleting once and then is gone.
`endpoint_statuses` are the DescribeEndpoint answers after CreateEndpoint.

Algorithms and the Model Registry are kept the same way: an algorithm answers
`algorithm_statuses` in turn (the last one with `algorithm_final`); a model package group is
created once and "does not exist" before; each CreateModelPackage in a group is its next version
(ARN .../model-package/GROUP/N), PendingManualApproval or as asked, changed by
UpdateModelPackage; CreateModel with a ModelPackageName needs an existing, approved version.
"""

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sagemaker_model


ACCOUNT_ARN = "arn:aws:sagemaker:eu-west-1:123456789012"


def not_found(kind, name):
    return 400, {"__type": "ValidationException",
                 "message": f'Could not find {kind} "{ACCOUNT_ARN}:{kind}/{name.lower()}".'}


def exists(kind, name):
    return 400, {"__type": "ValidationException",
                 "message": f'Cannot create already existing {kind} '
                            f'"{ACCOUNT_ARN}:{kind}/{name.lower()}".'}


def package_missing(name):
    return 400, {"__type": "ValidationException", "message": f"ModelPackage {name} does not exist."}


def default_transform_answer(lines):
    return ["0," + ",".join(["0.1"] * 10) for _ in lines]


class StubAws:
    def __init__(self, outputs, statuses, final, training_jobs=None,
                 endpoint_statuses=(("InService", None),), endpoint_final=None,
                 invoke_answer=b'{"predictions": [{"class": 9}]}',
                 transform_answer=default_transform_answer,
                 algorithm_statuses=("Completed",), algorithm_final=None):
        self.outputs = outputs      # CloudFormation stack outputs, name → value
        self.statuses = list(statuses)  # Describe answers: (status, secondary status)
        self.final = final          # extra members of the last Describe answer
        self.training_jobs = dict(training_jobs or {})  # finished jobs: name → Describe answer
        self.endpoint_statuses = [s for s, _ in endpoint_statuses]
        self.endpoint_final = endpoint_final or {}
        self.invoke_answer = invoke_answer
        self.transform_answer = transform_answer
        self.models = {}            # name → CreateModel request
        self.endpoint_configs = {}  # name → CreateEndpointConfig request
        self.endpoints = {}         # name → {"request", "polls", "deleting"}
        self.algorithm_statuses = list(algorithm_statuses)
        self.algorithm_final = algorithm_final or {}
        self.algorithms = {}        # name → {"request", "polls"}
        self.package_groups = {}    # name → CreateModelPackageGroup request
        self.packages = []          # {"arn", "group", "version", "request", "status"}
        self.objects = {}           # (bucket, key) → bytes
        self.invocations = []       # (path, headers, body) of InvokeEndpoint calls
        self.calls = []             # (operation, parameters)
        self.errors = []            # what the stub found wrong with a request
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def operations(self):
        return [op for op, _ in self.calls]

    def requests(self, operation):
        return [params for op, params in self.calls if op == operation]

    def _describe(self, operation, created, status_key, extra_keys):
        with self.lock:
            polls = self.operations().count(operation)
        status, secondary = self.statuses[min(polls - 1, len(self.statuses) - 1)]
        answer = {status_key: status, "CreationTime": 1700000000}
        answer.update({k: created[k] for k in extra_keys if k in created})
        if secondary:
            answer["SecondaryStatus"] = secondary
        if polls >= len(self.statuses):
            answer.update(self.final)
        return answer

    def _json(self, target, operation, params):
        if target.startswith("SageMaker."):
            problems = sagemaker_model.errors(operation, params)
            if problems:
                self.errors.append((operation, problems))
                return 400, {"__type": "ValidationException", "message": "; ".join(problems)}
        for part in (self._hosting, self._registry):
            answer = part(operation, params)
            if answer is not None:
                return answer
        if operation == "DescribeTrainingJob" and params["TrainingJobName"] in self.training_jobs:
            return 200, self.training_jobs[params["TrainingJobName"]]
        created = (self.requests("CreateTrainingJob") or [{}])[-1]
        if operation == "CreateTrainingJob":
            return 200, {"TrainingJobArn": f"arn:aws:sagemaker:eu-west-1:123456789012:"
                                           f"training-job/{params['TrainingJobName']}"}
        if operation == "CreateHyperParameterTuningJob":
            return 200, {"HyperParameterTuningJobArn": "arn:aws:sagemaker:eu-west-1:"
                         f"123456789012:hyper-parameter-tuning-job/"
                         f"{params['HyperParameterTuningJobName']}"}
        if operation == "DescribeTrainingJob":
            if not created or params["TrainingJobName"] != created["TrainingJobName"]:
                return 400, {"__type": "ValidationException", "message": "no such job"}
            return 200, self._describe(operation, created, "TrainingJobStatus", [
                "TrainingJobName", "AlgorithmSpecification", "RoleArn", "HyperParameters"])
        if operation == "DescribeHyperParameterTuningJob":
            tuning = (self.requests("CreateHyperParameterTuningJob") or [{}])[-1]
            name = params["HyperParameterTuningJobName"]
            if name != tuning.get("HyperParameterTuningJobName"):
                return 400, {"__type": "ResourceNotFound", "message": "no such tuning job"}
            return 200, self._describe(operation, tuning, "HyperParameterTuningJobStatus", [
                "HyperParameterTuningJobName", "HyperParameterTuningJobConfig"])
        if operation == "GetAuthorizationToken":
            token = base64.b64encode(b"AWS:stub-ecr-password").decode()
            return 200, {"authorizationData": [{
                "authorizationToken": token, "expiresAt": 1700043200,
                "proxyEndpoint": "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"}]}
        return 400, {"__type": "UnknownOperationException", "message": operation}

    def _hosting(self, operation, params):
        """Models, endpoint configs, endpoints and transform jobs; None for other operations."""
        if operation == "CreateModel":
            name = params["ModelName"]
            if name in self.models:
                return exists("model", name)
            package = params.get("PrimaryContainer", {}).get("ModelPackageName")
            if package is not None:
                found = self._package(package)
                if found is None:
                    return package_missing(package)
                if found["status"] != "Approved":
                    return 400, {"__type": "ValidationException",
                                 "message": f"Model package {package} is not approved"}
            self.models[name] = params
            return 200, {"ModelArn": f"{ACCOUNT_ARN}:model/{name.lower()}"}
        if operation == "DeleteModel":
            if self.models.pop(params["ModelName"], None) is None:
                return not_found("model", params["ModelName"])
            return 200, {}
        if operation == "CreateEndpointConfig":
            name = params["EndpointConfigName"]
            if name in self.endpoint_configs:
                return exists("endpoint configuration", name)
            for variant in params["ProductionVariants"]:
                if variant["ModelName"] not in self.models:
                    return not_found("model", variant["ModelName"])
            self.endpoint_configs[name] = params
            return 200, {"EndpointConfigArn": f"{ACCOUNT_ARN}:endpoint-config/{name.lower()}"}
        if operation == "DeleteEndpointConfig":
            name = params["EndpointConfigName"]
            if name not in self.endpoint_configs:
                return not_found("endpoint configuration", name)
            if any(e["request"]["EndpointConfigName"] == name for e in self.endpoints.values()):
                return 400, {"__type": "ValidationException",
                             "message": f"Cannot delete endpoint configuration {name}: in use"}
            del self.endpoint_configs[name]
            return 200, {}
        if operation == "CreateEndpoint":
            name = params["EndpointName"]
            if name in self.endpoints:
                return exists("endpoint", name)
            if params["EndpointConfigName"] not in self.endpoint_configs:
                return not_found("endpoint configuration", params["EndpointConfigName"])
            self.endpoints[name] = {"request": params, "polls": 0, "deleting": False}
            return 200, {"EndpointArn": f"{ACCOUNT_ARN}:endpoint/{name.lower()}"}
        if operation == "DescribeEndpoint":
            name = params["EndpointName"]
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                return not_found("endpoint", name)
            if endpoint["deleting"]:
                del self.endpoints[name]
                status = "Deleting"
            else:
                statuses = self.endpoint_statuses
                status = statuses[min(endpoint["polls"], len(statuses) - 1)]
                endpoint["polls"] += 1
            answer = {"EndpointName": name, "EndpointArn": f"{ACCOUNT_ARN}:endpoint/{name.lower()}",
                      "EndpointConfigName": endpoint["request"]["EndpointConfigName"],
                      "EndpointStatus": status, "CreationTime": 1700000000,
                      "LastModifiedTime": 1700000100}
            if status not in ("Creating", "Deleting"):
                answer.update(self.endpoint_final)
            return 200, answer
        if operation == "DeleteEndpoint":
            endpoint = self.endpoints.get(params["EndpointName"])
            if endpoint is None or endpoint["deleting"]:
                return not_found("endpoint", params["EndpointName"])
            endpoint["deleting"] = True
            return 200, {}
        if operation == "CreateTransformJob":
            if params["ModelName"] not in self.models:
                return not_found("model", params["ModelName"])
            return 200, {"TransformJobArn": f"{ACCOUNT_ARN}:transform-job/"
                                            f"{params['TransformJobName'].lower()}"}
        if operation == "DescribeTransformJob":
            job = (self.requests("CreateTransformJob") or [{}])[-1]
            if params["TransformJobName"] != job.get("TransformJobName"):
                return 400, {"__type": "ValidationException",
                             "message": "Could not find requested job with name"}
            answer = self._describe(operation, job, "TransformJobStatus", [
                "TransformJobName", "ModelName", "TransformInput", "TransformOutput",
                "TransformResources", "BatchStrategy", "MaxPayloadInMB"])
            if answer["TransformJobStatus"] == "Completed":
                self._transform(job)
            return 200, answer
        return None

    def _package(self, arn):
        return next((p for p in self.packages if p["arn"] == arn), None)

    def _registry(self, operation, params):
        """Algorithms, model package groups and model packages; None for other operations."""
        if operation == "CreateAlgorithm":
            name = params["AlgorithmName"]
            if name in self.algorithms:
                return exists("algorithm", name)
            self.algorithms[name] = {"request": params, "polls": 0}
            return 200, {"AlgorithmArn": f"{ACCOUNT_ARN}:algorithm/{name.lower()}"}
        if operation == "DescribeAlgorithm":
            name = params["AlgorithmName"]
            algorithm = self.algorithms.get(name)
            if algorithm is None:
                return not_found("algorithm", name)
            statuses = self.algorithm_statuses
            status = statuses[min(algorithm["polls"], len(statuses) - 1)]
            algorithm["polls"] += 1
            request = algorithm["request"]
            answer = {"AlgorithmName": name, "AlgorithmArn": f"{ACCOUNT_ARN}:algorithm/{name.lower()}",
                      "CreationTime": 1700000000, "AlgorithmStatus": status,
                      "TrainingSpecification": request["TrainingSpecification"],
                      "AlgorithmStatusDetails": {}}
            if "InferenceSpecification" in request:
                answer["InferenceSpecification"] = request["InferenceSpecification"]
            if status not in ("Pending", "InProgress"):
                answer.update(self.algorithm_final)
            return 200, answer
        if operation == "CreateModelPackageGroup":
            name = params["ModelPackageGroupName"]
            if name in self.package_groups:
                return 400, {"__type": "ValidationException",
                             "message": f"Model Package Group already exists: "
                                        f"{ACCOUNT_ARN}:model-package-group/{name.lower()}"}
            self.package_groups[name] = params
            return 200, {"ModelPackageGroupArn":
                         f"{ACCOUNT_ARN}:model-package-group/{name.lower()}"}
        if operation == "DescribeModelPackageGroup":
            name = params["ModelPackageGroupName"]
            if name not in self.package_groups:
                return 400, {"__type": "ValidationException",
                             "message": f"ModelPackageGroup {name} does not exist."}
            return 200, {"ModelPackageGroupName": name,
                         "ModelPackageGroupArn": f"{ACCOUNT_ARN}:model-package-group/{name.lower()}",
                         "CreationTime": 1700000000, "CreatedBy": {},
                         "ModelPackageGroupStatus": "Completed"}
        if operation == "CreateModelPackage":
            group = params.get("ModelPackageGroupName")
            if group not in self.package_groups:
                return 400, {"__type": "ValidationException",
                             "message": f"ModelPackageGroup {group} does not exist."}
            version = 1 + sum(p["group"] == group for p in self.packages)
            arn = f"{ACCOUNT_ARN}:model-package/{group.lower()}/{version}"
            self.packages.append({"arn": arn, "group": group, "version": version,
                                  "request": params,
                                  "status": params.get("ModelApprovalStatus",
                                                       "PendingManualApproval")})
            return 200, {"ModelPackageArn": arn}
        if operation == "DescribeModelPackage":
            package = self._package(params["ModelPackageName"])
            if package is None:
                return package_missing(params["ModelPackageName"])
            answer = {k: v for k, v in package["request"].items()
                      if k in ("ModelPackageDescription", "InferenceSpecification",
                               "ModelMetrics", "CustomerMetadataProperties")}
            answer.update(ModelPackageName=package["group"],
                          ModelPackageGroupName=package["group"],
                          ModelPackageVersion=package["version"], ModelPackageArn=package["arn"],
                          CreationTime=1700000000, ModelPackageStatus="Completed",
                          ModelApprovalStatus=package["status"])
            return 200, answer
        if operation == "UpdateModelPackage":
            package = self._package(params["ModelPackageArn"])
            if package is None:
                return package_missing(params["ModelPackageArn"])
            if "ModelApprovalStatus" in params:
                package["status"] = params["ModelApprovalStatus"]
            return 200, {"ModelPackageArn": package["arn"]}
        return None

    def _transform(self, job):
        """Writes what a transform job writes: INPUT.out beside each input object's name."""
        bucket, prefix = s3_parts(job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"])
        out_bucket, out_prefix = s3_parts(job["TransformOutput"]["S3OutputPath"])
        for (b, key), data in list(self.objects.items()):
            if b == bucket and key.startswith(prefix):
                lines = data.decode().splitlines()
                answer = "\n".join(self.transform_answer(lines)) + "\n"
                name = key[len(prefix):]
                self.objects[(out_bucket, out_prefix + name + ".out")] = answer.encode()

    def _query(self, params):
        action = params.get("Action")
        if action != "DescribeStacks":
            return 400, f"<ErrorResponse><Error><Code>InvalidAction</Code>" \
                        f"<Message>{action}</Message></Error></ErrorResponse>"
        members = "".join(f"<member><OutputKey>{k}</OutputKey><OutputValue>{v}</OutputValue>"
                          f"</member>" for k, v in self.outputs.items())
        return 200, (
            '<DescribeStacksResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/">'
            "<DescribeStacksResult><Stacks><member>"
            f"<StackName>{params.get('StackName')}</StackName>"
            "<StackId>arn:aws:cloudformation:eu-west-1:123456789012:stack/smtrain/1</StackId>"
            "<CreationTime>2026-01-01T00:00:00Z</CreationTime>"
            "<StackStatus>CREATE_COMPLETE</StackStatus>"
            f"<Outputs>{members}</Outputs>"
            "</member></Stacks></DescribeStacksResult>"
            "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>"
            "</DescribeStacksResponse>")

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, code, payload, kind):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def body(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if "aws-chunked" in self.headers.get("Content-Encoding", ""):
                    data = aws_unchunk(data)
                return data

            def s3_key(self):
                path = urllib.parse.urlsplit(self.path).path
                bucket, _, key = path.lstrip("/").partition("/")
                return bucket, urllib.parse.unquote(key)

            def do_PUT(self):
                bucket, key = self.s3_key()
                data = self.body()
                with stub.lock:
                    stub.calls.append(("PutObject", {"Bucket": bucket, "Key": key}))
                    stub.objects[(bucket, key)] = data
                self.send_response(200)
                self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                bucket, key = self.s3_key()
                with stub.lock:
                    stub.calls.append(("GetObject", {"Bucket": bucket, "Key": key}))
                    data = stub.objects.get((bucket, key))
                if data is None:
                    self.answer(404, b"<Error><Code>NoSuchKey</Code><Message>The specified key"
                                     b" does not exist.</Message></Error>", "application/xml")
                else:
                    self.answer(200, data, "application/octet-stream")

            def do_POST(self):
                body = self.body()
                target = self.headers.get("X-Amz-Target")
                path = urllib.parse.urlsplit(self.path).path
                if target:
                    operation = target.split(".")[-1]
                    params = json.loads(body or b"{}")
                    with stub.lock:
                        stub.calls.append((operation, params))
                        code, answer = stub._json(target, operation, params)
                    payload, kind = json.dumps(answer).encode(), "application/x-amz-json-1.1"
                elif path.startswith("/endpoints/") and path.endswith("/invocations"):
                    name = urllib.parse.unquote(path.split("/")[2])
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    with stub.lock:
                        stub.calls.append(("InvokeEndpoint", {"EndpointName": name}))
                        stub.invocations.append((name, headers, body))
                        known = name in stub.endpoints
                    if not known:
                        code, answer = not_found("endpoint", name)
                        payload = json.dumps({"message": answer["message"]}).encode()
                        self.send_response(400)
                        self.send_header("x-amzn-ErrorType", "ValidationError")
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    code, payload = 200, stub.invoke_answer
                    kind = headers.get("accept", "application/json")
                else:
                    params = dict(urllib.parse.parse_qsl(body.decode()))
                    with stub.lock:
                        stub.calls.append((params.get("Action"), params))
                    code, answer = stub._query(params)
                    payload, kind = answer.encode(), "text/xml"
                self.answer(code, payload, kind)

        return Handler


def s3_parts(uri):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def aws_unchunk(data):
    """The payload of an aws-chunked body (SIZE[;chunk-signature=...]\r\nDATA\r\n ... 0)."""
    out, i = b"", 0
    while True:
        end = data.index(b"\r\n", i)
        size = int(data[i:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[end + 2:end + 2 + size]
        i = end + 2 + size + 2
