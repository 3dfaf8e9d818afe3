#!/usr/bin/env python3
"""Renders a SageMaker request template (infra/*-job.json) into the JSON that is sent.

    render.py TEMPLATE NAME=VALUE... > request.json

`make submit`, `make tune` and the tests all render through this one script, so the tests check
exactly what would be sent. Python standard library only: users need nothing installed.

Placeholders in a template:
  "...${NAME}..."      inside any string: NAME's value.
  "${int:NAME}"        a whole string: NAME's value as a JSON integer.
  "@file:FILE.json"    a whole string: the JSON in infra/FILE.json (the metric definitions).
  "?Key": {...}        an optional member: kept as "Key" when every variable it uses has a
                       non-empty value, dropped when all of them are empty.

Every variable the template uses must be given, and every variable given must be used, so a
typo on either side fails here instead of at AWS.
"""

import json
import re
import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parent
VAR = re.compile(r"\$\{(?:(int):)?([A-Za-z_][A-Za-z0-9_]*)\}")


class RenderError(Exception):
    pass


def variables_in(node):
    """The names of every ${...} variable in a JSON tree."""
    if isinstance(node, str):
        return {m.group(2) for m in VAR.finditer(node)}
    if isinstance(node, dict):
        return set().union(set(), *(variables_in(k) | variables_in(v) for k, v in node.items()))
    if isinstance(node, list):
        return set().union(set(), *(variables_in(v) for v in node))
    return set()


def _string(s, values, where):
    if s.startswith("@file:"):
        path = INFRA / s[len("@file:"):]
        if path.parent != INFRA or not path.is_file():
            raise RenderError(f"{where}: {s!r} names no file in {INFRA}")
        return json.loads(path.read_text())
    whole = VAR.fullmatch(s)
    if whole and whole.group(1) == "int":
        raw = values[whole.group(2)]
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise RenderError(f"{where}: {whole.group(2)}={raw!r} is not a whole number")
        return int(raw)

    def sub(m):
        if m.group(1):
            raise RenderError(f"{where}: ${{int:{m.group(2)}}} must be the whole string")
        return values[m.group(2)]

    return VAR.sub(sub, s)


def _render(node, values, where):
    if isinstance(node, str):
        return _string(node, values, where)
    if isinstance(node, list):
        return [_render(v, values, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key.startswith("?"):
                used = variables_in(value)
                filled = {n for n in used if values[n] != ""}
                if not used:
                    raise RenderError(f"{where}.{key}: an optional member must use a variable")
                if not filled:
                    continue
                if filled != used:
                    empty = ", ".join(sorted(used - filled))
                    raise RenderError(f"{where}.{key[1:]}: needs {empty} as well")
                key = key[1:]
            out[key] = _render(value, values, f"{where}.{key}")
        return out
    return node


def render(template, values):
    """The request for a parsed template and a name → value map."""
    used = variables_in(template)
    missing = sorted(used - values.keys())
    unused = sorted(values.keys() - used)
    if missing:
        raise RenderError(f"missing values for: {', '.join(missing)}")
    if unused:
        raise RenderError(f"the template uses no variable named: {', '.join(unused)}")
    return _render(template, values, "$")


def render_file(path, values):
    return render(json.loads(Path(path).read_text()), values)


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    values = {}
    for arg in argv[2:]:
        name, sep, value = arg.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            print(f"render.py: expected NAME=VALUE, got {arg!r}", file=sys.stderr)
            return 2
        values[name] = value
    try:
        request = render_file(argv[1], values)
    except RenderError as e:
        print(f"render.py: {argv[1]}: {e}", file=sys.stderr)
        return 1
    json.dump(request, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
