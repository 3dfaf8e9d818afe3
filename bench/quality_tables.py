#!/usr/bin/env python3
"""`make quality-tables`: test accuracy on scikit-learn's bundled UCI sets, ours next to
scikit-learn's own MLPClassifier and LogisticRegression on the same splits, in the same run.

The splits are the fixtures of tests/fixtures/tables (75/25, stratified, random_state=0, made by
tests/fixtures/make_tables.py). Ours trains through the real binary with the channel's
ContentType, the notebook's network (one hidden layer of 128, Adam 0.001, batch 32) for
--epochs epochs; scikit-learn's models get the same standardization (StandardScaler on the
training split). Each model runs once per seed; the table shows mean and range.
"""
import argparse
import json
import os
import struct
import subprocess
import tempfile
import zlib

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tables")
SETS = [
    ("wine (178 x 13, 3 classes)", load_wine, "wine-csv", "text/csv"),
    ("breast cancer (569 x 30, 2 classes)", load_breast_cancer, "cancer-csv",
     "text/csv;header=present"),
    ("digits (1,797 x 64, 10 classes)", load_digits, "digits-npz", "application/x-npz"),
]


def png(path, pixels):
    """A grayscale 8-bit PNG of a 2-D uint8 array."""
    h, w = pixels.shape
    raw = b"".join(b"\0" + bytes(row) for row in pixels)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data)))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def digit_folders(root, x, y):
    """Digits as PNG class folders: 8x8 scans, values 0-16 scaled to 0-255."""
    for i, (img, label) in enumerate(zip(x, y)):
        folder = os.path.join(root, f"digit-{label}")
        os.makedirs(folder, exist_ok=True)
        png(os.path.join(folder, f"{i:04}.png"),
            np.round(img.reshape(8, 8) * 255 / 16).astype(np.uint8))


def ours(binary, fixture, content_type, seed, epochs, extra=None):
    with tempfile.TemporaryDirectory() as base:
        cfg = os.path.join(base, "input", "config")
        os.makedirs(cfg)
        spec = {c: {"ContentType": content_type, "TrainingInputMode": "File"}
                for c in ["train", "test"]}
        json.dump(spec, open(os.path.join(cfg, "inputdataconfig.json"), "w"))
        hp = {"epochs": str(epochs), "seed": str(seed), "checkpoint_interval": "0", **(extra or {})}
        json.dump(hp, open(os.path.join(cfg, "hyperparameters.json"), "w"))
        os.makedirs(os.path.join(base, "input", "data"))
        for c in ["train", "test"]:
            src = fixture(c) if callable(fixture) else os.path.join(FIXTURES, fixture, c)
            os.symlink(os.path.abspath(src), os.path.join(base, "input", "data", c))
        subprocess.run([binary, "train", "--base-dir", base], check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        metrics = json.load(open(os.path.join(base, "model", "metrics.json")))
    return metrics["test"]["accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    args = ap.parse_args()
    print(f"test accuracy, mean (min-max) of {args.seeds} seeds; ours: {args.epochs} epochs")
    print("| set | smtrain (dense 128) | MLPClassifier (100) | LogisticRegression |")
    print("| --- | --- | --- | --- |")
    for name, load, fixture, content_type in SETS:
        data = load()
        x_tr, x_te, y_tr, y_te = train_test_split(
            data.data, data.target, test_size=0.25, stratify=data.target, random_state=0)
        scores = {"ours": [], "mlp": [], "logreg": []}
        for seed in range(args.seeds):
            scores["ours"].append(ours(args.bin, fixture, content_type, seed, args.epochs))
            mlp = make_pipeline(StandardScaler(), MLPClassifier(max_iter=1000, random_state=seed))
            scores["mlp"].append(mlp.fit(x_tr, y_tr).score(x_te, y_te))
            lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            scores["logreg"].append(lr.fit(x_tr, y_tr).score(x_te, y_te))
        cell = lambda v: f"{np.mean(v):.4f} ({min(v):.4f}-{max(v):.4f})"
        print(f"| {name} | {cell(scores['ours'])} | {cell(scores['mlp'])} | "
              f"{cell(scores['logreg'])} |")
        if fixture == "digits-npz":
            with tempfile.TemporaryDirectory() as pics:
                for c, x, y in [("train", x_tr, y_tr), ("test", x_te, y_te)]:
                    digit_folders(os.path.join(pics, c), x, y)
                folders = [ours(args.bin, lambda c: os.path.join(pics, c), "application/x-image",
                                seed, args.epochs, extra) for seed in range(args.seeds)
                           for extra in [None, {"dropout": "0.3"}]]
            print(f"| digits as PNG class folders (8x8 pictures) | {cell(folders[0::2])} | "
                  f"{cell(scores['mlp'])} | {cell(scores['logreg'])} |")
            print(f"| the same, dropout 0.3 | {cell(folders[1::2])} | "
                  f"{cell(scores['mlp'])} | {cell(scores['logreg'])} |")


if __name__ == "__main__":
    main()
