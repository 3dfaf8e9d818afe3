"""Shared by the peer programs: read the IDX files the trainer reads, report one JSON line."""
import gzip
import json
import os
import struct
import sys
import time

import numpy as np

DATA = os.environ.get("SMTRAIN_DATA", "/usr/share/datasets/fashion-mnist")


def read_idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        data = f.read()
    ndims = data[3]
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims).reshape(dims)


def load():
    """Train and test sets as the notebook prepares them: pixels scaled to [0, 1]."""
    start = time.perf_counter()
    train_x = read_idx("train-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    train_y = read_idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    test_x = read_idx("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    test_y = read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return (train_x, train_y, test_x, test_y), time.perf_counter() - start


def args():
    """--threads T --batch B --epochs E --seed S"""
    a = dict(threads=2, batch=32, epochs=5, seed=42)
    it = iter(sys.argv[1:])
    for k in it:
        a[k.lstrip("-")] = int(next(it))
    return a


def report(**fields):
    print(json.dumps(fields), flush=True)
