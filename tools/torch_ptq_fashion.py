#!/usr/bin/python3
"""PyTorch 1.13 eager post-training quantization of the bundled Fashion-MNIST CNN: the peer that
bench/ptq-fashion.ts compares qnnx's W8A8 PTQ against.

What it does
------------
* Rebuilds the torch module of tools/train_fashion_cnn.py from the ONNX weights of
  examples/fashion-mnist/model.onnx (read with python3-onnx, ``onnx.numpy_helper.to_array``): the two
  Conv+BatchNormalization pairs keep their BN (running stats, epsilon), so torch's own Conv+BN+ReLU fusion
  does the folding; Gemm (transB=1) becomes Linear.
* Checks that the rebuilt float module agrees with the ONNX model's float accuracy (printed, not asserted).
* Eager PTQ, as in the research note (assets.md section 4, appendix A2): QuantStub/DeQuantStub, fuse
  Conv+BN+ReLU (x2) and Linear+ReLU, ``qconfig = get_default_qconfig(engine)`` with
  ``torch.backends.quantized.engine = engine``, ``prepare``, calibrate on the same 256 calibration images as
  qnnx (examples/fashion-mnist/calib/*.npy), ``convert``.
  Engines: 'qnnpack' (per-tensor weights, HistogramObserver activations) and, when it works, 'onednn'
  (per-channel weights). FBGEMM/x86 are not built into Debian's torch.
* Evaluates on the FULL 10k test set (Debian dataset-fashion-mnist IDX, normalised (x/255-0.2860)/0.3530 in
  float32 exactly as the trainer and the bench do), and times batch 1 and batch 64 (median, 1 thread).
* Prints one JSON line (the last line of stdout) with everything.

Usage
-----
    OMP_NUM_THREADS=1 /usr/bin/python3 tools/torch_ptq_fashion.py [--model M] [--calib DIR]
        [--data DIR] [--calib-batch 32] [--runs-b1 300] [--runs-b64 40] [--engines qnnpack,onednn]
(Debian's interpreter: it has python3-torch and python3-onnx; the ``python3`` first on PATH may not.)
"""

import argparse
import glob
import gzip
import io
import json
import os
import statistics
import struct
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper
from torch.ao.quantization import DeQuantStub, QuantStub, convert, fuse_modules, get_default_qconfig, prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = 0.2860, 0.3530


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def normalise(images_u8):
    x = images_u8.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return np.ascontiguousarray(x.reshape(-1, 1, 28, 28).astype(np.float32))


class FashionCNNQ(nn.Module):
    """tools/train_fashion_cnn.py's FashionCNN, flattened into named modules, with quant stubs."""

    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)
        self.dequant = DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.fc2(x)
        return self.dequant(x)


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def from_onnx(path):
    """A FashionCNNQ holding the ONNX model's weights (node order: Conv, BN, Relu, MaxPool, x2, Flatten, Gemm,
    Relu, Gemm)."""
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    ops = [n for n in m.graph.node if n.op_type in ("Conv", "BatchNormalization", "Gemm")]
    kinds = [n.op_type for n in ops]
    if kinds != ["Conv", "BatchNormalization", "Conv", "BatchNormalization", "Gemm", "Gemm"]:
        raise SystemExit("unexpected ONNX graph (weighted ops %s); expected the bundled Fashion-MNIST CNN" % kinds)
    net = FashionCNNQ()
    t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))  # noqa: E731
    with torch.no_grad():
        for node, mod in zip(ops, [net.conv1, net.bn1, net.conv2, net.bn2, net.fc1, net.fc2]):
            if node.op_type == "Conv":
                mod.weight.copy_(t(inits[node.input[1]]))
                mod.bias.copy_(t(inits[node.input[2]]))
            elif node.op_type == "BatchNormalization":
                scale, bias, mean, var = (inits[name] for name in node.input[1:5])
                mod.weight.copy_(t(scale))
                mod.bias.copy_(t(bias))
                mod.running_mean.copy_(t(mean))
                mod.running_var.copy_(t(var))
                mod.eps = float(attr(node, "epsilon", 1e-5))
            else:
                w = inits[node.input[1]]
                if not attr(node, "transB", 0):
                    w = w.T
                if attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
                    raise SystemExit("Gemm with alpha/beta != 1 is not supported")
                mod.weight.copy_(t(w))
                mod.bias.copy_(t(inits[node.input[2]]))
    return net.eval()


@torch.no_grad()
def accuracy(model, x, y, batch=500):
    correct = 0
    for i in range(0, len(x), batch):
        pred = model(torch.from_numpy(x[i : i + batch])).argmax(1).numpy()
        correct += int((pred == y[i : i + batch]).sum())
    return correct / len(x)


@torch.no_grad()
def latency_ms(model, x, batch, runs, warmup=5):
    inp = torch.from_numpy(np.ascontiguousarray(x[:batch]))
    for _ in range(warmup):
        model(inp)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(inp)
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def state_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def ptq(float_path, engine, calib, calib_batch):
    torch.backends.quantized.engine = engine
    net = from_onnx(float_path)
    fused = fuse_modules(
        net, [["conv1", "bn1", "relu1"], ["conv2", "bn2", "relu2"], ["fc1", "relu3"]], inplace=False
    )
    fused.qconfig = get_default_qconfig(engine)
    prepared = prepare(fused, inplace=False)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(calib), calib_batch):
            prepared(torch.from_numpy(calib[i : i + calib_batch]))
    calib_s = time.perf_counter() - t0
    q = convert(prepared, inplace=False).eval()
    return q, calib_s, str(fused.qconfig)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.join(ROOT, "examples", "fashion-mnist", "model.onnx"))
    p.add_argument("--calib", default=os.path.join(ROOT, "examples", "fashion-mnist", "calib"))
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--calib-batch", type=int, default=32)
    p.add_argument("--runs-b1", type=int, default=300)
    p.add_argument("--runs-b64", type=int, default=40)
    p.add_argument("--engines", default="qnnpack,onednn")
    args = p.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    files = sorted(glob.glob(os.path.join(args.calib, "*.npy")))
    if not files:
        raise SystemExit("no calibration .npy files in " + args.calib)
    calib = np.ascontiguousarray(np.concatenate([np.load(f).astype(np.float32) for f in files]))
    x = normalise(read_idx(os.path.join(args.data, "t10k-images-idx3-ubyte.gz")))
    y = read_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)

    result = {
        "torch": torch.__version__,
        "engines_available": list(torch.backends.quantized.supported_engines),
        "threads": torch.get_num_threads(),
        "calib_samples": int(len(calib)),
        "test_samples": int(len(x)),
    }
    net = from_onnx(args.model)
    result["float"] = {
        "acc": accuracy(net, x, y),
        "size_bytes": state_bytes(net),
        "lat_b1_ms": latency_ms(net, x, 1, args.runs_b1),
        "lat_b64_ms": latency_ms(net, x, 64, args.runs_b64),
    }
    for engine in [e for e in args.engines.split(",") if e]:
        try:
            if engine not in torch.backends.quantized.supported_engines:
                raise RuntimeError("engine not built into this torch")
            q, calib_s, qconfig = ptq(args.model, engine, calib, args.calib_batch)
            result[engine] = {
                "acc": accuracy(q, x, y),
                "size_bytes": state_bytes(q),
                "lat_b1_ms": latency_ms(q, x, 1, args.runs_b1),
                "lat_b64_ms": latency_ms(q, x, 64, args.runs_b64),
                "calib_s": calib_s,
                "weights": "per-channel" if q.conv1.weight().qscheme() == torch.per_channel_affine else "per-tensor",
                "qconfig": qconfig,
            }
        except Exception as e:  # report and go on: the bench prints what failed
            result[engine] = {"error": "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")}
        print("%s done" % engine, file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
