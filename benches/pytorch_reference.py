#!/usr/bin/env python3
"""PyTorch reference for the `compute` bench: the same models, batch sizes and FLOP counts.

    python3 benches/pytorch_reference.py [--quick] [--threads 2]

Needs torch (CPU is enough). Prints the table `cargo run --release -p shoal-benches --bin
compute` prints, so the two can be read side by side. Training is plain SGD on cross-entropy
over synthetic examples, one epoch; evaluation is the forward pass over 10,000 examples in
batches of 1,024 under `torch.inference_mode()`.
"""

import argparse
import sys
import time

try:
    import torch
    from torch import nn
except ImportError:
    print("torch is not installed: the PyTorch reference is skipped", file=sys.stderr)
    sys.exit(0)


def mlp(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Cnn(nn.Module):
    """McMahan et al. 2017: conv5x5(32) relu pool2, conv5x5(64) relu pool2, fc512 relu, fc10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * 7 * 7, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def forward_macs(name):
    if name == "cnn":
        return 28 * 28 * 32 * 25 + 14 * 14 * 64 * 32 * 25 + 7 * 7 * 64 * 512 + 512 * 10
    widths = {"mlp": [64, 128, 10], "2nn": [784, 200, 200, 10]}[name]
    return sum(a * b for a, b in zip(widths, widths[1:]))


def train_rate(model, x, y, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def epoch():
        for i in range(0, len(x), batch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[i : i + batch]), y[i : i + batch]).backward()
            opt.step()

    epoch()  # warm-up
    start = time.perf_counter()
    epoch()
    return len(x) / (time.perf_counter() - start)


def eval_rate(model, x):
    with torch.inference_mode():
        model(x[:1024])
        start = time.perf_counter()
        for i in range(0, len(x), 1024):
            model(x[i : i + 1024]).argmax(1)
        return len(x) / (time.perf_counter() - start)


def gemm_peak():
    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.rand(n, n), torch.rand(n, n)
        a @ b
        times = []
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best = max(best, 2 * n**3 / min(times) / 1e9)
    return best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    peak = gemm_peak()
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"single-precision GEMM peak (square matmul): {peak:.1f} GFLOP/s\n")
    print(f"{'model':<22} {'batch':>5} {'task':>6} {'ex/s':>12} {'GFLOP/s':>9} {'% peak':>7}")
    for name, features in (("mlp", 64), ("2nn", 784), ("cnn", 784)):
        n = (200 if args.quick else 1000) if name == "cnn" else (2000 if args.quick else 10000)
        model = Cnn() if name == "cnn" else mlp({"mlp": [64, 128, 10], "2nn": [784, 200, 200, 10]}[name])
        x = torch.rand(n, features)
        y = torch.arange(n) % 10
        macs = forward_macs(name)

        def row(batch, task, rate, flops):
            g = rate * flops / 1e9
            print(f"{name:<22} {batch:>5} {task:>6} {rate:>12.0f} {g:>9.2f} {100 * g / peak:>6.1f}%")

        for batch in (10, 32, 50):
            row(batch, "train", train_rate(model, x, y, batch), 6 * macs)
        ex = torch.rand(10000 if not args.quick else n, features)
        rate = eval_rate(model, ex)
        row("all", "eval", rate, 2 * macs)
        if len(ex) == 10000:
            print(f"{name}: evaluating 10,000 examples takes {1e4 / rate:.2f} s")


if __name__ == "__main__":
    main()
