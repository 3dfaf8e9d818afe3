"""A stand-in for the few AWS APIs the make targets call, on 127.0.0.1, so that `make push`,
`make submit` and `make tune` can run end to end with the real AWS CLI and no AWS account.

It speaks the wire protocols the CLI uses: SageMaker's and ECR's JSON 1.1 (X-Amz-Target
header), CloudFormation's query protocol (form body, XML answer). It records every call, checks
each create request against botocore's SageMaker model once more, and plays a scripted job:
`statuses` are the Describe answers in order (the last one repeats).
"""

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sagemaker_model


class StubAws:
    def __init__(self, outputs, statuses, final):
        self.outputs = outputs      # CloudFormation stack outputs, name → value
        self.statuses = list(statuses)  # Describe answers: (status, secondary status)
        self.final = final          # extra members of the last Describe answer
        self.calls = []             # (operation, parameters)
        self.errors = []            # what the stub found wrong with a request
        self.lock = threading.Lock()
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

    def _json(self, operation, params):
        if operation in ("CreateTrainingJob", "CreateHyperParameterTuningJob"):
            problems = sagemaker_model.errors(operation, params)
            if problems:
                self.errors.append((operation, problems))
                return 400, {"__type": "ValidationException", "message": "; ".join(problems)}
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

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                target = self.headers.get("X-Amz-Target")
                if target:
                    operation = target.split(".")[-1]
                    params = json.loads(body or b"{}")
                    with stub.lock:
                        stub.calls.append((operation, params))
                    code, answer = stub._json(operation, params)
                    payload, kind = json.dumps(answer).encode(), "application/x-amz-json-1.1"
                else:
                    params = dict(urllib.parse.parse_qsl(body.decode()))
                    with stub.lock:
                        stub.calls.append((params.get("Action"), params))
                    code, answer = stub._query(params)
                    payload, kind = answer.encode(), "text/xml"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
