#!/usr/bin/env python3
"""`make bench-dist`: one process against two data-parallel ranks on loopback, on the real
Fashion-MNIST at several global batch sizes, in the same run and on the same machine.

Each rank is the real `train` binary with its own base folder and resourceconfig.json (hosts
127.0.0.1 and 127.0.0.2). The single process gets all THREADS threads; each rank gets THREADS/2,
so both use the same cores. Reported per batch size: median seconds per epoch (epochs after the
first, which warms up), the mean all-reduce time per step as rank 0 logs it (waiting for the
slower rank included), steps per epoch, and the all-reduce's share of the epoch.

Usage: dist.py --bin PATH [--threads 2] [--batches 32,256,1024] [--epochs 3] [--reps 1]
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

TRAIN_SAMPLES = 60000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job(base, hp, rc=None):
    os.makedirs(f"{base}/input/config")
    with open(f"{base}/input/config/hyperparameters.json", "w") as f:
        json.dump({k: str(v) for k, v in hp.items()}, f)
    if rc:
        with open(f"{base}/input/config/resourceconfig.json", "w") as f:
            json.dump(rc, f)


def run_ranks(binary, ranks, threads, batch, epochs):
    """Runs `ranks` processes of one job; returns rank 0's epoch seconds and all-reduce mean."""
    hosts = [f"127.0.0.{i + 1}" for i in range(ranks)]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for r in range(ranks):
            base = f"{tmp}/rank{r}"
            hp = dict(threads=threads, batch_size=batch, epochs=epochs, distributed_port=port,
                      checkpoint_interval=0)
            job(base, hp, dict(current_host=hosts[r], hosts=hosts) if ranks > 1 else None)
            err = open(f"{base}/stderr.log", "w")
            env = dict(os.environ, RUST_LOG="info", OMP_NUM_THREADS=str(threads))
            procs.append((subprocess.Popen([binary, "train", "--base-dir", base], stdout=subprocess.DEVNULL,
                                           stderr=err, env=env), base))
        for p, base in procs:
            if p.wait() != 0:
                sys.exit(f"rank failed:\n{open(f'{base}/stderr.log').read()[-3000:]}")
        base = procs[0][1]
        with open(f"{base}/model/metrics.json") as f:
            m = json.load(f)
        log = open(f"{base}/stderr.log").read()
    found = re.search(r"all_reduces=(\d+) mean_ms=\"?([\d.]+)", log)
    mean_ms = float(found.group(2)) if found else None
    return [e["seconds"] for e in m["epochs"]], mean_ms, m["test"]["accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="32,256,1024")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    rows = []
    for batch in [int(b) for b in a.batches.split(",")]:
        results = {1: [], 2: []}
        reduce_ms, acc = [], {}
        for _ in range(a.reps):
            for ranks in (1, 2):  # alternating
                threads = max(1, a.threads // ranks)
                epochs, mean_ms, accuracy = run_ranks(a.bin, ranks, threads, batch, a.epochs)
                results[ranks].extend(epochs[1:] or epochs)
                acc[ranks] = accuracy
                if ranks == 2 and mean_ms is not None:
                    reduce_ms.append(mean_ms)
        steps = -(-TRAIN_SAMPLES // batch)
        one, two = statistics.median(results[1]), statistics.median(results[2])
        ms = statistics.median(reduce_ms)
        rows.append(dict(batch=batch, steps_per_epoch=steps, epoch_1_process=one, epoch_2_ranks=two,
                         speedup=one / two, all_reduce_ms=ms, all_reduce_share=ms * steps / 1e3 / two,
                         accuracy_1=acc[1], accuracy_2=acc[2]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.threads} threads in all (1 process: {a.threads}; 2 ranks: {max(1, a.threads // 2)} each), "
          f"{a.epochs} epochs, median of epochs 2..{a.epochs} over {a.reps} rep(s)\n")
    print("| global batch | steps/epoch | 1 process s/epoch | 2 ranks s/epoch | 2 ranks vs 1 | all-reduce ms/step | all-reduce share | test acc 1 / 2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['steps_per_epoch']} | {r['epoch_1_process']:.3f} | {r['epoch_2_ranks']:.3f} | "
              f"{r['speedup']:.2f}x | {r['all_reduce_ms']:.3f} | {100 * r['all_reduce_share']:.0f}% | "
              f"{r['accuracy_1']:.4f} / {r['accuracy_2']:.4f} |")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"\n({time.time() - start:.0f} s)")
