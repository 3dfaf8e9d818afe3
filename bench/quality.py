"""`make quality`: test accuracy of the notebook's defaults, the dense recipe, and the recipe
without each of its ingredients, over several seeds, on the real Fashion-MNIST.

Each run is a fresh `train train` process on its own /opt/ml tree with only a
hyperparameters.json (the trainer then reads /usr/share/datasets/fashion-mnist). The table gives
the mean test accuracy, its spread (lowest to highest) and the mean wall time per run. With
--validation every run holds out the last 10% of the training set (validation_split=0.1) and the
table reports validation accuracy instead: what the recipe is chosen on, since the test set must
not choose it.

    python3 bench/quality.py --bin BIN [--seeds 1,2,3] [--ablation-seeds 1,2,3] [--threads 2]
        [--only recipe,...] [--validation] [--json results.jsonl]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# The recipe, as infra/recipe-hyperparameters.json holds it (a test keeps the two equal).
RECIPE_FILE = os.path.join(os.path.dirname(__file__), "..", "infra", "recipe-hyperparameters.json")

# Zalando's benchmark table: the best plain dense network (MLPClassifier 256-128-100).
ZALANDO_MLP = 0.8833


def recipe():
    with open(RECIPE_FILE) as f:
        return json.load(f)


def configurations():
    """(name, hyperparameters): the defaults, the recipe, and the recipe less one ingredient."""
    r = recipe()
    without = {
        "augment_shift": {"augment_shift": "0"},
        "augment_flip": {"augment_flip": "false"},
        "label_smoothing": {"label_smoothing": "0"},
        "dropout": {"dropout": "0"},
        "width (the notebook's 128 units)": {"hidden_units": "128"},
    }
    yield "notebook defaults", {}
    yield "recipe", r
    for ingredient, change in without.items():
        if all(k in r for k in change):
            yield f"recipe without {ingredient}", {**r, **change}


def run_one(binary, hp, seed, threads, validation):
    hp = {**hp, "seed": str(seed), "threads": str(threads)}
    if validation:
        hp["validation_split"] = "0.1"
    with tempfile.TemporaryDirectory(prefix="smtrain-quality-") as base:
        os.makedirs(os.path.join(base, "input", "config"))
        with open(os.path.join(base, "input", "config", "hyperparameters.json"), "w") as f:
            json.dump(hp, f)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RUST_LOG": "warn"}
        start = time.perf_counter()
        proc = subprocess.run(
            [binary, "train", "--base-dir", base], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"{hp}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        with open(os.path.join(base, "model", "metrics.json")) as f:
            metrics = json.load(f)
    last = metrics["epochs"][-1]
    return {
        "test_accuracy": metrics["test"]["accuracy"],
        "validation_accuracy": last.get("validation_accuracy"),
        "seconds": seconds,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--ablation-seeds", help="seeds for the 'recipe without' rows (default: --seeds)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated configuration names")
    p.add_argument("--validation", action="store_true")
    p.add_argument("--json", help="append one JSON line per run here")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    ablation_seeds = [int(s) for s in (a.ablation_seeds or a.seeds).split(",")]
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    metric = "validation_accuracy" if a.validation else "test_accuracy"
    rows = []
    for name, hp in configurations():
        if only and name not in only:
            continue
        runs = []
        for seed in ablation_seeds if name.startswith("recipe without") else seeds:
            r = run_one(a.bin, hp, seed, a.threads, a.validation)
            runs.append(r)
            print(f"{name} seed={seed}: {metric}={r[metric]:.4f} in {r['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps({"name": name, "seed": seed, "hp": hp, **r}) + "\n")
        accs = [r[metric] for r in runs]
        rows.append((name, len(runs), statistics.mean(accs), min(accs), max(accs),
                     statistics.mean(r["seconds"] for r in runs)))
    what = "validation accuracy (last 10% of train held out)" if a.validation else "test accuracy"
    print(f"| configuration | seeds | {what}, mean | lowest – highest | s per run |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, mean, lo, hi, secs in rows:
        print(f"| {name} | {n} | {mean:.4f} | {lo:.4f} – {hi:.4f} | {secs:.0f} |")
    if not a.validation:
        print(f"| Zalando's best MLP (256-128-100), for reference | | {ZALANDO_MLP} | | |")


if __name__ == "__main__":
    main()
