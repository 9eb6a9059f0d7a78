#!/usr/bin/python3
"""PyTorch 1.13 side of bench/train.ts: training throughput of the benchmark CNN on Fashion-MNIST, one thread.

Run by bench/train.ts as a subprocess (OMP_NUM_THREADS=1, Debian's /usr/bin/python3 with python3-torch):

    OMP_NUM_THREADS=1 /usr/bin/python3 tools/torch_train_bench.py --steps 200 --warmup 10 --rounds 3 [--batch 64]

The network is the builder spec bench/train.ts trains (qnnx's FASHION_MNIST_SPEC), in torch:

    Conv2d(1,32,3,p=1)+BatchNorm2d+ReLU+MaxPool2d(2), Conv2d(32,64,3,p=1)+BatchNorm2d+ReLU+MaxPool2d(2),
    Flatten, Linear(3136,128)+ReLU, Linear(128,10); CrossEntropyLoss; Adam(lr 1e-3)

A step is what qnnx's Trainer.trainStep does: gather a batch of 64 shuffled, normalised training images
((x/255 - 0.2860)/0.3530, float32, prepared once), forward, loss, backward, optimizer step. Each round times
`steps` consecutive steps after `warmup` untimed ones; the result is the best round (the machine is shared and
noisy: the best round is the least disturbed one). Prints one JSON object on the last line:

    {"img_s": <best images/s>, "rounds": [...], "step_ms": <best ms/step>, "torch": "<version>", "threads": 1, ...}

With --serve it loads the data and builds the network once, then times one round per line "round" read on stdin
and answers each with a JSON line {"img_s": ...} ("quit" ends it). bench/train.ts uses this to alternate qnnx
and torch rounds, so that both see the same load on a shared machine.
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def make_net():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--serve", action="store_true", help="time one round per 'round' line on stdin")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    images = read_idx(os.path.join(DATA_DIR, "train-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(DATA_DIR, "train-labels-idx1-ubyte.gz")).astype(np.int64)
    x = ((images.astype(np.float32) / np.float32(255) - np.float32(0.2860)) / np.float32(0.3530)).reshape(-1, 1, 28, 28)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)

    net = make_net()
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    perm = torch.randperm(len(xt))
    pos = 0

    def step():
        nonlocal pos
        if pos + args.batch > len(perm):
            pos = 0
        idx = perm[pos : pos + args.batch]
        pos += args.batch
        opt.zero_grad()
        loss = loss_fn(net(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        return loss.item()

    def one_round():
        for _ in range(args.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        return args.steps * args.batch / (time.perf_counter() - t0)

    info = {
        "steps": args.steps,
        "batch": args.batch,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in net.parameters()),
    }
    if args.serve:
        print(json.dumps({"ready": True, **info}), flush=True)
        for line in iter(sys.stdin.readline, ""):
            if line.strip() == "quit":
                break
            print(json.dumps({"img_s": one_round()}), flush=True)
        return

    rounds = [one_round() for _ in range(args.rounds)]
    best = max(rounds)
    print(
        json.dumps(
            {
                "img_s": best,
                "rounds": rounds,
                "step_ms": 1000 * args.batch / best,
                **info,
            }
        )
    )


if __name__ == "__main__":
    main()
