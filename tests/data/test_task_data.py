"""Data for segmentation, detection and regression: VOC folders, COCO JSON, .npz masks and
targets, ImageNet-style resize + centre crop, calibration augmentation kinds (no torch)."""
import json

import numpy as np
import pytest
from PIL import Image

from onnx2snn import UserError
from onnx2snn.data import batches as Bt
from onnx2snn import data as D
from onnx2snn.config import CalibConfig
from onnx2snn.data import CocoImages, VOCSegmentation

INPUT = [D.InputInfo("input", (None, 3, 8, 8), np.dtype(np.float32))]
PREP = D.Preprocess(mean=(0.5,), std=(0.25,))


def _palette_mask(path, h, w, value):
    """A palette PNG of class `value` inside a 1-pixel border of 255 (VOC's 'ignore' outline)."""
    arr = np.full((h, w), 255, np.uint8)
    arr[1:-1, 1:-1] = value
    img = Image.fromarray(arr, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _voc(root, ids=("b", "a", "c"), size=(12, 10)):
    """A VOC root: JPEGs of (w, h) `size` and their masks, plus an image without a mask and a mask
    without an image (both left out)."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    w, h = size
    for k, i in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        _palette_mask(root / "SegmentationClass" / f"{i}.png", h, w, k + 1)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "JPEGImages" / "nomask.jpg")
    _palette_mask(root / "SegmentationClass" / "noimage.png", h, w, 9)
    return root


# ------------------------------------------------------------------------------------------ VOC
def test_voc_images_and_masks(tmp_path):
    root = _voc(tmp_path / "VOC2012")
    src = D.open_data(str(root), None, INPUT, PREP)
    assert isinstance(src, VOCSegmentation) and src.task_hint == "segment" and src.labels_known
    assert src.ids == ["a", "b", "c"] and src.describe(0) == str(root / "JPEGImages" / "a.jpg")
    feeds, masks = src.batch([0, 2])
    assert feeds["input"].shape == (2, 3, 8, 8) and feeds["input"].dtype == np.float32
    assert masks.shape == (2, 8, 8) and masks.dtype == np.int64
    raw = np.asarray(Image.open(root / "JPEGImages" / "a.jpg").convert("RGB").resize((8, 8), Image.BILINEAR),
                     np.float32) / 255
    np.testing.assert_allclose(feeds["input"][0], ((raw - 0.5) / 0.25).transpose(2, 0, 1), rtol=1e-6)
    want = np.asarray(Image.open(root / "SegmentationClass" / "c.png").resize((8, 8), Image.NEAREST))
    assert np.array_equal(masks[1], want) and set(np.unique(masks[1])) == {3, 255}   # nearest: no blends
    assert masks[0, 0, 0] == 255 and masks[0, 4, 4] == 2     # "a" is the second id written


def test_voc_split_lists_and_errors(tmp_path):
    root = _voc(tmp_path / "voc")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("c\nb\n\n")
    src = D.open_data(str(root), None, INPUT, PREP, split="val")
    assert src.ids == ["c", "b"] and list(src.batch([0, 1])[1][:, 4, 4]) == [3, 1]
    with pytest.raises(UserError, match=r"split train: .*ImageSets/Segmentation/train\.txt: no such file"):
        D.open_data(str(root), None, INPUT, PREP, split="train")
    (sets / "bad.txt").write_text("a\nnomask\n")
    with pytest.raises(UserError, match=r"bad\.txt: lists nomask, but .*nomask\.png does not exist"):
        D.open_data(str(root), None, INPUT, PREP, split="bad")
    with pytest.raises(UserError, match="split val: only for a Pascal VOC folder"):
        D.open_data(str(root / "JPEGImages"), None, INPUT, PREP, split="val")
    with pytest.raises(UserError, match=r"holds the Pascal VOC folder voc; pass data .*voc"):
        D.open_data(str(tmp_path), None, INPUT, PREP)


def test_voc_mask_must_hold_class_ids(tmp_path):
    root = _voc(tmp_path / "voc")
    Image.new("RGB", (12, 10), (1, 2, 3)).save(root / "SegmentationClass" / "b.png")
    src = D.open_data(str(root), None, INPUT, PREP)
    with pytest.raises(UserError, match=r"b\.png: a mask must be a palette \(P\) or greyscale \(L\) PNG.*mode RGB"):
        src.batch([1])
    Image.fromarray(np.ones((5, 5), np.uint8), mode="L").save(root / "SegmentationClass" / "c.png")
    with pytest.raises(UserError, match=r"c\.png: the mask is 5x5 pixels, its image is 12x10"):
        src.batch([2])
    assert src.batch([0])[1].shape == (1, 8, 8)


def test_voc_with_resize_and_crop_moves_masks_alike(tmp_path):
    root = _voc(tmp_path / "voc", size=(20, 10))
    src = D.open_data(str(root), None, INPUT, D.Preprocess(resize=8, crop=(8, 8)))
    _, masks = src.batch([0])
    want = np.asarray(Image.open(root / "SegmentationClass" / "a.png").resize((16, 8), Image.NEAREST))[:, 4:12]
    assert np.array_equal(masks[0], want)


# ----------------------------------------------------------------------------------------- COCO
def _coco(tmp_path, sizes=((12, 10), (9, 14), (10, 10))):
    folder = tmp_path / "val2017"
    folder.mkdir()
    images = []
    for k, (w, h) in enumerate(sizes):
        name = f"{k:012d}.jpg"
        Image.new("RGB", (w, h), (40 * k, 100, 200)).save(folder / name)
        images.append({"id": 100 + k, "file_name": name, "width": w, "height": h})
    images.reverse()                      # the JSON's order is kept, whatever the file names
    ann = tmp_path / "instances_val.json"
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return folder, ann, images


def test_coco_images_and_meta(tmp_path):
    folder, ann, images = _coco(tmp_path)
    src = D.open_data(str(folder), None, INPUT, PREP, annotations=str(ann))
    assert isinstance(src, CocoImages) and src.task_hint == "detect" and len(src) == 3
    feeds, meta = src.batch([0, 2])
    assert feeds["input"].shape == (2, 3, 8, 8)
    assert meta == [{"image_id": 102, "width": 10, "height": 10, "file_name": "000000000002.jpg"},
                    {"image_id": 100, "width": 12, "height": 10, "file_name": "000000000000.jpg"}]
    meta[0]["width"] = -1                 # the caller's copy
    assert src.batch([0])[1][0]["width"] == 10
    sub = D.split(src, 1, seed=0)[0]
    assert sub.task_hint == "detect" and isinstance(sub.batch([0])[1], list)


def test_coco_errors(tmp_path):
    folder, ann, images = _coco(tmp_path)
    doc = json.loads(ann.read_text())
    doc["images"][1]["width"] = 50
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(doc))
    src = D.open_data(str(folder), None, INPUT, PREP, annotations=str(wrong))
    with pytest.raises(UserError, match=r"000000000001\.jpg: the image is 9x14 pixels, .*wrong\.json says 50x14"):
        src.batch([1])
    doc["images"][1]["file_name"] = "gone.jpg"
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"gone\.jpg: no such image \(listed in .*missing\.json as images\[1\]\)"):
        D.open_data(str(folder), None, INPUT, PREP, annotations=str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{\"images\": [")
    with pytest.raises(UserError, match=r"annotations .*bad\.json: not a readable JSON file \(") as err:
        D.open_data(str(folder), None, INPUT, PREP, annotations=str(bad))
    assert "\n" not in str(err.value)
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(UserError, match=r"bad\.json: expected a COCO JSON object with an \"images\" list"):
        D.open_data(str(folder), None, INPUT, PREP, annotations=str(bad))
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 3}]}))
    with pytest.raises(UserError, match=r"bad\.json: images\[0\] lacks \"height\""):
        D.open_data(str(folder), None, INPUT, PREP, annotations=str(bad))
    with pytest.raises(UserError, match=r"annotations .*nope\.json: no such file"):
        D.open_data(str(folder), None, INPUT, PREP, annotations=str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="data must be the folder of the images"):
        D.open_data(str(ann), None, INPUT, PREP, annotations=str(ann))
    with pytest.raises(UserError, match="resize/crop: detection images"):
        D.open_data(str(folder), None, INPUT, D.Preprocess(resize=8), annotations=str(ann))


# ------------------------------------------------------------------------------------ .npz labels
def test_npz_masks_targets_and_class_ids(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 3, 8, 8)).astype(np.float32)
    masks = np.random.default_rng(1).integers(0, 4, (6, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "seg.npz", input=x, masks=masks)
    src = D.open_data(str(tmp_path / "seg.npz"), None, INPUT, D.Preprocess())
    _, labels = src.batch([4, 1])
    assert src.task_hint == "segment" and labels.dtype == np.int64 and np.array_equal(labels, masks[[4, 1]])
    np.savez(tmp_path / "seg1.npz", input=x, y=masks[:, None].astype(np.int32))   # [N, 1, H, W] under y
    src = D.open_data(str(tmp_path / "seg1.npz"), None, INPUT, D.Preprocess())
    assert src.task_hint == "segment" and src.batch([2])[1].shape == (1, 8, 8)

    targets = np.random.default_rng(2).normal(size=(6, 2)).astype(np.float64)
    for key in ("target", "y"):
        np.savez(tmp_path / f"reg_{key}.npz", input=x, **{key: targets})
        src = D.open_data(str(tmp_path / f"reg_{key}.npz"), None, INPUT, D.Preprocess())
        _, labels = src.batch([5, 0])
        assert src.task_hint == "regress" and labels.dtype == np.float32
        np.testing.assert_allclose(labels, targets[[5, 0]], rtol=1e-6)
    np.savez(tmp_path / "scalar.npz", input=x, targets=np.arange(6, dtype=np.int64))   # ints under target
    assert D.open_data(str(tmp_path / "scalar.npz"), None, INPUT, D.Preprocess()).task_hint == "regress"

    for name, y in (("ids", np.arange(6)), ("col", np.arange(6)[:, None]), ("floatids", np.arange(6.0))):
        np.savez(tmp_path / f"{name}.npz", input=x, label=y)
        src = D.open_data(str(tmp_path / f"{name}.npz"), None, INPUT, D.Preprocess())
        _, labels = src.batch([3, 1])
        assert src.task_hint == "classify" and labels.dtype == np.int64 and list(labels) == [3, 1]


def test_npz_label_errors(tmp_path):
    x = np.zeros((4, 3, 8, 8), np.float32)
    cases = {
        "float masks": ({"mask": np.zeros((4, 8, 8), np.float32)},
                        r"masks 'mask' are float32 \[N, 8, 8\], expected integers"),
        "wrong size": ({"masks": np.zeros((4, 5, 5), np.int64)},
                       r"masks 'masks' \[N, 5, 5\] do not match .* input 'input'"),
        "int vectors": ({"y": np.zeros((4, 3), np.int64)}, r"labels 'y' are integers \[N, 3\]: expected class ids"),
        "count": ({"labels": np.zeros(3, np.int64)}, r"labels 'labels' have 3 entries for 4 samples"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(path, input=x, **arrays)
        with pytest.raises(UserError, match=message):
            D.open_data(str(path), None, INPUT, D.Preprocess())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.savez(mixed / "a.npz", input=x, y=np.arange(4))
    np.savez(mixed / "b.npz", input=x, masks=np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(UserError, match="labels differ in kind or sample shape"):
        D.open_data(str(mixed), None, INPUT, D.Preprocess())


# ------------------------------------------------------------------------- resize + centre crop
def _marked(path, w, h):
    """An image whose centre (w/3 .. 2w/3 wide, h/3 .. 2h/3 high) is red, the rest blue."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 2] = 255
    arr[h // 3: 2 * h // 3, w // 3: 2 * w // 3] = (255, 0, 0)
    Image.fromarray(arr).save(path)


def test_resize_then_centre_crop_picks_the_centre(tmp_path):
    root = tmp_path / "imgs" / "cls"
    root.mkdir(parents=True)
    _marked(root / "wide.png", 72, 24)     # shorter side 24 -> resize 24: no-op; crop 8x8 -> the centre
    _marked(root / "tall.png", 30, 90)     # shorter side 30 -> 8 wide, 24 high
    src = D.open_data(str(tmp_path / "imgs"), None, INPUT, D.Preprocess(resize=8, crop=(8, 8)))
    assert src.task_hint == "classify" and src.prep.resize == 8 and src.prep.crop == (8, 8)
    feeds, _ = src.batch([0, 1])
    for k, (name, size, box) in enumerate((("tall.png", (8, 24), (0, 8, 8, 16)), ("wide.png", (24, 8), (8, 0, 16, 8)))):
        want = np.asarray(Image.open(root / name).convert("RGB").resize(size, Image.BILINEAR).crop(box),
                          np.float32).transpose(2, 0, 1) / 255
        np.testing.assert_allclose(feeds["input"][k], want, atol=1e-6)
        centre = feeds["input"][k][:, 3:5, 3:5]
        assert (centre[0] > 0.9).all() and (centre[2] < 0.1).all()           # red marker in the middle
    # --resize alone crops the centre at the model's size; the recorded Preprocess round-trips
    alone = D.open_data(str(tmp_path / "imgs"), None, INPUT, D.Preprocess(resize=8))
    assert np.array_equal(alone.batch([0, 1])[0]["input"], feeds["input"])
    assert D.Preprocess.from_json(src.prep.to_json()) == src.prep


def test_resize_and_crop_validation():
    with pytest.raises(UserError, match=r"^resize 0: expected a positive integer"):
        D.Preprocess(resize=0)
    with pytest.raises(UserError, match=r"^resize True: expected"):
        D.Preprocess(resize=True)
    with pytest.raises(UserError, match=r"^crop \(1, 2, 3\): expected two positive integers H,W"):
        D.Preprocess(crop=(1, 2, 3))
    with pytest.raises(UserError, match=r"^crop 300,300: larger than resize 256"):
        D.Preprocess(resize=256, crop=(300, 300))
    assert D.Preprocess(crop=224).crop == (224, 224)
    old = json.dumps({"mean": [0.5], "std": [0.25], "size": [8, 8], "layout": "NCHW"})
    assert D.Preprocess.from_json(old) == D.Preprocess((0.5,), (0.25,), (8, 8), "NCHW")
    full = D.Preprocess((0.5,), (0.25,), None, None, 256, (224, 224))
    assert D.Preprocess.from_json(full.to_json()) == full


def test_crop_must_match_the_model_input(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    _marked(root / "a.png", 30, 20)
    with pytest.raises(UserError, match=r"^crop 6,6: the model input 'input' takes 8x8 images"):
        D.open_data(str(root), None, INPUT, D.Preprocess(resize=10, crop=(6, 6)))
    with pytest.raises(UserError, match=r"^crop 6,6: size takes 7x7 images"):
        D.open_data(str(root), None, INPUT, D.Preprocess(size=(7, 7), resize=10, crop=(6, 6)))
    with pytest.raises(UserError, match=r"^resize 6: smaller than the 8x8 centre crop"):
        D.open_data(str(root), None, INPUT, D.Preprocess(resize=6))
    dynamic = [D.InputInfo("input", (None, 3, None, None), np.dtype(np.float32))]
    src = D.open_data(str(root), None, dynamic, D.Preprocess(resize=12, crop=(10, 12)))  # the crop sets the size
    assert src.batch([0])[0]["input"].shape == (1, 3, 10, 12) and src.task_hint is None   # flat folder
    small = D.open_data(str(root), None, INPUT, D.Preprocess(crop=(8, 8)))              # crop alone
    assert small.batch([0])[0]["input"].shape == (1, 3, 8, 8)
    with pytest.raises(UserError, match=r"a\.png: the image is 30x20 pixels, smaller than the 24x24 centre crop"):
        D.open_data(str(root), None, [D.InputInfo("input", (None, 3, 24, 24), np.dtype(np.float32))],
                    D.Preprocess(crop=(24, 24))).batch([0])


# -------------------------------------------------------------------------------- augmentation
def _mask_batch(n=16, hw=8):
    """Images whose channel 0 is the mask (as floats): moving both alike keeps them equal."""
    rng = np.random.default_rng(5)
    masks = rng.integers(0, 5, (n, hw, hw)).astype(np.int64)
    x = rng.normal(size=(n, 3, hw, hw)).astype(np.float32)
    x[:, 0] = masks
    return {"input": x}, masks


@pytest.mark.parametrize("kind", ["flip", "crop-flip"])
def test_flip_and_crop_flip_move_masks_with_images(kind):
    feeds, masks = _mask_batch()
    a, ma = Bt.augment_batch(feeds, masks, kind, "NCHW", np.random.default_rng(3))
    b, mb = Bt.augment_batch(feeds, masks, kind, "NCHW", np.random.default_rng(3))
    assert np.array_equal(a["input"], b["input"]) and np.array_equal(ma, mb)           # seeded
    assert not np.array_equal(ma, masks) and ma.shape == masks.shape
    keep = ma != Bt.IGNORE
    assert np.array_equal(a["input"][:, 0][keep], ma[keep].astype(np.float32))
    if kind == "flip":
        assert keep.all()
        flipped = [not np.array_equal(ma[i], masks[i]) for i in range(len(masks))]
        assert all(np.array_equal(ma[i], masks[i][:, ::-1]) for i in np.flatnonzero(flipped))
        assert np.array_equal(a["input"][:, 1:][~np.array(flipped)], feeds["input"][:, 1:][~np.array(flipped)])
    else:
        assert (a["input"][:, 0][~keep] == 0).all()                          # zero-padded image, 255 mask
    assert np.array_equal(feeds["input"][:, 0], masks)                       # inputs untouched
    _, meta = Bt.augment_batch(feeds, [{"image_id": 1}], kind, "NCHW", np.random.default_rng(3))
    assert meta == [{"image_id": 1}]                                         # other labels pass through


def test_crop_flip_is_the_former_augmentation():
    x = np.random.default_rng(0).normal(size=(8, 3, 8, 8)).astype(np.float32)
    old = Bt._augment(x, "NCHW", np.random.default_rng(4))
    new, _ = Bt.augment_batch({"input": x}, None, "crop-flip", "NCHW", np.random.default_rng(4))
    assert np.array_equal(old, new["input"])


def test_ssd_augmentation():
    n = 16
    const = {"input": np.full((n, 3, 8, 8), 0.3, np.float32)}
    masks = np.ones((n, 8, 8), np.int64)
    # without the normalisation: no photometric step, the zoom-out fills with the image's mean
    out, m = Bt.augment_batch(const, masks, "ssd", "NCHW", np.random.default_rng(1), prep=None)
    np.testing.assert_allclose(out["input"], const["input"], atol=1e-6)
    zoomed = (m == Bt.IGNORE).any(axis=(1, 2))
    assert set(np.unique(m)) == {1, Bt.IGNORE} and 0 < zoomed.sum() < n
    assert (m[~zoomed] == 1).all()
    # with it: photometric changes, values stay within the normalised [0, 1] range, seeded
    prep = D.Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    rng_x = np.random.default_rng(2).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)
    x = (rng_x - np.array(prep.mean, np.float32)) / np.array(prep.std, np.float32)
    a, _ = Bt.augment_batch({"input": x}, None, "ssd", "NHWC", np.random.default_rng(7), prep)
    b, _ = Bt.augment_batch({"input": x}, None, "ssd", "NHWC", np.random.default_rng(7), prep)
    assert np.array_equal(a["input"], b["input"]) and a["input"].shape == x.shape
    assert a["input"].dtype == np.float32 and not np.allclose(a["input"], x)
    back = a["input"] * np.array(prep.std, np.float32) + np.array(prep.mean, np.float32)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5
    c, _ = Bt.augment_batch({"input": x}, None, "ssd", "NHWC", np.random.default_rng(8), prep)
    assert not np.array_equal(a["input"], c["input"])


def test_augment_kinds_in_calibration(tmp_path):
    src = D.open_data(str(_voc(tmp_path / "voc")), None, INPUT, PREP)
    plain = [b["input"] for b in Bt.calibration_batches(src, 3, 4, seed=1)]
    for kind in ("flip", "ssd", "crop-flip", True):
        one = [b["input"] for b in Bt.calibration_batches(src, 3, 4, seed=1, augment=kind)]
        two = [b["input"] for b in Bt.calibration_batches(src, 3, 4, seed=1, augment=kind)]
        assert all(np.array_equal(p, q) for p, q in zip(one, two))
        assert not all(np.array_equal(p, q) for p, q in zip(one, plain))
    with pytest.raises(UserError, match=r"^augment zoom: expected crop-flip, flip or ssd$"):
        next(Bt.calibration_batches(src, 3, 4, seed=1, augment="zoom"))
    with pytest.raises(UserError, match=r"^augment zoom: expected crop-flip, flip or ssd$"):
        CalibConfig(augment="zoom")
    assert CalibConfig(augment="ssd").augment == "ssd" and CalibConfig(augment=True).augment is True


# --------------------------------------------------------------------- skipping NaN/Inf samples
class _Meta(D.Source):
    """Detection-like labels (a list) and masks, sample 1 holding NaN."""
    labels_known = True

    def __init__(self, masks: bool):
        self.masks = masks

    def __len__(self):
        return 4

    def describe(self, index):
        return f"sample {index}"

    def batch(self, indices):
        x = np.zeros((len(indices), 3, 8, 8), np.float32)
        x[[k for k, i in enumerate(indices) if i == 1]] = np.nan
        if self.masks:
            return {"input": x}, np.stack([np.full((8, 8), i, np.int64) for i in indices])
        return {"input": x}, [{"image_id": int(i)} for i in indices]


def test_skipping_nonfinite_keeps_masks_and_meta_aligned():
    got = list(Bt.eval_batches(_Meta(masks=False), 4, nonfinite=Bt.NonFinite(skip=True)))
    assert [m["image_id"] for _, m in got for m in m] == [0, 2, 3] and len(got[0][0]["input"]) == 3
    skip = Bt.NonFinite(skip=True)
    got = list(Bt.eval_batches(_Meta(masks=True), 4, nonfinite=skip))
    assert list(got[0][1][:, 0, 0]) == [0, 2, 3] and skip.skipped == 1
    with pytest.raises(UserError, match="sample 1: input 'input' holds NaN or Inf"):
        list(Bt.eval_batches(_Meta(masks=False), 4))
