"""bench/torch_fmnist.py's network and training for a device: PyTorch eager mode as a PyTorch user
writes it (Glorot-uniform weights, zero biases, Adam(lr 1e-3, eps 1e-7), reshuffled every epoch),
with the whole data set moved to the device first, as our trainer does. Needs only torch (the
GPU machine's python3 may have no NumPy). One JSON line on stdout.

Usage: torch_gpu.py --data DIR [--device cuda] [--batch 32] [--epochs 5] [--seed 42]
                    [--threads 0] [--first-step]
--first-step: stop after the first optimizer step and report the seconds from the process start
(SMTRAIN_T0, a time.time() the caller took just before starting us) to that step's end.
"""
import argparse
import gzip
import json
import os
import struct
import time

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--device", default="cuda")
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--epochs", type=int, default=5)
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--first-step", action="store_true")
a = ap.parse_args()
t0 = float(os.environ.get("SMTRAIN_T0", time.time()))

import torch  # noqa: E402
from torch import nn  # noqa: E402

if a.threads > 0:
    torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
dev = torch.device(a.device)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


def read_idx(name):
    with gzip.open(os.path.join(a.data, name)) as f:
        data = f.read()
    ndims = data[3]
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    return torch.frombuffer(bytearray(data[4 + 4 * ndims :]), dtype=torch.uint8).reshape(dims)


load_start = time.perf_counter()
train_x = (read_idx("train-images-idx3-ubyte.gz").reshape(-1, 784).to(dev).float() / 255.0)
train_y = read_idx("train-labels-idx1-ubyte.gz").to(dev).long()
if not a.first_step:
    test_x = read_idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784).to(dev).float() / 255.0
    test_y = read_idx("t10k-labels-idx1-ubyte.gz").to(dev).long()
sync()
load_seconds = time.perf_counter() - load_start

model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(dev)
for layer in (model[0], model[2]):
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
loss_fn = nn.CrossEntropyLoss()

epoch_seconds = []
n = len(train_y)
sync()
start = time.perf_counter()
for epoch in range(a.epochs):
    t = time.perf_counter()
    order = torch.randperm(n, device=dev)
    for i in range(0, n, a.batch):
        idx = order[i : i + a.batch]
        opt.zero_grad()
        loss = loss_fn(model(train_x[idx]), train_y[idx])
        loss.backward()
        opt.step()
        if a.first_step:
            sync()
            print(json.dumps(dict(program="pytorch", device=str(dev),
                                  first_step_seconds=time.time() - t0)), flush=True)
            raise SystemExit(0)
    sync()
    epoch_seconds.append(time.perf_counter() - t)
train_seconds = time.perf_counter() - start
with torch.no_grad():
    accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
print(json.dumps(dict(program="pytorch", device=str(dev), torch=torch.__version__,
                      load_seconds=load_seconds, train_seconds=train_seconds,
                      epoch_seconds=epoch_seconds, test_accuracy=accuracy)), flush=True)
