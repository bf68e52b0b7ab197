"""A MobileNetV2-style network for 32x32 RGB inputs, exported to ONNX for timing (tools/bench.py).

CIFAR MobileNetV2's layout, narrowed: a 3x3 stem, inverted residual blocks (1x1 expansion x6,
3x3 depthwise, linear 1x1 bottleneck, identity shortcut where the shapes allow), ReLU6 throughout,
BatchNorm folded by onnxruntime, a 1x1 head and an average pool. Random weights with BatchNorm
statistics from a few random batches: its firing rates are not a trained model's, so it serves
speed ratios only (the dense floor and every form do the same arithmetic whatever the weights).

    python tools/mobilenet_bench_model.py out.onnx
"""
from __future__ import annotations

import io
import sys

# (expansion, output channels, blocks, stride of the first block), MobileNetV2's table for 32x32
STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 2, 1)]


def network(in_channels: int, stem: int, stages, head: int, classes: int):
    """The torch module: a 3x3 stem, inverted residual blocks per (expansion, output channels,
    blocks, stride of the first block), a 1x1 head, an average pool and a linear layer (also the
    tests' digits MobileNet, tools/fixtures/digits.py)."""
    from torch import nn

    def conv(cin, cout, k=1, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + [nn.ReLU6()] if act else layers

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            mid = cin * expand
            expansion = conv(cin, mid) if expand != 1 else []
            self.body = nn.Sequential(*expansion, *conv(mid, mid, 3, stride, groups=mid), *conv(mid, cout, act=False))
            self.shortcut = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.shortcut else y

    layers, cin = conv(in_channels, stem, 3), stem
    for expand, cout, blocks, stride in stages:
        for i in range(blocks):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    return nn.Sequential(*layers, *conv(cin, head), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes))


def build(path: str, seed: int = 0) -> str:
    import torch

    torch.manual_seed(seed)
    net = network(3, 32, STAGES, 320, 10)
    net.train()
    with torch.no_grad():
        for _ in range(4):            # BatchNorm statistics of random inputs: activations neither dead nor huge
            net(torch.randn(32, 3, 32, 32))
    net.eval()
    buf = io.BytesIO()
    torch.onnx.export(net, torch.randn(2, 3, 32, 32), buf, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


if __name__ == "__main__":
    print(build(sys.argv[1]))
