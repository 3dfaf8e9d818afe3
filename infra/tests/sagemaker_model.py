"""Validation of a request against the SageMaker API model that ships in botocore.

botocore's own ParamValidator (what boto3 and the AWS CLI run before sending) catches unknown
or misspelled members, missing required ones, wrong types and values under a minimum. The
service also enforces the model's maximums, enums and patterns, which ParamValidator leaves to
the server; `constraint_errors` checks those from the same model, so a request that passes both
is one the API accepts as far as its model can tell.
"""

import regex
from botocore.session import get_session
from botocore.validate import ParamValidator

_MODEL = get_session().get_service_model("sagemaker")


def input_shape(operation):
    return _MODEL.operation_model(operation).input_shape


def botocore_errors(operation, params):
    report = ParamValidator().validate(params, input_shape(operation))
    return report.generate_report().splitlines() if report.has_errors() else []


def constraint_errors(operation, params):
    errors = []
    _walk(params, input_shape(operation), operation, errors)
    return errors


def errors(operation, params):
    return botocore_errors(operation, params) + constraint_errors(operation, params)


def _walk(value, shape, where, errors):
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                _walk(member, shape.members[name], f"{where}.{name}", errors)
        return
    if kind == "list" and isinstance(value, list):
        _bounds(len(value), meta, f"{where} (length)", errors)
        for i, item in enumerate(value):
            _walk(item, shape.member, f"{where}[{i}]", errors)
        return
    if kind == "map" and isinstance(value, dict):
        _bounds(len(value), meta, f"{where} (entries)", errors)
        for key, item in value.items():
            _walk(key, shape.key, f"{where} key {key!r}", errors)
            _walk(item, shape.value, f"{where}[{key!r}]", errors)
        return
    if kind == "string" and isinstance(value, str):
        _bounds(len(value), meta, f"{where} (length)", errors)
        if shape.enum and value not in shape.enum:
            some = ", ".join(shape.enum[:6])
            errors.append(f"{where}: {value!r} is not one of the {len(shape.enum)} allowed"
                          f" values ({some}, ...)")
        pattern = meta.get("pattern")
        # The service matches the whole value (Java's String.matches).
        if pattern is not None and not regex.fullmatch(pattern, value):
            errors.append(f"{where}: {value!r} does not match the pattern {pattern}")
        return
    if kind in ("integer", "long", "float", "double") and isinstance(value, (int, float)):
        _bounds(value, meta, where, errors)


def _bounds(n, meta, where, errors):
    if "min" in meta and n < meta["min"]:
        errors.append(f"{where}: {n} is below the minimum {meta['min']}")
    if "max" in meta and n > meta["max"]:
        errors.append(f"{where}: {n} is above the maximum {meta['max']}")
