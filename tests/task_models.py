"""Synthetic dense-prediction tasks for tests: shape segmentation (an FCN) and shape detection (a
CenterNet-style detector exported up to its heads), plus writers for VOC- and COCO-layout folders.

Everything is generated here with NumPy (seeded) and trained with torch in a few seconds of CPU;
nothing is downloaded. Classes: 1 rectangle, 2 disc, 3 triangle (0 background, 255 ignore).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

CATEGORIES = {1: "rectangle", 2: "disc", 3: "triangle"}
IGNORE = 255
_HUES = {1: 0.0, 2: 1 / 3, 3: 2 / 3}     # class-correlated hue (red, green, blue), jittered


# ---------------------------------------------------------------------------------------------
# drawing

def _hsv_to_rgb(h, s, v):
    h = np.asarray(h, np.float64) % 1.0
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.array([table[i][c] for c in range(3)], np.float32)


def _shape_mask(cls: int, box, size: int, rng) -> np.ndarray:
    """Boolean [size, size] mask of a shape of class `cls` filling the box (x0, y0, x1, y1); pixel
    centres are tested, so the mask's tight bounding box is (close to) the box."""
    x0, y0, x1, y1 = box
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    if cls == 1:
        return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    if cls == 2:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    # triangle: apex on the top edge, base on the bottom edge (pointing down half the time)
    apex = x0 + rng.uniform(0.2, 0.8) * (x1 - x0)
    pts = np.array([(apex, y0), (x0, y1), (x1, y1)])
    if rng.random() < 0.5:
        pts[:, 1] = y0 + y1 - pts[:, 1]
    inside = np.ones((size, size), bool)
    signs = []
    for a, b in ((0, 1), (1, 2), (2, 0)):
        (ax, ay), (bx, by) = pts[a], pts[b]
        signs.append((bx - ax) * (ys - ay) - (by - ay) * (xs - ax))
    signs = np.stack(signs)
    inside &= (signs >= 0).all(0) | (signs <= 0).all(0)
    return inside


def _background(size: int, rng) -> np.ndarray:
    """Noisy low-saturation background: a random grey-ish tint, a gentle gradient, pixel noise."""
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.6))
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = rng.uniform(-0.08, 0.08, 2)
    img = base[:, None, None] + gx * ramp[None, None, :] + gy * ramp[None, :, None]
    return np.broadcast_to(img, (3, size, size)).astype(np.float32).copy()


def _shape_colour(cls: int, rng) -> np.ndarray:
    return _hsv_to_rgb(_HUES[cls] + rng.uniform(-0.08, 0.08), rng.uniform(0.55, 1.0),
                       rng.uniform(0.65, 1.0))


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _finish(img: np.ndarray, rng) -> np.ndarray:
    img += rng.normal(0, 0.05, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def shapes_segmentation(n: int, size: int = 32, seed: int = 0):
    """(images float32 [n, 3, size, size] on [0, 1], masks int64 [n, size, size]).

    1-3 shapes per image (1 rectangle, 2 disc, 3 triangle; 0 background), each with a hue tied to
    its class, on a noisy background; a 1-pixel ring of 255 (ignore, like VOC's object borders)
    surrounds each shape's visible region."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.empty((n, size, size), np.int64)
    lo, hi = max(4, size // 5), max(6, size // 2)
    for i in range(n):
        img, lab = _background(size, rng), np.zeros((size, size), np.int64)
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(1, 4))
            w, h = rng.integers(lo, hi + 1, 2)
            if cls == 2:
                h = w
            x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
            m = _shape_mask(cls, (x0, y0, x0 + w, y0 + h), size, rng)
            img[:, m] = _shape_colour(cls, rng)[:, None]
            lab[m] = cls
        ring = np.zeros((size, size), bool)
        for cls in (1, 2, 3):
            visible = lab == cls
            ring |= _dilate(visible) & ~visible
        lab[ring] = IGNORE
        images[i], masks[i] = _finish(img, rng), lab
    return images, masks


def shapes_detection(n: int, size: int = 48, seed: int = 0):
    """(images float32 [n, 3, size, size] on [0, 1], boxes: per image float32 [K, 4] xyxy pixels,
    labels: per image int64 [K] category ids in {1, 2, 3}); 1-3 objects per image, boxes of
    about size/6..size/2.7 pixels overlapping at most slightly (IoU < 0.05)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), np.float32)
    all_boxes, all_labels = [], []
    lo, hi = max(5, size // 6), max(8, int(size / 2.7))
    for i in range(n):
        img = _background(size, rng)
        boxes, labels = [], []
        for _ in range(rng.integers(1, 4)):
            for _attempt in range(20):
                cls = int(rng.integers(1, 4))
                w, h = rng.integers(lo, hi + 1, 2)
                if cls == 2:
                    h = w
                x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
                box = np.array([x0, y0, x0 + w, y0 + h], np.float32)
                if all(_iou(box, b) < 0.05 for b in boxes):
                    break
            else:
                continue
            m = _shape_mask(cls, box, size, rng)
            ys, xs = np.nonzero(m)
            img[:, m] = _shape_colour(cls, rng)[:, None]
            boxes.append(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32))
            labels.append(cls)
        images[i] = _finish(img, rng)
        all_boxes.append(np.array(boxes, np.float32).reshape(-1, 4))
        all_labels.append(np.array(labels, np.int64))
    return images, all_boxes, all_labels


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# models

def export(net, example: np.ndarray, output_names=None, opset: int = 17) -> bytes:
    """ONNX bytes: input "input", the given output names (default ["logits"]), dynamic batch."""
    import torch
    output_names = list(output_names or ["logits"])
    axes = {name: {0: "N"} for name in ["input", *output_names]}
    buf = io.BytesIO()
    torch.onnx.export(net, torch.from_numpy(np.ascontiguousarray(example[:2])), buf,
                      input_names=["input"], output_names=output_names, dynamic_axes=axes,
                      opset_version=opset, dynamo=False)
    return buf.getvalue()


class _OneThread:
    """Train on one torch thread: these nets are so small that a second thread only adds
    synchronisation, which costs 10x when the cores are shared with other work."""

    def __enter__(self):
        import torch
        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        import torch
        torch.set_num_threads(self._threads)


def _cbr(cin, cout, stride=1):
    from torch import nn
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU()]


def segmenter(width: int = 12):
    """conv-BN-ReLU at full size, MaxPool 2, two conv-BN-ReLU, 1x1 classifier, bilinear x2."""
    from torch import nn
    return nn.Sequential(*_cbr(3, width), nn.MaxPool2d(2), *_cbr(width, 2 * width),
                         *_cbr(2 * width, 2 * width), nn.Conv2d(2 * width, 4, 1),
                         nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))


def train_segmenter(seed: int = 0, epochs: int = 4, n_train: int = 600, size: int = 32,
                    width: int = 12):
    """(FCN in eval mode, its training images): trained with cross-entropy ignoring 255."""
    import torch
    torch.manual_seed(seed)
    x, y = shapes_segmentation(n_train, size, seed)
    net = segmenter(width)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    _fit(net, n_train, epochs, 1e-2, seed,
         lambda idx: torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], ignore_index=IGNORE))
    return net.eval(), x


def _fit(net, n_train: int, epochs: int, lr: float, seed: int, loss_of) -> None:
    """Adam with a one-cycle schedule over seeded shuffles in batches of 32, on one torch thread;
    `loss_of(batch indices)` gives a batch's loss."""
    import torch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-n_train // 32))
    gen = torch.Generator().manual_seed(seed)
    with _OneThread():
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(n_train, generator=gen).split(32):
                opt.zero_grad()
                loss_of(idx).backward()
                opt.step()
                sched.step()


def detector(width: int = 24):
    """Backbone to stride 4 (two strided conv-BN-ReLU, then two conv-BN-ReLU), heads (3x3 conv-ReLU,
    1x1 conv): "heatmap" (3 class logits per cell), "size" (w, h in cells), "offset" (the centre
    within its cell)."""
    import torch
    from torch import nn

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*_cbr(3, width // 2, 2), *_cbr(width // 2, width, 2),
                                      *_cbr(width, width), *_cbr(width, width))
            self.heads = nn.ModuleDict({
                name: nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(width, ch, 1))
                for name, ch in (("heatmap", 3), ("size", 2), ("offset", 2))})
            torch.nn.init.constant_(self.heads["heatmap"][-1].bias, -2.19)   # prior 0.1

        def forward(self, x):
            f = self.body(x)
            return self.heads["heatmap"](f), self.heads["size"](f), self.heads["offset"](f)

    return Detector()


DETECTOR_OUTPUTS = ["heatmap", "size", "offset"]
STRIDE = 4


def _detection_targets(boxes, labels, size: int):
    """CenterNet targets on the stride-4 grid: Gaussian heatmaps, and at each object's centre cell
    its size (cells) and sub-cell offset, with a mask."""
    g = size // STRIDE
    n = len(boxes)
    heat = np.zeros((n, 3, g, g), np.float32)
    wh = np.zeros((n, 2, g, g), np.float32)
    off = np.zeros((n, 2, g, g), np.float32)
    mask = np.zeros((n, 1, g, g), np.float32)
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    for i, (bs, ls) in enumerate(zip(boxes, labels)):
        for b, c in zip(bs, ls):
            cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
            w, h = (b[2] - b[0]) / STRIDE, (b[3] - b[1]) / STRIDE
            jx, jy = min(int(cx), g - 1), min(int(cy), g - 1)
            sigma = max(0.5, min(w, h) / 6)
            gauss = np.exp(-((xs - jx) ** 2 + (ys - jy) ** 2) / (2 * sigma ** 2))
            heat[i, c - 1] = np.maximum(heat[i, c - 1], gauss)
            wh[i, :, jy, jx] = (w, h)
            off[i, :, jy, jx] = (cx - jx, cy - jy)
            mask[i, 0, jy, jx] = 1.0
    return heat, wh, off, mask


def _focal(logits, target):
    import torch
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def train_detector(seed: int = 0, epochs: int = 5, n_train: int = 1000, size: int = 48,
                   width: int = 24):
    """(detector in eval mode, its training images): CenterNet losses (focal loss on Gaussian
    heatmaps, L1 on size and offset at the centres); outputs DETECTOR_OUTPUTS, no decoding."""
    import torch
    torch.manual_seed(seed)
    x, boxes, labels = shapes_detection(n_train, size, seed)
    heat, wh, off, mask = (torch.from_numpy(a) for a in _detection_targets(boxes, labels, size))
    net = detector(width)
    xt = torch.from_numpy(x)

    def loss_of(idx):
        h, s, o = net(xt[idx])
        m = mask[idx]
        npos = m.sum().clamp(min=1)
        return (_focal(h, heat[idx]) + 0.1 * ((s - wh[idx]).abs() * m).sum() / npos
                + ((o - off[idx]).abs() * m).sum() / npos)

    _fit(net, n_train, epochs, 5e-3, seed, loss_of)
    return net.eval(), x


# ---------------------------------------------------------------------------------------------
# decoding

_DECODE = '''\
"""Decode the shapes detector's heads (CenterNet style) into boxes; NumPy only.

outputs: {"heatmap": [N, C, h, w] class logits, "size": [N, 2, h, w] box (w, h) in grid cells,
"offset": [N, 2, h, w] centre offset within its cell (optional)}; meta: one dict per image with
its original "width" and "height". Boxes come back in original pixels: the grid covers the whole
image, so a cell is width/w by height/h original pixels whatever the model's input size.
"""
import numpy as np

SCORE_THRESHOLD = {threshold!r}
TOP_K = {top_k!r}


def _peaks(scores):
    """Keep the values that are the maximum of their 3x3 neighbourhood (max-pool NMS)."""
    c, h, w = scores.shape
    padded = np.full((c, h + 2, w + 2), -np.inf, scores.dtype)
    padded[:, 1:-1, 1:-1] = scores
    pooled = scores.copy()
    for dy in range(3):
        for dx in range(3):
            pooled = np.maximum(pooled, padded[:, dy:dy + h, dx:dx + w])
    return np.where(scores >= pooled, scores, 0.0)


def decode(outputs, meta):
    heat = np.asarray(outputs["heatmap"], np.float64)
    size = np.asarray(outputs["size"], np.float64)
    offset = outputs.get("offset")
    offset = None if offset is None else np.asarray(offset, np.float64)
    results = []
    for i, info in enumerate(meta):
        scores = _peaks(1.0 / (1.0 + np.exp(-heat[i])))
        c, h, w = scores.shape
        flat = scores.ravel()
        k = min(TOP_K, flat.size)
        top = np.argpartition(-flat, k - 1)[:k]
        top = top[np.argsort(-flat[top], kind="stable")]
        top = top[flat[top] > SCORE_THRESHOLD]
        cls, rem = np.divmod(top, h * w)
        ys, xs = np.divmod(rem, w)
        if offset is not None:
            cx, cy = xs + offset[i, 0, ys, xs], ys + offset[i, 1, ys, xs]
        else:
            cx, cy = xs + 0.5, ys + 0.5
        bw, bh = np.maximum(size[i, 0, ys, xs], 0.0), np.maximum(size[i, 1, ys, xs], 0.0)
        sx, sy = float(info["width"]) / w, float(info["height"]) / h
        boxes = np.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy,
                          (cx + bw / 2) * sx, (cy + bh / 2) * sy], axis=1).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, float(info["width"]))
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, float(info["height"]))
        results.append((boxes.astype(np.float32), flat[top].astype(np.float32),
                        (cls + 1).astype(np.int64)))
    return results
'''


def decode_source(threshold: float = 0.05, top_k: int = 20) -> str:
    """Text of a Python file defining `decode(outputs, meta)` for the detector's heads: 3x3
    max-pool peak picking on the sigmoid heatmap, score threshold, top-K; returns per image
    (boxes [K, 4] xyxy in the image's original pixels, scores [K], labels [K] category ids)."""
    return (_DECODE.replace("{threshold!r}", repr(float(threshold)))
            .replace("{top_k!r}", repr(int(top_k))))


def load_decode(threshold: float = 0.05, top_k: int = 20):
    """The `decode` function of decode_source(), without writing a file."""
    namespace: dict = {}
    exec(compile(decode_source(threshold, top_k), "<task_models.decode>", "exec"), namespace)
    return namespace["decode"]


# ---------------------------------------------------------------------------------------------
# dataset folders

def _to_uint8_hwc(image) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return a[..., 0] if a.shape[-1] == 1 else a


def coco_annotations(boxes, labels, sizes, file_names) -> dict:
    """COCO detection annotations. boxes: per image [K, 4] xyxy pixels; labels: per image category
    ids; sizes: per image (width, height); file_names: per image. Image ids are 1..N in order."""
    images, annotations = [], []
    for i, (bs, ls, (w, h), name) in enumerate(zip(boxes, labels, sizes, file_names), start=1):
        images.append({"id": i, "file_name": str(name), "width": int(w), "height": int(h)})
        for b, c in zip(np.asarray(bs, np.float64).reshape(-1, 4), ls):
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                "bbox": [float(b[0]), float(b[1]), bw, bh], "area": bw * bh,
                                "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": v, "supercategory": "shape"}
                           for k, v in CATEGORIES.items()]}


def write_coco_folder(folder, images, boxes, labels, original_size=None):
    """Write folder/images/<00001>.png and folder/annotations.json (COCO); returns (image folder,
    json path). images: float [N, 3, H, W] on [0, 1] or uint8 (NCHW or NHWC). original_size (an int
    or (width, height)) writes the images resized to that size, boxes scaled to it."""
    from PIL import Image
    folder = Path(folder)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    names, sizes, scaled = [], [], []
    for i, (image, bs) in enumerate(zip(images, boxes), start=1):
        pil = Image.fromarray(_to_uint8_hwc(image))
        w0, h0 = pil.size
        if original_size is not None:
            w1, h1 = ((original_size, original_size) if np.isscalar(original_size)
                      else tuple(original_size))
            pil = pil.resize((int(w1), int(h1)), Image.BILINEAR)
        w1, h1 = pil.size
        name = f"{i:05d}.png"
        pil.save(image_dir / name)
        names.append(name)
        sizes.append((w1, h1))
        scale = np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0])
        scaled.append(np.asarray(bs, np.float64).reshape(-1, 4) * scale)
    ann = folder / "annotations.json"
    ann.write_text(json.dumps(coco_annotations(scaled, labels, sizes, names)))
    return image_dir, ann


def voc_palette() -> list:
    """Pascal VOC's 256-colour palette (flat RGB list; index 255 is (224, 224, 192))."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc_root(root, images, masks, split_names=None):
    """Write a Pascal VOC layout: JPEGImages/<id>.jpg (quality 95), SegmentationClass/<id>.png
    (palette PNGs, 255 = ignore), ImageSets/Segmentation/trainval.txt and, with split_names
    ({"train": [...], "val": [...]}: ids, or indices into images), <split>.txt. Ids are
    "2007_000001", ... Returns (root, ids)."""
    from PIL import Image
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    ids = [f"2007_{i:06d}" for i in range(1, len(images) + 1)]
    for image_id, image, mask in zip(ids, images, masks):
        Image.fromarray(_to_uint8_hwc(image)).save(root / "JPEGImages" / f"{image_id}.jpg",
                                                   quality=95)
        m = np.ascontiguousarray(np.asarray(mask).astype(np.uint8))
        png = Image.frombytes("P", (m.shape[1], m.shape[0]), m.tobytes())
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
    sets = root / "ImageSets" / "Segmentation"
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    for split, members in (split_names or {}).items():
        names = [ids[m] if isinstance(m, (int, np.integer)) else str(m) for m in members]
        (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    return root, ids
