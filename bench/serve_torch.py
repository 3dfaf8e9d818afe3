"""The same model served the way AWS's bring-your-own-container example serves one: a Flask app
behind gunicorn, PyTorch eager doing the forward pass. `make bench-serve` runs it beside
`train serve` (bench/serve.py).

gunicorn --chdir bench serve_torch:app, with SMTRAIN_MODEL_DIR naming a model folder as the
training job writes it (model.json, model.safetensors) and OMP_NUM_THREADS the torch threads.
It answers /ping (200 once the model is loaded: it is loaded at import, in each worker) and
/invocations: text/csv (one image a line, 784 values 0-255) or application/json
({"instances": [...]} or a bare list; each image 784 numbers or 28 lists of 28) in, and
application/json ({"predictions": [{"class", "class_name", "probabilities"}, ...]}) or text/csv
(class,p0,...,p9 a line) out, as `train serve` does; 415 and 406 for other types, 400 for a
malformed body. Pixels are scaled by model.json's input.scale; ReLU between the layers, softmax
after the last; the class is the first index of the largest logit.
"""
import io
import json
import os
import struct

import numpy as np
import torch
from flask import Flask, Response, request
from torch import nn

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
MODEL_DIR = os.environ["SMTRAIN_MODEL_DIR"]


def load_safetensors(path):
    """The tensors of a safetensors file: an 8-byte header length, a JSON header, the data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        assert spec["dtype"] == "F32", spec
        a, b = spec["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype="<f4").copy()).reshape(spec["shape"])
    return out


with open(os.path.join(MODEL_DIR, "model.json")) as f:
    CARD = json.load(f)
SIZES = CARD["architecture"]["layer_sizes"]
SCALE = CARD["input"]["scale"]
SHAPE = CARD["input"]["shape"]
PIXELS = SHAPE[0] * SHAPE[1]
NAMES = CARD["class_names"]
tensors = load_safetensors(os.path.join(MODEL_DIR, "model.safetensors"))
layers = []
for i in range(len(SIZES) - 1):
    lin = nn.Linear(SIZES[i], SIZES[i + 1])
    with torch.no_grad():
        lin.weight.copy_(tensors[f"layers.{i}.weight"])
        lin.bias.copy_(tensors[f"layers.{i}.bias"])
    layers += [lin, nn.ReLU()]
MODEL = nn.Sequential(*layers[:-1]).eval()

app = Flask(__name__)


def error(status, message):
    return Response(json.dumps({"error": message}), status=status, mimetype="application/json")


@app.route("/ping", methods=["GET"])
def ping():
    return Response(status=200)


@app.route("/invocations", methods=["POST"])
def invocations():
    ctype = (request.content_type or "application/json").split(";")[0].strip()
    accept = (request.headers.get("Accept") or "application/json").split(";")[0].strip()
    if accept in ("*/*", ""):
        accept = "application/json"
    if accept not in ("application/json", "text/csv"):
        return error(406, f"Accept {accept}")
    try:
        if ctype == "text/csv":
            # numpy's C reader, as a PyTorch user would parse CSV (not a Python loop).
            x = np.loadtxt(io.StringIO(request.get_data(as_text=True)), delimiter=",",
                           dtype=np.float32, ndmin=2)
        elif ctype == "application/json":
            body = json.loads(request.get_data())
            x = np.asarray(body["instances"] if isinstance(body, dict) else body,
                           dtype=np.float32)
        else:
            return error(415, f"Content-Type {ctype}")
    except (ValueError, KeyError, TypeError) as e:
        return error(400, f"not a batch of images: {e}")
    if x.shape in ((PIXELS,), tuple(SHAPE)):
        x = x[None]
    if x.size == 0 or x.size % PIXELS or x.shape[-1] not in (PIXELS, SHAPE[1]):
        return error(400, f"expected images of {PIXELS} values, got an array of shape {x.shape}")
    x = x.reshape(-1, PIXELS)
    if x.min() < 0 or x.max() > 255:
        return error(400, "pixel values must be 0-255")
    x = torch.from_numpy(x) * SCALE
    with torch.no_grad():
        logits = MODEL(x)
        probs = torch.softmax(logits, 1)
    classes = logits.argmax(1).tolist()
    probs = probs.tolist()
    if accept == "text/csv":
        lines = [",".join([str(c)] + [repr(p) for p in ps]) for c, ps in zip(classes, probs)]
        return Response("\n".join(lines) + "\n", mimetype="text/csv")
    preds = [
        {"class": c, "class_name": NAMES[c], "probabilities": ps} for c, ps in zip(classes, probs)
    ]
    return Response(json.dumps({"predictions": preds}), mimetype="application/json")
