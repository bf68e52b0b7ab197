"""Small models for tests and the demo: trained here on scikit-learn's digits, exported with torch.

Needs torch and scikit-learn (the `test` extra); the converter itself never imports torch.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np


def digits_split(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 8x8 digits scaled to [0, 1], NCHW float32."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1300], y[:1300], x[1300:], y[1300:]


def _train(net, x, y, epochs: int, seed: int):
    import torch
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval()


def export(net, example: np.ndarray, opset: int = 17) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.onnx.export(net, torch.from_numpy(example[:2]), buf, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      opset_version=opset, dynamo=False)
    return buf.getvalue()


def digits_cnn(seed: int = 0, epochs: int = 15):
    """A CNN with a spike-driven MaxPool: conv-relu-conv-relu-maxpool-fc-relu-fc."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(32 * 16, 64), nn.ReLU(),
        nn.Linear(64, 10))
    x, y, _, _ = digits_split(seed)
    return _train(net, x, y, epochs, seed), x


def _residual_block(c: int):
    """conv-relu-conv + identity skip, then relu (the residual test models' block)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))) + x)
    return Block()


def digits_resnet(seed: int = 0, epochs: int = 30):
    """A small residual CNN (identity shortcut, average pool head)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), _residual_block(16), _residual_block(16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    x, y, _, _ = digits_split(seed)
    return _train(net, x, y, epochs, seed), x


def digits_pool_resnet(seed: int = 0, epochs: int = 20):
    """Spiking max pools and a residual block: conv-relu-block(identity skip)-maxpool-conv-relu-maxpool-fc."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), _residual_block(12), nn.MaxPool2d(2),
                        nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(24 * 4, 10))
    x, y, _, _ = digits_split(seed)
    return _train(net, x, y, epochs, seed), x


def digits_mlp(seed: int = 0, epochs: int = 20):
    import torch
    from torch import nn
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU6(), nn.Linear(64, 32), nn.ReLU(),
                        nn.Linear(32, 10), nn.Softmax(dim=1))

    class Logits(nn.Module):  # train on logits, export with the softmax head
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body[:-1](x)

    x, y, _, _ = digits_split(seed)
    _train(Logits(net), x, y, epochs, seed)
    return net.eval(), x


def digits_mobilenet(seed: int = 0, epochs: int = 40):
    """A small MobileNetV2: ReLU6 everywhere, inverted residual blocks (1x1 expansion, 3x3 depthwise,
    linear 1x1 bottleneck, identity shortcut where shapes allow), BatchNorm left in, a stride-2
    block, an average pool head."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from mobilenet_bench_model import network

    torch.manual_seed(seed)
    net = network(1, 16, [(4, 16, 1, 1), (4, 24, 2, 2), (4, 32, 1, 1)], 64, 10)
    x, y, _, _ = digits_split(seed)
    return _train(net, x, y, epochs, seed), x


def digits_channel_last(seed: int = 0, epochs: int = 20, channels: int = 12):
    """A residual CNN trained in torch (NCHW) and written by hand as a channel-last ONNX graph, the
    way jax2onnx or tf2onnx without its transpose optimiser write one: every Conv between
    Transposes, the Relus, the residual Add and a spike-fed MaxPool on NHWC tensors, the dense
    layers as MatMul + Add (features last). Returns (ModelProto, x_train NHWC)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, channels, 3, padding=1)
            self.c2 = nn.Conv2d(channels, channels, 3, padding=1)
            self.fc1, self.fc2 = nn.Linear(channels * 16, 32), nn.Linear(32, 10)

        def forward(self, x):
            r1 = torch.relu(self.c1(x))
            r2 = torch.relu(self.c2(r1) + r1)
            pooled = nn.functional.max_pool2d(r2, 2).permute(0, 2, 3, 1).flatten(1)   # NHWC flatten
            return self.fc2(torch.relu(self.fc1(pooled)))

    torch.manual_seed(seed)
    x, y, _, _ = digits_split(seed)
    net = _train(Net(), x, y, epochs, seed)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import graphs
    weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return graphs.channel_last_model(weights, channels), x.transpose(0, 2, 3, 1).copy()
