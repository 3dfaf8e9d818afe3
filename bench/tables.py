#!/usr/bin/env python3
"""`make bench-tables`: loading a table channel, next to pandas and pyarrow, in the same run.

Fashion-MNIST's 60,000 training images are written once (into --work) as a label-first CSV of
pixel values and as Parquet (label + 784 pixel columns). Each loader then runs --reps times in
a fresh process, alternating:
- ours: `cargo bench --bench tables -- DIR FORMAT` (bench/tables.rs), the job's own loader;
- pandas: `pandas.read_csv(f, header=None, engine="c").to_numpy(np.float32)`;
- pyarrow: `pyarrow.parquet.read_table(f)`, its columns stacked into one float32 array.
Reported: median seconds of the load alone (no interpreter or process start), and the peak
resident memory the load added, against the decoded float32 table (188 MB).
Then one training job on the CSV channel and one on the same images as IDX, two epochs each,
same threads: the second epoch's seconds, which must match (the same fast path).
"""
import argparse
import gzip
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist"

PANDAS = """
import resource, sys, time
import numpy as np, pandas as pd
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
a = pd.read_csv(sys.argv[1], header=None, engine="c").to_numpy(np.float32)
s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print('{"seconds": %f, "rows": %d, "added": %d}' % (s, a.shape[0], (peak - before) * 1024))
"""

PYARROW = """
import resource, sys, time
import numpy as np, pyarrow.parquet as pq
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
table = pq.read_table(sys.argv[1])
a = np.stack([c.to_numpy() for c in table.columns], axis=1).astype(np.float32)
s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print('{"seconds": %f, "rows": %d, "added": %d}' % (s, a.shape[0], (peak - before) * 1024))
"""


def idx(name):
    with gzip.open(os.path.join(FASHION, name)) as f:
        data = f.read()
    n = data[3]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * n)


def prepare(work):
    """The training set as CSV and as Parquet, written once."""
    csv = os.path.join(work, "csv", "train.csv")
    parquet = os.path.join(work, "parquet", "train.parquet")
    idx_dir = os.path.join(work, "idx")
    done = os.path.join(work, ".done")
    if os.path.exists(done):
        return csv, parquet, idx_dir
    import pandas as pd

    images = idx("train-images-idx3-ubyte.gz").reshape(-1, 784)
    labels = idx("train-labels-idx1-ubyte.gz")
    table = np.column_stack([labels, images])
    os.makedirs(os.path.dirname(csv), exist_ok=True)
    np.savetxt(csv, table, fmt="%d", delimiter=",")
    df = pd.DataFrame(table, columns=["label"] + [f"pixel{i + 1}" for i in range(784)])
    os.makedirs(os.path.dirname(parquet), exist_ok=True)
    df.to_parquet(parquet, index=False)
    os.makedirs(idx_dir, exist_ok=True)
    for name in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]:
        link = os.path.join(idx_dir, name)
        if not os.path.exists(link):
            os.symlink(os.path.join(FASHION, name), link)
    open(done, "w").close()
    return csv, parquet, idx_dir


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def epoch_seconds(binary, channel_dir, content_type, threads):
    """The second epoch's seconds of a two-epoch job on one channel."""
    with tempfile.TemporaryDirectory() as base:
        cfg = os.path.join(base, "input", "config")
        os.makedirs(cfg)
        spec = {"train": {"TrainingInputMode": "File"}}
        if content_type:
            spec["train"]["ContentType"] = content_type
        json.dump(spec, open(os.path.join(cfg, "inputdataconfig.json"), "w"))
        json.dump({"epochs": "2", "threads": str(threads), "checkpoint_interval": "0"},
                  open(os.path.join(cfg, "hyperparameters.json"), "w"))
        os.makedirs(os.path.join(base, "input", "data"))
        os.symlink(channel_dir, os.path.join(base, "input", "data", "train"))
        out = subprocess.run([binary, "train", "--base-dir", base], check=True,
                             capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("metrics: epoch=2 "):
            fields = dict(kv.split("=") for kv in line.split()[1:])
            return float(fields["epoch_seconds"])
    raise RuntimeError("no epoch 2 line:\n" + out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the train binary")
    ap.add_argument("--loader", required=True, help="the command that runs bench/tables.rs")
    ap.add_argument("--work", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    csv, parquet, idx_dir = prepare(args.work)
    decoded = 60000 * 784 * 4
    rows = {k: [] for k in ["ours_csv", "pandas", "ours_parquet", "pyarrow"]}
    mem = {}
    for _ in range(args.reps):
        for key, cmd in [
            ("ours_csv", shlex.split(args.loader) + [os.path.dirname(csv), "csv"]),
            ("pandas", [sys.executable, "-c", PANDAS, csv]),
            ("ours_parquet", shlex.split(args.loader) + [os.path.dirname(parquet), "parquet"]),
            ("pyarrow", [sys.executable, "-c", PYARROW, parquet]),
        ]:
            r = run_json(cmd)
            rows[key].append(r["seconds"])
            added = r.get("added", r.get("rss_peak", 0) - r.get("rss_before", 0))
            mem[key] = max(mem.get(key, 0), added)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"Fashion-MNIST train set (60,000 x 784), median of {args.reps}, load only")
    print("| loader | seconds | peak memory added | vs decoded float32 |")
    print("| --- | --- | --- | --- |")
    for k in rows:
        print(f"| {k} | {med[k]:.3f} | {mem[k] / 1e6:.0f} MB | {mem[k] / decoded:.2f}x |")
    print(f"CSV: ours {med['pandas'] / med['ours_csv']:.1f}x faster than pandas.read_csv")
    print(f"Parquet: ours {med['pyarrow'] / med['ours_parquet']:.2f}x pyarrow's speed")
    idx_s = epoch_seconds(args.bin, idx_dir, None, args.threads)
    csv_s = epoch_seconds(args.bin, os.path.dirname(csv), "text/csv", args.threads)
    print(f"epoch 2 seconds, {args.threads} threads: IDX {idx_s:.3f}, CSV {csv_s:.3f} "
          f"(ratio {csv_s / idx_s:.2f})")


if __name__ == "__main__":
    main()
