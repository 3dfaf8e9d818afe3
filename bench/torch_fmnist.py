"""The same network in PyTorch eager mode, as a PyTorch user writes it: Glorot-uniform weights,
zero biases, Adam(lr 1e-3, eps 1e-7), batch 32, reshuffled every epoch, 5 epochs."""
import time

from common import args, load, report

a = args()
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(a["threads"])
torch.manual_seed(a["seed"])

(train_x, train_y, test_x, test_y), load_seconds = load()
train_x, train_y = torch.from_numpy(train_x).reshape(-1, 784), torch.from_numpy(train_y)
test_x, test_y = torch.from_numpy(test_x).reshape(-1, 784), torch.from_numpy(test_y)

model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
for layer in (model[0], model[2]):
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
loss_fn = nn.CrossEntropyLoss()

epoch_seconds = []
start = time.perf_counter()
n = len(train_y)
for epoch in range(a["epochs"]):
    t0 = time.perf_counter()
    order = torch.randperm(n)
    for i in range(0, n, a["batch"]):
        idx = order[i : i + a["batch"]]
        opt.zero_grad()
        loss = loss_fn(model(train_x[idx]), train_y[idx])
        loss.backward()
        opt.step()
    epoch_seconds.append(time.perf_counter() - t0)
train_seconds = time.perf_counter() - start
with torch.no_grad():
    accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
torch.save(model.state_dict(), "/tmp/torch-fmnist.pt")
report(program="pytorch", load_seconds=load_seconds, train_seconds=train_seconds,
       epoch_seconds=epoch_seconds, test_accuracy=accuracy)
