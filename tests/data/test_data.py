"""Data sources: image folders, .npy/.npz (memory-mapped), loader scripts, shuffled reuse."""
import numpy as np
import pytest
from PIL import Image

from onnx2snn import UserError
from onnx2snn.data import batches as Bt
from onnx2snn import data as D

INPUT = [D.InputInfo("input", (None, 3, 4, 4), np.dtype(np.float32))]


def _image_folder(root, per_class=3):
    rng = np.random.default_rng(0)
    for cls in ("b_dog", "a_cat"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_image_folder_labels_resize_and_normalise(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    src = D.open_data(str(root), None, INPUT, D.Preprocess(mean=(0.5,), std=(0.25,)))
    assert len(src) == 6 and src.classes == ["a_cat", "b_dog"]
    feeds, labels = src.batch([0, 5])
    assert feeds["input"].shape == (2, 3, 4, 4) and list(labels) == [0, 1]
    raw = np.asarray(Image.open(src.files[0]).convert("RGB").resize((4, 4), Image.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(feeds["input"][0], ((raw - 0.5) / 0.25).transpose(2, 0, 1), rtol=1e-6)


def test_nhwc_layout_from_the_model(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    info = [D.InputInfo("x", (None, 4, 4, 3), np.dtype(np.float32))]
    feeds, _ = D.open_data(str(root), None, info, D.Preprocess()).batch([0])
    assert feeds["x"].shape == (1, 4, 4, 3)


def test_npz_is_memory_mapped_and_streamed(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x, y=np.arange(50))
    src = D.open_data(str(tmp_path / "d.npz"), None, INPUT, D.Preprocess())
    assert isinstance(src.chunks[0][0]["input"], np.memmap)
    feeds, labels = src.batch([3, 7])
    assert np.array_equal(feeds["input"], x[[3, 7]]) and list(labels) == [3, 7]


def test_folder_of_npy_chunks(tmp_path):
    for i in range(3):
        np.save(tmp_path / f"part{i}.npy", np.full((4, 3, 4, 4), i, np.float32))
    src = D.open_data(str(tmp_path), None, INPUT, D.Preprocess())
    assert len(src) == 12 and not src.labels_known
    feeds, _ = src.batch([0, 5, 11])
    assert list(feeds["input"][:, 0, 0, 0]) == [0, 1, 2]


def test_calibration_batches_reuse_samples_in_shuffled_order(tmp_path):
    np.save(tmp_path / "d.npy", np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, 3, 4, 4), np.float32))
    src = D.open_data(str(tmp_path / "d.npy"), None, INPUT, D.Preprocess())
    seen = [b["input"][:, 0, 0, 0] for b in Bt.calibration_batches(src, 4, 5, seed=1)]
    assert all(len(s) == 4 for s in seen)
    flat = np.concatenate(seen)
    assert sorted(flat[:10]) == list(range(10))      # first epoch: every sample once
    assert not np.array_equal(flat[:10], np.arange(10))  # shuffled
    again = np.concatenate([b["input"][:, 0, 0, 0] for b in Bt.calibration_batches(src, 4, 5, seed=1)])
    assert np.array_equal(flat, again)                 # --seed makes it repeatable


def test_augment_flips_and_crops_but_keeps_shape(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 3, 4, 4)).astype(np.float32)
    out = Bt._augment(x, "NCHW", np.random.default_rng(0), pad=1)
    assert out.shape == x.shape and not np.array_equal(out, x)


def test_loader_script(tmp_path):
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\n"
                      "def load():\n"
                      "    for i in range(3):\n"
                      "        yield {'input': np.full((2, 3, 4, 4), i, np.float32), 'y': np.array([i, i])}\n")
    src = D.open_data(None, f"{script}:load", INPUT, D.Preprocess())
    batches = list(Bt.calibration_batches(src, 2, 5, 0))
    assert len(batches) == 5 and batches[3]["input"][0, 0, 0, 0] == 0
    evals = list(Bt.eval_batches(src, 2, limit=3))
    assert sum(len(f["input"]) for f, _ in evals) == 3
    with pytest.raises(UserError, match="no function nope"):
        D.open_data(None, f"{script}:nope", INPUT, D.Preprocess())


def test_prefetch_keeps_order_raises_and_stops():
    import threading
    assert list(Bt.prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise UserError("bad sample")
    gen = Bt.prefetch(failing())
    assert next(gen) == 1
    with pytest.raises(UserError, match="bad sample"):
        next(gen)
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1
    gen = Bt.prefetch(endless(), depth=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    import time
    time.sleep(0.5)
    count = len(produced)
    time.sleep(0.3)
    assert len(produced) == count and count <= 7       # the producer stopped, a bounded queue ahead
    assert not any(t.name == "onnx2snn-prefetch" and t.is_alive() for t in threading.enumerate())


def test_calibration_with_prefetch_is_deterministic(tmp_path):
    from tools.fixtures import graphs
    from onnx2snn import CalibConfig, api
    model = graphs.deep_chain_model(depth=3)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32))
    src = api.open_source(model, str(tmp_path / "d.npy"))
    a = api.calibrate(model, src, CalibConfig(iters=6, batch_size=16, seed=3, augment=True))
    b = api.calibrate(model, src, CalibConfig(iters=6, batch_size=16, seed=3, augment=True))
    assert a.to_bytes(False) == b.to_bytes(False)


@pytest.mark.parametrize("budget_mb,decodes", [(None, 6), ("0", 24)])
def test_image_folder_decodes_each_image_once_within_the_cache_budget(tmp_path, monkeypatch, budget_mb, decodes):
    if budget_mb is not None:
        monkeypatch.setenv(D.CACHE_ENV, budget_mb)
    src = D.open_data(str(_image_folder(tmp_path / "imgs")), None, INPUT, D.Preprocess())
    loads = []
    real = src._load
    monkeypatch.setattr(src, "_load", lambda path: loads.append(path) or real(path))
    first = [b["input"].copy() for b in Bt.calibration_batches(src, 4, 3, seed=1)]    # 12 samples: 2 epochs
    again = [b["input"] for b in Bt.calibration_batches(src, 4, 3, seed=1)]
    assert len(loads) == decodes
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_augment_leaves_the_cached_samples_alone(tmp_path):
    src = D.open_data(str(_image_folder(tmp_path / "imgs")), None, INPUT, D.Preprocess())
    before = src.batch(range(6))[0]["input"].copy()
    list(Bt.calibration_batches(src, 6, 4, seed=2, augment=True))
    assert np.array_equal(src.batch(range(6))[0]["input"], before)


def test_image_cache_budget_must_be_a_number(tmp_path, monkeypatch):
    monkeypatch.setenv(D.CACHE_ENV, "lots")
    with pytest.raises(UserError, match="ONNX2SNN_IMAGE_CACHE_MB=lots: expected a number"):
        D.open_data(str(_image_folder(tmp_path / "imgs")), None, INPUT, D.Preprocess())
