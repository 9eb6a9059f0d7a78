#!/usr/bin/python3
"""PyTorch oracle for qnnx training: gradients and optimizer steps of a small CNN, frozen into fixtures.

Run once by hand (CI never needs torch); the outputs are committed under test/fixtures/torch-grad/:

    OMP_NUM_THREADS=1 /usr/bin/python3 tools/torch_train_oracle.py

(Debian's interpreter: it has python3-torch 1.13 and python3-onnx; the `python3` first on PATH has neither.)

The network is the builder spec in ``SPEC`` below, written again as a torch ``nn.Sequential`` so that the
parameter names agree (``0.weight``, ``1.running_mean``, ...):

    Conv2d(1, 4, 3, padding=1, bias=False) -> BatchNorm2d(4) -> ReLU -> MaxPool2d(2)      [N, 4, 5, 5]
    Conv2d(4, 6, 3, padding=1) -> ReLU -> Flatten -> Linear(150, 10)                       logits [N, 10]
    loss: softmax cross-entropy, mean over the batch (nn.CrossEntropyLoss)

The conv before BatchNorm has no bias, as usual: its gradient would be exactly zero in theory and round-off in
practice, which Adam (g / (|g| + eps)) turns into noise.

Everything is computed in float64 from float32 initial values (the float32 weights and batch, widened), so the
references are the exact answers for what qnnx computes in float32; qnnx's own error is then its float32
round-off. Files (all .npy):

    batch/x.npy               float32 [8, 1, 10, 10]  (N(0, 1))
    batch/y.npy               int64   [8]
    initial/<name>.npy        float32 parameters and BatchNorm buffers (torch's default init, seed 0; BatchNorm
                              scale/shift/mean/var then perturbed away from 1/0/0/1)
    grad/<name>.npy           float64 d(loss)/d(parameter) at the initial weights, model in train mode
    logits_train.npy          float64 [8, 10] logits in train mode (BatchNorm on batch statistics)
    logits_eval.npy           float64 [8, 10] logits in eval mode (the initial running statistics)
    <opt>-<k>/<name>.npy      float64 parameters and buffers after k = 1, 2 steps of optimizer <opt> on the same
                              batch, for opt = sgd (lr 0.1, momentum 0.9, weight_decay 1e-4), adam (lr 1e-3)
                              and adamw (lr 1e-3, weight_decay 0.01); BatchNorm running statistics follow
                              torch (momentum 0.1, *unbiased* batch variance for running_var)
    model.json                the builder spec, names, optimizer settings, losses per step, versions
    model.onnx                the same float32 network exported by torch.onnx.export (opset 13, eval mode,
                              training=PRESERVE, do_constant_folding=False): BatchNormalization kept, input
                              'input' [N, 1, 10, 10], output 'logits' [N, 10], initializers named as above

A second, independent fixture checks the builder's transformer block against torch:

    attention/x.npy, attention/y.npy, attention/<name>.npy
        torch.nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0, activation='gelu',
        batch_first=True, norm_first=True) on x [2, 5, 8]; weights renamed to the builder's names
        (0.q_proj.weight, 0.k_proj.weight, 0.v_proj.weight (split from in_proj_weight), 0.out_proj.*, 0.norm1.*,
        0.linear1.*, 0.linear2.*, 0.norm2.*), y in float64.

Recorded run (Debian 12, python3-torch 1.13.1+dfsg-4, 1 thread): see model.json ("recorded").
"""

import datetime
import json
import os
import shutil

import numpy as np
import onnx
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "test", "fixtures", "torch-grad")
SEED = 0
BATCH = 8

SPEC = {
    "description": "tools/torch_train_oracle.py: the torch gradient oracle network",
    "input": [1, 10, 10],
    "layers": [
        {"conv2d": {"filters": 4, "kernel": 3, "padding": 1, "bias": False}},
        {"batchNorm": {}},
        "relu",
        {"maxPool": {"kernel": 2}},
        {"conv2d": {"filters": 6, "kernel": 3, "padding": 1}},
        "relu",
        "flatten",
        {"dense": {"units": 10}},
    ],
}

OPTIMIZERS = {
    "sgd": {"type": "sgd", "lr": 0.1, "momentum": 0.9, "weightDecay": 1e-4},
    "adam": {"type": "adam", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weightDecay": 0.0},
    "adamw": {"type": "adamw", "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weightDecay": 0.01},
}


def make_net():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(150, 10),
    )


def make_optimizer(kind, params):
    o = OPTIMIZERS[kind]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weightDecay"])
    if kind == "adam":
        return torch.optim.Adam(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    return torch.optim.AdamW(
        params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"], weight_decay=o["weightDecay"]
    )


def save(rel, array):
    path = os.path.join(OUT, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, np.ascontiguousarray(array))


def state_arrays(net, dtype):
    """Parameters and BN running statistics (num_batches_tracked is left out)."""
    return {
        k: v.detach().numpy().astype(dtype)
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def double_copy(net32):
    net = make_net().double()
    net.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in net32.state_dict().items()})
    return net


def export_onnx(net32):
    path = os.path.join(OUT, "model.onnx")
    net32.eval()
    torch.onnx.export(
        net32,
        torch.zeros(1, 1, 10, 10),
        path,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
    )
    m = onnx.load(path)
    m.producer_name = "qnnx tools/torch_train_oracle.py"
    onnx.checker.check_model(m)
    onnx.save(m, path)
    inits = sorted(t.name for t in m.graph.initializer)
    return [n.op_type for n in m.graph.node], inits


def attention_fixture():
    torch.manual_seed(SEED + 1)
    d, heads, ff, t = 8, 2, 16, 5
    layer = nn.TransformerEncoderLayer(
        d_model=d, nhead=heads, dim_feedforward=ff, dropout=0.0, activation="gelu",
        batch_first=True, norm_first=True,
    )
    # Non-trivial LayerNorm affine parameters and biases, so that every parameter matters.
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    layer.eval()
    x = torch.randn(2, t, d)
    sd = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    names = {}
    wq, wk, wv = sd["self_attn.in_proj_weight"].chunk(3)
    bq, bk, bv = sd["self_attn.in_proj_bias"].chunk(3)
    names.update({"0.q_proj.weight": wq, "0.k_proj.weight": wk, "0.v_proj.weight": wv})
    names.update({"0.q_proj.bias": bq, "0.k_proj.bias": bk, "0.v_proj.bias": bv})
    names["0.out_proj.weight"] = sd["self_attn.out_proj.weight"]
    names["0.out_proj.bias"] = sd["self_attn.out_proj.bias"]
    for k in ["norm1", "norm2", "linear1", "linear2"]:
        names[f"0.{k}.weight"] = sd[f"{k}.weight"]
        names[f"0.{k}.bias"] = sd[f"{k}.bias"]
    layer64 = layer.double()
    with torch.no_grad():
        y = layer64(x.double())
    save("attention/x.npy", x.numpy().astype(np.float32))
    save("attention/y.npy", y.numpy())
    for k, v in names.items():
        save(f"attention/{k}.npy", v.float().numpy())
    return {"d_model": d, "heads": heads, "dim_feedforward": ff, "tokens": t, "batch": 2}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    net32 = make_net()  # torch's default init, seed 0
    # BatchNorm away from its identity start (scale 1, shift 0, mean 0, var 1): every term of its gradient and
    # running-statistics update then matters, and torch.onnx.export does not merge the equal-valued initializers
    # (it would otherwise export running_var as Identity(weight)).
    with torch.no_grad():
        bn = net32[1]
        bn.weight.copy_(1 + 0.1 * torch.randn(4))
        bn.bias.copy_(0.1 * torch.randn(4))
        bn.running_mean.copy_(0.1 * torch.randn(4))
        bn.running_var.copy_(1 + 0.2 * torch.rand(4))
    x32 = torch.randn(BATCH, 1, 10, 10)
    y = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6], dtype=torch.int64)
    save("batch/x.npy", x32.numpy())
    save("batch/y.npy", y.numpy())
    for k, v in state_arrays(net32, np.float32).items():
        save(f"initial/{k}.npy", v)

    loss_fn = nn.CrossEntropyLoss()
    x64 = x32.double()

    # Gradients and logits at the initial point.
    net = double_copy(net32)
    net.eval()
    with torch.no_grad():
        save("logits_eval.npy", net(x64).numpy())
    net.train()
    logits = net(x64)
    loss = loss_fn(logits, y)
    loss.backward()
    save("logits_train.npy", logits.detach().numpy())
    for k, p in net.named_parameters():
        save(f"grad/{k}.npy", p.grad.numpy())
    initial_loss = loss.item()

    # Two optimizer steps on the same batch, per optimizer.
    losses = {}
    for kind in OPTIMIZERS:
        net = double_copy(net32)
        net.train()
        opt = make_optimizer(kind, net.parameters())
        losses[kind] = []
        for step in (1, 2):
            opt.zero_grad()
            loss = loss_fn(net(x64), y)
            loss.backward()
            opt.step()
            losses[kind].append(loss.item())
            for k, v in state_arrays(net, np.float64).items():
                save(f"{kind}-{step}/{k}.npy", v)

    ops, onnx_inits = export_onnx(net32)
    attention = attention_fixture()

    params = [k for k, _ in net32.named_parameters()]
    buffers = [k for k in state_arrays(net32, np.float32) if k not in params]
    meta = {
        "spec": SPEC,
        "batch": BATCH,
        "loss": "softmax cross-entropy, mean over the batch",
        "parameters": params,
        "buffers": buffers,
        "optimizers": OPTIMIZERS,
        "batchNormMomentum": 0.1,
        "initialLoss": initial_loss,
        "lossesPerStep": losses,
        "onnx": {"opset": 13, "ops": ops, "initializers": onnx_inits},
        "attention": attention,
        "recorded": {
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
        },
    }
    with open(os.path.join(OUT, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, files in os.walk(OUT) for n in files)
    print(f"initial loss {initial_loss:.6f}; losses {losses}")
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
