"""The paper's architectures at their sizes, written here in torch (random weights: for time and
memory, not accuracy): ResNet-18/50 classifiers, DeepLabV3-ResNet50 (dilated backbone, output stride
8, ASPP head) and RetinaNet up to its heads (ResNet-50 + FPN P3-P7, 4-conv class and box towers).
torchvision's layers are not used, so its CPU/CUDA kernel registration never matters here.

    python tools/scale_models.py resnet50 out.onnx [--size 224]
"""
from __future__ import annotations

import argparse
import io

import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn(cin, cout, k=3, stride=1, dilation=1):
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, dilation=1):
        super().__init__()
        self.a, self.b = _conv_bn(cin, planes, 3, stride, dilation), _conv_bn(planes, planes, 3, 1, dilation)
        self.skip = _conv_bn(cin, planes, 1, stride) if stride != 1 or cin != planes else nn.Identity()

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.skip(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride=1, dilation=1):
        super().__init__()
        out = planes * 4
        self.a, self.b = _conv_bn(cin, planes, 1), _conv_bn(planes, planes, 3, stride, dilation)
        self.c = _conv_bn(planes, out, 1)
        self.skip = _conv_bn(cin, out, 1, stride) if stride != 1 or cin != out else nn.Identity()

    def forward(self, x):
        return F.relu(self.c(F.relu(self.b(F.relu(self.a(x))))) + self.skip(x))


class ResNet(nn.Module):
    """ResNet with `layers` blocks per stage; `dilate` stages (2, 3) trade stride for dilation."""

    def __init__(self, block, layers, classes=1000, dilate=()):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        cin, stages, dilation = 64, [], 1
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            if i + 1 in dilate:
                dilation, stride = dilation * 2, 1
            blocks = [block(cin, planes, stride, dilation)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, dilation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(cin, classes)
        self.channels = [64 * block.expansion * 2 ** i for i in range(4)]

    def features(self, x):
        x, out = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x)[-1], 1), 1))


class DeepLabV3(nn.Module):
    """ResNet-50 with stages 3-4 dilated (output stride 8), ASPP (rates 12, 24, 36 + image pooling),
    a 3x3 projection and a 1x1 classifier, upsampled to the input size."""

    def __init__(self, classes=21):
        super().__init__()
        self.backbone = ResNet(Bottleneck, [3, 4, 6, 3], dilate=(3, 4))
        c = 2048
        self.branches = nn.ModuleList([nn.Sequential(_conv_bn(c, 256, 1), nn.ReLU())] +
                                      [nn.Sequential(_conv_bn(c, 256, 3, dilation=r), nn.ReLU()) for r in (12, 24, 36)])
        self.pool = nn.Sequential(nn.Conv2d(c, 256, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU())
        self.project = nn.Sequential(_conv_bn(5 * 256, 256, 1), nn.ReLU())
        self.head = nn.Sequential(_conv_bn(256, 256, 3), nn.ReLU(), nn.Conv2d(256, classes, 1))

    def forward(self, x):
        size = x.shape[-2:]
        f = self.backbone.features(x)[-1]
        pooled = F.interpolate(self.pool(F.adaptive_avg_pool2d(f, 1)), size=f.shape[-2:], mode="bilinear",
                               align_corners=False)
        y = self.project(torch.cat([b(f) for b in self.branches] + [pooled], 1))
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


class RetinaNetHeads(nn.Module):
    """ResNet-50 + FPN (P3-P5 from C3-C5, P6 from C5, P7 from ReLU(P6)) and the shared class and
    box towers (4 x conv3x3 + ReLU) over every level; outputs the raw head maps of each level."""

    def __init__(self, classes=91, anchors=9):
        super().__init__()
        self.backbone = ResNet(Bottleneck, [3, 4, 6, 3])
        self.lateral = nn.ModuleList([nn.Conv2d(c, 256, 1) for c in (512, 1024, 2048)])
        self.smooth = nn.ModuleList([nn.Conv2d(256, 256, 3, padding=1) for _ in range(3)])
        self.p6, self.p7 = nn.Conv2d(2048, 256, 3, 2, 1), nn.Conv2d(256, 256, 3, 2, 1)
        tower = lambda: nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())])  # noqa: E731
        self.cls_tower, self.box_tower = tower(), tower()
        self.cls, self.box = nn.Conv2d(256, anchors * classes, 3, padding=1), nn.Conv2d(256, anchors * 4, 3, padding=1)

    def forward(self, x):
        c3, c4, c5 = self.backbone.features(x)[1:]
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.lateral[0](c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        p6 = self.p6(c5)
        levels = [self.smooth[0](p3), self.smooth[1](p4), self.smooth[2](p5), p6, self.p7(F.relu(p6))]
        out = []
        for p in levels:
            out += [self.cls(self.cls_tower(p)), self.box(self.box_tower(p))]
        return tuple(out)


BUILDERS = {
    "resnet18": (lambda: ResNet(Basic, [2, 2, 2, 2]), 224),
    "resnet50": (lambda: ResNet(Bottleneck, [3, 4, 6, 3]), 224),
    "deeplabv3": (DeepLabV3, 256),
    "retinanet": (RetinaNetHeads, 320),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture with random weights and BatchNorm statistics that keep activations in range."""
    torch.manual_seed(seed)
    net = BUILDERS[name][0]()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):      # as after training: scaled so activations neither vanish nor explode
            nn.init.uniform_(m.weight, 0.2, 0.6)
            nn.init.normal_(m.bias, 0.0, 0.1)
    for head in _output_layers(net):           # outputs carried by the features, not by a constant bias
        nn.init.zeros_(head.bias)
    return net.eval()


def _output_layers(net: nn.Module) -> list:
    if isinstance(net, ResNet):
        return [net.fc]
    if isinstance(net, DeepLabV3):
        return [net.head[-1]]
    return [net.cls, net.box]


def export(name: str, size: int | None = None) -> bytes:
    """ONNX bytes (TorchScript exporter, opset 17, dynamic batch) of architecture `name`."""
    net = build(name)
    size = size or BUILDERS[name][1]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        outs = net(x)
    n_out = len(outs) if isinstance(outs, tuple) else 1
    names = [f"out{i}" for i in range(n_out)]
    buf = io.BytesIO()
    torch.onnx.export(net, x, buf, input_names=["input"], output_names=names, opset_version=17, dynamo=False,
                      dynamic_axes={k: {0: "N"} for k in ["input"] + names})
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(BUILDERS))
    p.add_argument("output")
    p.add_argument("--size", type=int)
    args = p.parse_args()
    with open(args.output, "wb") as f:
        f.write(export(args.name, args.size))


if __name__ == "__main__":
    main()
