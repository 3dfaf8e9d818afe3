#!/usr/bin/env python3
"""`make bench-pictures`: loading a picture channel, next to Keras and a PIL loop, in the same run.

Fashion-MNIST's 60,000 training images are written once (into --work) as 28x28 grey PNG files in
ten class folders, as a user's own pictures sit in S3. Each loader then runs --reps times in a
fresh process, alternating, and must end with the same 60,000 x 28 x 28 uint8 pixels in memory:
- ours: `cargo bench --bench tables -- DIR image` (bench/tables.rs), the job's own loader;
- keras: `tf.keras.utils.image_dataset_from_directory(DIR, color_mode="grayscale",
  image_size=(28, 28), batch_size=None, shuffle=False)`, gathered into one uint8 array;
- pil: a loop over the files, `np.asarray(Image.open(f))` into one preallocated uint8 array.
Reported: median seconds of the load alone (no interpreter or process start), the speed-up
against each peer, and the peak resident memory the load added (VmHWM at the end less VmRSS
before it, as ours is measured), against the decoded uint8 images (47 MB).
"""
import argparse
import os
import shlex
import statistics

from common import read_idx
from tables import run_json
CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]

KERAS = """
import os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
tf.config.threading.set_inter_op_parallelism_threads(int(sys.argv[2]))
tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[2]))
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = status("VmRSS:")
t = time.perf_counter()
ds = tf.keras.utils.image_dataset_from_directory(
    sys.argv[1], color_mode="grayscale", image_size=(28, 28), batch_size=None, shuffle=False,
    verbose=False)
a = np.stack([img.numpy().astype(np.uint8)[:, :, 0] for img, _ in ds])
s = time.perf_counter() - t
print('{"seconds": %f, "rows": %d, "added": %d}' % (s, a.shape[0], status("VmHWM:") - before))
"""

PIL_LOOP = """
import os, sys, time
import numpy as np
from PIL import Image
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = status("VmRSS:")
t = time.perf_counter()
root = sys.argv[1]
files = [os.path.join(root, c, f) for c in sorted(os.listdir(root))
         for f in sorted(os.listdir(os.path.join(root, c)))]
a = np.empty((len(files), 28, 28), np.uint8)
for i, f in enumerate(files):
    with Image.open(f) as img:
        a[i] = np.asarray(img)
s = time.perf_counter() - t
print('{"seconds": %f, "rows": %d, "added": %d}' % (s, a.shape[0], status("VmHWM:") - before))
"""


def prepare(work):
    """The training set as PNG class folders, written once."""
    root = os.path.join(work, "png")
    done = os.path.join(work, ".done")
    if os.path.exists(done):
        return root
    from PIL import Image

    images = read_idx("train-images-idx3-ubyte.gz")
    labels = read_idx("train-labels-idx1-ubyte.gz")
    for c in CLASSES:
        os.makedirs(os.path.join(root, c), exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(os.path.join(root, CLASSES[label], f"{i:05}.png"))
    open(done, "w").close()
    return root


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loader", required=True, help="the command that runs bench/tables.rs")
    ap.add_argument("--python", required=True, help="a Python with TensorFlow and Pillow")
    ap.add_argument("--work", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    root = prepare(args.work)
    decoded = 60000 * 28 * 28
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = {k: [] for k in ["ours", "keras", "pil"]}
    mem = {}
    for _ in range(args.reps):
        for key, cmd in [
            ("ours", shlex.split(args.loader) + [root, "image"]),
            ("keras", [args.python, "-c", KERAS, root, str(args.threads)]),
            ("pil", [args.python, "-c", PIL_LOOP, root]),
        ]:
            r = run_json(cmd, env)
            if r["rows"] != 60000:
                raise RuntimeError(f"{key} loaded {r['rows']} images, not 60,000")
            rows[key].append(r["seconds"])
            added = r.get("added", r.get("rss_peak", 0) - r.get("rss_before", 0))
            mem[key] = max(mem.get(key, 0), added)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"Fashion-MNIST train set as 60,000 PNG files in 10 class folders, median of "
          f"{args.reps}, load only, {args.threads} threads")
    print("| loader | seconds | peak memory added | vs decoded uint8 |")
    print("| --- | --- | --- | --- |")
    for k in rows:
        print(f"| {k} | {med[k]:.3f} | {mem[k] / 1e6:.0f} MB | {mem[k] / decoded:.2f}x |")
    print(f"ours: {med['keras'] / med['ours']:.1f}x faster than Keras' "
          f"image_dataset_from_directory, {med['pil'] / med['ours']:.1f}x faster than the PIL loop")


if __name__ == "__main__":
    main()
