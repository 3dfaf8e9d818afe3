#!/usr/bin/env python3
"""The checks and timings of bench/gpu.sh (docs/gpu.md), standard library only: the notebook's job
on DEVICE and on the CPU, predict on the DEVICE model, two Gloo ranks on one device, 5-epoch
timings against PyTorch eager, and time to the first step. Each step has its own time limit and
the whole run a deadline; results are rewritten to OUT after every step, so a run cut short still
leaves what it measured.

Usage: gpu_run.py --bin TRAIN --data DIR --out DIR [--device cuda] [--epochs 5] [--reps 2]
                  [--batches 32,256,1024] [--budget 450]
DIR holds train/ and test/, each with the two gzipped IDX files of real Fashion-MNIST.
"""
import argparse
import gzip
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
START = time.monotonic()
A = None  # the parsed arguments
RESULTS = {"checks": {}, "timings": [], "first_step": [], "env": {}}
WORK = None


def log(msg):
    print(f"[{time.monotonic() - START:6.1f}s] {msg}", flush=True)


def left():
    return A.budget - (time.monotonic() - START)


class Skipped(Exception):
    pass


def limit(step_limit):
    """The time a command may take: its step's limit, cut to what is left of the budget."""
    t = min(step_limit, left() - 5)
    if t < 10:
        raise Skipped(f"{left():.0f} s left of the budget")
    return t


def append_log(title, path):
    with open(os.path.join(A.out, "jobs.log"), "a") as out:
        out.write(f"===== {title}\n")
        try:
            with open(path, errors="replace") as f:
                out.write(f.read())
        except OSError as e:
            out.write(f"({e})\n")


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- jobs of our binary

def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def job_dir(name, hp, train=None, test=True, resourceconfig=None):
    """A SageMaker base folder: train (and test) channels from the carried data."""
    base = os.path.join(WORK, name)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(f"{base}/input/config")
    channels = {"train": train or os.path.join(A.data, "train")}
    if test:
        channels["test"] = os.path.join(A.data, "test")
    for ch, src in channels.items():
        os.makedirs(f"{base}/input/data/{ch}")
        for f in os.listdir(src):
            link_or_copy(os.path.join(src, f), f"{base}/input/data/{ch}/{f}")
    spec = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
    with open(f"{base}/input/config/inputdataconfig.json", "w") as f:
        json.dump({ch: spec for ch in channels}, f)
    with open(f"{base}/input/config/hyperparameters.json", "w") as f:
        json.dump({k: str(v) for k, v in hp.items()}, f)
    if resourceconfig:
        with open(f"{base}/input/config/resourceconfig.json", "w") as f:
            json.dump(resourceconfig, f)
    return base


def start_ours(base):
    env = dict(os.environ, RUST_LOG="info")
    env.pop("SAGEMAKER_BASE_DIR", None)
    out = open(f"{base}/stdout.log", "w")
    err = open(f"{base}/stderr.log", "w")
    p = subprocess.Popen([A.bin, "train", "--base-dir", base], stdout=out, stderr=err, env=env)
    return p, out, err


def wait(p, timeout):
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return "timeout"


def run_ours(name, hp, step_limit, **kw):
    """Trains one job; returns its metrics.json and the process's wall seconds."""
    base = job_dir(name, hp, **kw)
    t = limit(step_limit)
    t0 = time.perf_counter()
    p, out, err = start_ours(base)
    code = wait(p, t)
    wall = time.perf_counter() - t0
    out.close()
    err.close()
    append_log(f"{name}: train {json.dumps(hp)} -> {code} in {wall:.1f} s", f"{base}/stderr.log")
    if code != 0:
        raise RuntimeError(f"{name}: exit {code}\n{tail(base + '/stderr.log')}")
    with open(f"{base}/model/metrics.json") as f:
        metrics = json.load(f)
    return base, metrics, wall


def run_peer(args, step_limit, name):
    """bench/torch_gpu.py with args; returns its JSON line and the process's wall seconds."""
    t = limit(step_limit)
    env = dict(os.environ, PYTHONUNBUFFERED="1", SMTRAIN_T0=repr(time.time()))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([A.python, os.path.join(HERE, "torch_gpu.py")] + args, env=env,
                           capture_output=True, text=True, timeout=t)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{name}: timed out after {t:.0f} s")
    wall = time.perf_counter() - t0
    with open(os.path.join(A.out, "jobs.log"), "a") as f:
        f.write(f"===== {name}: torch_gpu.py {' '.join(args)} -> {p.returncode} in {wall:.1f} s\n")
        f.write(p.stderr[-4000:])
        f.write(p.stdout[-2000:])
    if p.returncode != 0:
        raise RuntimeError(f"{name}: exit {p.returncode}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), wall


# ---------------------------------------------------------------- the steps

def check(name, ok, detail):
    RESULTS["checks"][name] = {"pass": bool(ok), "detail": detail}
    log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")


def step_accuracy():
    """The notebook's job on DEVICE and on the CPU, same seed: test accuracies within 0.5 points."""
    hp = {"device": A.device, "epochs": A.epochs, "seed": 42}
    dev_base, dev_m, dev_wall = run_ours(f"job-on-{A.device}", hp, 150)
    cpu_base, cpu_m, cpu_wall = run_ours("job-on-cpu-reference", dict(hp, device="cpu"), 150)
    a, b = dev_m["test"]["accuracy"], cpu_m["test"]["accuracy"]
    evaluation = os.path.join(dev_base, "output/data/evaluation.json")
    for src, dst in [(f"{dev_base}/model/metrics.json", f"metrics-{A.device}.json"),
                     (evaluation, f"evaluation-{A.device}.json")]:
        if os.path.exists(src):
            shutil.copy(src, os.path.join(A.out, dst))
    RESULTS["job"] = {A.device: summary(dev_m, dev_wall), "cpu-run": summary(cpu_m, cpu_wall)}
    device_line = next((l for l in open(f"{dev_base}/stderr.log") if " device" in l and "reason" in l), "")
    RESULTS["job"]["device_log"] = device_line.strip()
    check("accuracy_device_vs_cpu", abs(a - b) <= 0.005,
          f"{A.device} {a:.4f} vs cpu {b:.4f} (|diff| {abs(a - b) * 100:.2f} points, limit 0.5)")
    check("evaluation_json_written", os.path.exists(evaluation), evaluation)
    if A.device == "cuda":
        check("trained_on_cuda", "device=cuda" in device_line, device_line.strip())
    return dev_base, a


def summary(m, wall):
    return {"test_accuracy": m["test"]["accuracy"], "train_seconds": m["train_seconds"],
            "epoch_seconds": [e["seconds"] for e in m["epochs"]],
            "data_load_seconds": m["data_load_seconds"], "wall_seconds": wall}


def read_labels(path):
    with gzip.open(path) as f:
        data = f.read()
    assert struct.unpack(">I", data[:4])[0] == 0x0801, path
    return list(data[8:])


def step_predict(model_base, job_accuracy):
    """`train predict` on the DEVICE-trained model and the test images: the job's accuracy."""
    images = os.path.join(A.data, "test/t10k-images-idx3-ubyte.gz")
    labels = read_labels(os.path.join(A.data, "test/t10k-labels-idx1-ubyte.gz"))
    out = os.path.join(WORK, "predictions.jsonl")
    t0 = time.perf_counter()
    p = subprocess.run([A.bin, "predict", "--model", f"{model_base}/model", "--top-k", "1",
                        "-o", out, images], capture_output=True, text=True, timeout=limit(90))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"predict: exit {p.returncode}\n{p.stderr[-3000:]}")
    classes = [json.loads(line)["class"] for line in open(out)]
    right = sum(c == y for c, y in zip(classes, labels))
    acc = right / len(labels)
    RESULTS["predict"] = {"accuracy": acc, "images": len(classes), "seconds": wall}
    check("predict_reproduces_test_accuracy",
          len(classes) == len(labels) and abs(acc - job_accuracy) <= 0.0005,
          f"predict {acc:.4f} ({right}/{len(labels)}) vs job {job_accuracy:.4f} "
          f"(difference {round((acc - job_accuracy) * len(labels))} images, limit 5)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_distributed():
    """Two ranks on one DEVICE through Gloo, hosts 127.0.0.1 and 127.0.0.2 (as
    tests/it/distributed.rs): they must end with bit-identical weights."""
    hosts = ["127.0.0.1", "127.0.0.2"]
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 2) // 2))
    hp = {"device": A.device, "epochs": A.dist_epochs, "batch_size": A.dist_batch, "seed": 42,
          "distributed_port": free_port(), "threads": threads, "checkpoint_interval": 0}
    t = limit(180)
    ranks = []
    for r, h in enumerate(hosts):
        base = job_dir(f"rank{r}", hp, resourceconfig={"current_host": h, "hosts": hosts})
        ranks.append((base,) + start_ours(base))
    t0 = time.perf_counter()
    codes = [wait(p, max(1, t - (time.perf_counter() - t0))) for _, p, _, _ in ranks]
    wall = time.perf_counter() - t0
    digests, exchange = [], None
    for r, (base, _, out, err) in enumerate(ranks):
        out.close()
        err.close()
        append_log(f"rank {r}: train {json.dumps(hp)} -> {codes[r]}", f"{base}/stderr.log")
        text = open(f"{base}/stderr.log", errors="replace").read()
        m = re.search(r"weights_blake3=([0-9a-f]{64})", text)
        digests.append(m.group(1) if m else None)
        if r == 0:
            m = re.search(r'mean_ms="?([0-9.]+)', text)
            exchange = float(m.group(1)) if m else None
    acc = None
    if codes[0] == 0:
        with open(f"{ranks[0][0]}/model/metrics.json") as f:
            acc = json.load(f)["test"]["accuracy"]
    RESULTS["distributed"] = {"codes": codes, "digests": digests, "wall_seconds": wall,
                              "exchange_mean_ms": exchange, "test_accuracy": acc,
                              "epochs": A.dist_epochs, "global_batch": A.dist_batch}
    check("two_ranks_bit_identical",
          codes == [0, 0] and digests[0] is not None and digests[0] == digests[1],
          f"exit codes {codes}, weights blake3 {[d[:16] if d else None for d in digests]}, "
          f"exchange mean {exchange} ms, {wall:.1f} s, test accuracy {acc}")


def step_timings():
    """5 epochs at each batch size on DEVICE, ours and PyTorch eager, alternating, REPS times
    (repetition by repetition, so that a run cut short still has every batch size)."""
    for rep in range(A.reps):
        for batch in A.batches:
            hp = {"device": A.device, "epochs": A.epochs, "batch_size": batch, "seed": 42 + rep,
                  "checkpoint_interval": 0}
            _, m, wall = run_ours(f"time-{batch}-{rep}", hp, 120)
            row = dict(program="smtrain", batch=batch, rep=rep, wall_seconds=wall,
                       **{k: v for k, v in summary(m, wall).items() if k != "wall_seconds"})
            RESULTS["timings"].append(row)
            log(f"smtrain batch {batch} rep {rep}: train {row['train_seconds']:.2f} s, "
                f"wall {wall:.2f} s, accuracy {row['test_accuracy']:.4f}")
            r, wall = run_peer(["--data", A.flat, "--device", A.device, "--batch", str(batch),
                                "--epochs", str(A.epochs), "--seed", str(42 + rep)], 150,
                               f"pytorch-{batch}-{rep}")
            row = dict(r, batch=batch, rep=rep, wall_seconds=wall)
            RESULTS["timings"].append(row)
            log(f"pytorch batch {batch} rep {rep}: train {r['train_seconds']:.2f} s, "
                f"wall {wall:.2f} s, accuracy {r['test_accuracy']:.4f}")
            write_results()


def write_idx_slice(src_dir, dst_dir, n):
    """The first n samples of the train set, as gzipped IDX files with the usual names."""
    os.makedirs(dst_dir, exist_ok=True)
    for name, per in [("train-images-idx3-ubyte.gz", 784), ("train-labels-idx1-ubyte.gz", 1)]:
        with gzip.open(os.path.join(src_dir, name)) as f:
            data = f.read()
        ndims = data[3]
        head = bytearray(data[: 4 + 4 * ndims])
        head[4:8] = struct.pack(">I", n)
        off = 4 + 4 * ndims
        with gzip.open(os.path.join(dst_dir, name), "wb") as f:
            f.write(bytes(head) + data[off : off + n * per])


def step_first_step():
    """Seconds from process start to the end of the first optimizer step (batch 32), on a train
    set of one batch so that both programs' first epoch is that step: ours until its
    "epoch done" log line, PyTorch until the step is synchronized."""
    tiny = os.path.join(WORK, "one-batch")
    write_idx_slice(os.path.join(A.data, "train"), tiny, 32)
    for rep in range(A.reps):
        hp = {"device": A.device, "epochs": 1, "batch_size": 32, "checkpoint_interval": 0}
        base = job_dir(f"first-{rep}", hp, train=tiny, test=False)
        t = limit(60)
        t0 = time.time()
        env = dict(os.environ, RUST_LOG="info")
        p = subprocess.Popen([A.bin, "train", "--base-dir", base], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=env)
        first, lines = None, []
        watchdog = threading.Timer(t, p.kill)
        watchdog.start()
        for line in p.stderr:
            lines.append(line)
            if first is None and "epoch done" in line:
                first = time.time() - t0
        code = wait(p, t)
        watchdog.cancel()
        with open(os.path.join(A.out, "jobs.log"), "a") as f:
            f.write(f"===== first step {rep}: -> {code}\n" + "".join(lines))
        if code != 0 or first is None:
            raise RuntimeError(f"first step: exit {code}\n{''.join(lines[-20:])}")
        RESULTS["first_step"].append(dict(program="smtrain", rep=rep, first_step_seconds=first))
        r, _ = run_peer(["--data", tiny, "--device", A.device, "--first-step"], 60, f"first-{rep}")
        RESULTS["first_step"].append(dict(r, rep=rep))
        log(f"first step rep {rep}: smtrain {first:.2f} s, pytorch {r['first_step_seconds']:.2f} s")


# ---------------------------------------------------------------- results

def median_of(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown():
    lines = [f"# GPU run: device={A.device}, {A.epochs} epochs", ""]
    env = RESULTS["env"]
    lines += [f"- {k}: {v}" for k, v in env.items()] + [""]
    lines += ["| check | result | detail |", "| --- | --- | --- |"]
    for name, c in RESULTS["checks"].items():
        lines.append(f"| {name} | {'pass' if c['pass'] else 'FAIL'} | {c['detail']} |")
    for name, why in RESULTS.get("skipped", {}).items():
        lines.append(f"| {name} | not run | {why} |")
    lines += ["", f"Training, {A.epochs} epochs on {A.device}, medians of {A.reps} "
              "(train s: the training loop only; process s: start to exit)", "",
              "| batch | program | train s | s/epoch | process s | test accuracy |",
              "| --- | --- | --- | --- | --- | --- |"]
    for batch in A.batches:
        for prog in ["smtrain", "pytorch"]:
            rows = [r for r in RESULTS["timings"] if r["batch"] == batch and r["program"] == prog]
            if not rows:
                continue
            for r in rows:
                r["s_per_epoch"] = statistics.median(r["epoch_seconds"])
            lines.append(f"| {batch} | {prog} | {fmt(median_of(rows, 'train_seconds'))} | "
                         f"{fmt(median_of(rows, 's_per_epoch'), '.3f')} | "
                         f"{fmt(median_of(rows, 'wall_seconds'))} | "
                         f"{fmt(median_of(rows, 'test_accuracy'), '.4f')} |")
    if RESULTS["first_step"]:
        lines += ["", "Time to first step (process start to the end of the first batch-32 step), "
                  f"median of {A.reps}", "", "| program | seconds |", "| --- | --- |"]
        for prog in ["smtrain", "pytorch"]:
            rows = [r for r in RESULTS["first_step"] if r["program"] == prog]
            lines.append(f"| {prog} | {fmt(median_of(rows, 'first_step_seconds'))} |")
    return "\n".join(lines) + "\n"


def write_results():
    with open(os.path.join(A.out, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)
    with open(os.path.join(A.out, "results.md"), "w") as f:
        f.write(markdown())


def main():
    global A, WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", default="32,256,1024")
    ap.add_argument("--dist-epochs", type=int, default=1)
    ap.add_argument("--dist-batch", type=int, default=256)
    ap.add_argument("--budget", type=float, default=450)
    ap.add_argument("--steps", default="accuracy,predict,distributed,timings,first_step")
    A = ap.parse_args()
    A.batches = [int(b) for b in A.batches.split(",")]
    os.makedirs(A.out, exist_ok=True)
    WORK = tempfile.mkdtemp(prefix="smtrain-gpu-")
    # PyTorch reads the four files by name from one folder.
    A.flat = os.path.join(WORK, "flat")
    os.makedirs(A.flat)
    for ch in ["train", "test"]:
        for f in os.listdir(os.path.join(A.data, ch)):
            link_or_copy(os.path.join(A.data, ch, f), os.path.join(A.flat, f))
    RESULTS["env"] = {k: os.environ.get(k) for k in ["SMTRAIN_TORCH_VERSION", "SMTRAIN_GPU",
                                                       "SMTRAIN_COMMIT", "OMP_NUM_THREADS"]
                      if os.environ.get(k)}
    RESULTS["env"]["cpu_count"] = os.cpu_count()
    steps = A.steps.split(",")
    model = None
    failed = False
    for name in steps:
        log(f"--- {name} ({left():.0f} s left)")
        try:
            if name == "accuracy":
                model = step_accuracy()
            elif name == "predict":
                if model is None:
                    raise Skipped("no model from the accuracy step")
                step_predict(*model)
            elif name == "distributed":
                step_distributed()
            elif name == "timings":
                step_timings()
            elif name == "first_step":
                step_first_step()
        except Skipped as e:
            RESULTS.setdefault("skipped", {})[name] = str(e)
            log(f"SKIP {name}: {e}")
        except Exception as e:  # noqa: BLE001 - one step's failure must not lose the others
            failed = True
            RESULTS.setdefault("errors", {})[name] = str(e)
            check(name, False, str(e).splitlines()[0])
            log(f"ERROR {name}: {e}")
        write_results()
    shutil.rmtree(WORK, ignore_errors=True)
    print(markdown(), flush=True)
    failed = failed or not all(c["pass"] for c in RESULTS["checks"].values())
    skipped = sorted(RESULTS.get("skipped", {}))
    log("SOME CHECKS FAILED" if failed else f"checks passed; NOT RUN: {', '.join(skipped)}"
        if skipped else "all checks passed, every step run")
    return 1 if failed else 3 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
