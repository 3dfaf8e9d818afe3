#!/usr/bin/env python3
"""`make bench`: our trainer against the notebook's Keras model and the same network in PyTorch
eager mode, on the same IDX files, same machine, same thread count, alternating programs over
several repetitions; medians and ratios. Also the machine's limit: the GEMM-bound epoch time.

Usage: run.py --bin PATH --python PATH --gemm CMD [--reps 3] [--threads 2] [--batches 32,256]
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, env=None):
    """Runs cmd under wait4; returns (wall seconds, peak RSS MB, stdout text)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            sys.exit(f"{cmd} failed ({p.returncode}):\n{err.read().decode()[-3000:]}")
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def ours(binary, threads, batch, epochs, seed):
    with tempfile.TemporaryDirectory() as base:
        os.makedirs(f"{base}/input/config")
        hp = {"threads": str(threads), "batch_size": str(batch), "epochs": str(epochs), "seed": str(seed)}
        with open(f"{base}/input/config/hyperparameters.json", "w") as f:
            json.dump(hp, f)
        wall, rss, _ = run([binary, "train", "--base-dir", base], env=dict(os.environ, RUST_LOG="warn"))
        with open(f"{base}/model/metrics.json") as f:
            m = json.load(f)
    return dict(program="smtrain", wall_seconds=wall, peak_rss_mb=rss, load_seconds=m["data_load_seconds"],
                train_seconds=m["train_seconds"], epoch_seconds=[e["seconds"] for e in m["epochs"]],
                test_accuracy=m["test"]["accuracy"])


def peer(python, script, threads, batch, epochs, seed):
    cmd = [python, os.path.join(HERE, script), "--threads", str(threads), "--batch", str(batch),
           "--epochs", str(epochs), "--seed", str(seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    wall, rss, out = run(cmd, env=env)
    r = json.loads(out.strip().splitlines()[-1])
    r.update(wall_seconds=wall, peak_rss_mb=rss)
    return r


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--gemm", required=True, help="command printing the GEMM JSON; THREADS and BATCH are substituted")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--seeds", default="42,43,44", help="seeds, one per repetition (cycled)")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    programs = [
        ("smtrain", lambda b, s: ours(a.bin, a.threads, b, a.epochs, s)),
        ("pytorch", lambda b, s: peer(a.python, "torch_fmnist.py", a.threads, b, a.epochs, s)),
        ("keras", lambda b, s: peer(a.python, "keras_fmnist.py", a.threads, b, a.epochs, s)),
    ]
    print(f"threads={a.threads} for every program (libtorch, PyTorch, TensorFlow intra-op; 1 inter-op), "
          f"{a.epochs} epochs, {a.reps} repetitions, programs alternated, medians")
    results = {}
    for batch in [int(b) for b in a.batches.split(",")]:
        gemm_cmd = a.gemm.replace("THREADS", str(a.threads)).replace("BATCH", str(batch))
        rows = {name: [] for name, _ in programs}
        gemms = []
        for rep in range(a.reps):
            # The machine's speed drifts (a shared VM: the same GEMMs have run at 42 and at 126
            # GFLOP/s an hour apart), so the bound is measured in every repetition, beside the
            # programs it bounds, and its median is used.
            out = subprocess.run(shlex.split(gemm_cmd), capture_output=True, text=True, check=True).stdout
            gemms.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  batch {batch} rep {rep + 1}: GEMM-bound epoch {gemms[-1]['gemm_bound_epoch_seconds']:.3f} s "
                  f"({gemms[-1]['gflops']:.1f} GFLOP/s)", flush=True)
            order = programs[rep % len(programs):] + programs[:rep % len(programs)]
            for name, fn in order:
                r = fn(batch, seeds[rep % len(seeds)])
                r["epoch_median"] = statistics.median(r["epoch_seconds"])
                rows[name].append(r)
                print(f"  batch {batch} rep {rep + 1}: {name:<8} wall {r['wall_seconds']:.2f} s, train {r['train_seconds']:.2f} s, "
                      f"epoch {r['epoch_median']:.3f} s, acc {r['test_accuracy']:.4f}", flush=True)
        gemm = sorted(gemms, key=lambda g: g["gemm_bound_epoch_seconds"])[len(gemms) // 2]
        bound = gemm["gemm_bound_epoch_seconds"]
        spread = ", ".join(f"{g['gflops']:.1f}" for g in gemms)
        print(f"\nbatch {batch}: GEMM-bound epoch {bound:.3f} s (median; {gemm['gflops']:.1f} GFLOP/s on this network's "
              f"shapes, each repetition: {spread}; {gemm['flop_per_epoch']:.3e} FLOP per epoch)")
        print(f"| program | whole process s | train s | epoch s | x GEMM-bound | data load s | test accuracy (mean) | peak RSS MB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        summary = {}
        for name, rs in rows.items():
            s = {k: median(rs, k) for k in ("wall_seconds", "train_seconds", "epoch_median", "load_seconds", "peak_rss_mb")}
            s["accuracy_mean"] = statistics.mean(r["test_accuracy"] for r in rs)
            summary[name] = s
            print(f"| {name} | {s['wall_seconds']:.2f} | {s['train_seconds']:.2f} | {s['epoch_median']:.3f} | "
                  f"{s['epoch_median'] / bound:.2f} | {s['load_seconds']:.3f} | {s['accuracy_mean']:.4f} | {s['peak_rss_mb']:.0f} |")
        o = summary["smtrain"]
        for peer_name in ("pytorch", "keras"):
            p = summary[peer_name]
            print(f"smtrain vs {peer_name}: epoch {p['epoch_median'] / o['epoch_median']:.1f}x faster, "
                  f"train {p['train_seconds'] / o['train_seconds']:.1f}x, whole process {p['wall_seconds'] / o['wall_seconds']:.1f}x, "
                  f"accuracy {100 * (o['accuracy_mean'] - p['accuracy_mean']):+.2f} points")
        results[batch] = dict(gemm=gemm, gemm_runs=gemms, summary=summary, runs=rows)
        print()
    with open(os.environ.get("BENCH_JSON", "/tmp/smtrain-bench.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
