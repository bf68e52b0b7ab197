"""Scaling out (onnx2snn/cluster/): eval, run and conversion on a local Dask cluster give the single
process's results byte for byte, calibration rounds do not depend on the number of workers, a
worker killed mid-run loses nothing and counts nothing twice, and bad data on a worker stops the
run with the usual one-line error. Ray runs where it is installed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx2snn import api, cluster
from onnx2snn.config import CalibConfig, SNNConfig
from onnx2snn.errors import UserError

distributed = pytest.importorskip("distributed", reason="the onnx2snn[dask] extra (dask distributed) is not installed")


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """A local Dask cluster of 2 worker processes, shared by the module's tests (their copies of
    --data URLs go to a temporary folder: the workers inherit the variable)."""
    notes = []
    before = os.environ.get("ONNX2SNN_DATA_CACHE")
    os.environ["ONNX2SNN_DATA_CACHE"] = str(tmp_path_factory.mktemp("worker-cache"))
    try:
        with cluster.connect(workers=2, say=notes.append) as engine:
            engine.describe()            # started now, not inside the first test's timing
            engine.notes_seen = notes
            yield engine
    finally:
        if before is None:
            os.environ.pop("ONNX2SNN_DATA_CACHE", None)
        else:
            os.environ["ONNX2SNN_DATA_CACHE"] = before


@pytest.fixture(scope="module")
def converted(tmp_path_factory, resnet_path, digits_npz):
    """A residual digits CNN converted in one process (defaults: both corrections, delay auto)."""
    folder = tmp_path_factory.mktemp("cluster")
    out = folder / "resnet.snn.onnx"
    res = api.convert(resnet_path, data=str(digits_npz[0]), output=out, calib=CalibConfig(iters=40),
                      snn=SNNConfig(timesteps=16, delay="auto", correct="both"), save_thresholds=folder / "th.json",
                      check_samples=64)
    return out, folder / "th.json", res


def _kill_once(marker: Path, job: str, shard: int):
    """A worker plugin that ends its worker's process (as a crash or an OOM kill would) when shard
    `shard` of a job named `job` starts executing there, once: `marker` records that it happened."""
    class KillOnce(distributed.WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            name = key if isinstance(key, str) else str(key)
            if finish == "executing" and name.startswith(f"onnx2snn-{job}-") \
                    and name.endswith(f"-shard-{shard}") and not marker.exists():
                marker.write_text(name)
                os._exit(1)
    return KillOnce()


def _ids_once(engine, what: str, n: int):
    """The last run of `what` on `engine` reduced shards 0..n-1, each once (the engine checks the
    order and refuses an id twice; here: none missing)."""
    got = [ids for name, ids in engine.reduced if name == what][-1]
    assert sorted(got) == list(range(n)) and len(got) == n, got


def test_eval_json_is_identical_on_two_workers_and_each_shard_is_reduced_once(two, converted, digits_npz, tmp_path):
    snn, _, _ = converted
    kwargs = dict(ann_path=None, timesteps=[4, 8, 16], batch_size=50)
    one = api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "one.json", **kwargs)
    two.reduced.clear()
    got = api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "two.json", cluster=two, **kwargs)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert got.rows == one.rows and got.samples == one.samples
    _ids_once(two, "evaluation", -(-one.samples // 50))
    assert any("the workers read the data from" in n for n in two.notes_seen)


def test_eval_with_the_ann_and_per_layer_report_is_identical(two, converted, resnet_path, digits_npz, tmp_path):
    snn, _, _ = converted
    kwargs = dict(ann_path=resnet_path, timesteps=[8, 16], limit=200, delay="auto")
    one = api.evaluate_file(snn, str(digits_npz[1]), report_path=tmp_path / "one.report.json",
                            json_path=tmp_path / "one.json", **kwargs)
    got = api.evaluate_file(snn, str(digits_npz[1]), report_path=tmp_path / "two.report.json",
                            json_path=tmp_path / "two.json", cluster=two, **kwargs)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert one.layers == got.layers and one.layers            # per-layer rates and errors, merged in order
    assert one.rows == got.rows


def test_run_outputs_are_identical(two, converted, digits_npz, tmp_path):
    snn, _, _ = converted
    api.run_file(snn, tmp_path / "one.npz", str(digits_npz[1]), batch_size=64)
    api.run_file(snn, tmp_path / "two.npz", str(digits_npz[1]), batch_size=64, cluster=two)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()


def test_conversion_thresholds_corrections_and_delay_are_identical(two, converted, resnet_path, digits_npz,
                                                                  tmp_path):
    out, th_path, one = converted
    got = api.convert(resnet_path, data=str(digits_npz[0]), output=tmp_path / "two.snn.onnx",
                      calib=CalibConfig(iters=40), snn=SNNConfig(timesteps=16, delay="auto", correct="both"),
                      save_thresholds=tmp_path / "th.json", check_samples=64, cluster=two)
    assert (tmp_path / "th.json").read_bytes() == th_path.read_bytes()
    assert (tmp_path / "two.snn.onnx").read_bytes() == out.read_bytes()
    assert got.delay.to_json() == one.delay.to_json()
    assert got.check.to_json() == one.check.to_json()
    assert one.thresholds.bias and one.thresholds.potential     # the corrections ran and were compared


def test_a_network_without_relu_converts_identically_on_two_workers(two, silu_se_path, digits_npz, tmp_path):
    """The workers analyse the model again (Analysis.__reduce__): its spiking sites and compensated
    nodes are the driver's, so the conversion is byte for byte the single process's."""
    kw = dict(data=str(digits_npz[0]), calib=CalibConfig(iters=20), snn=SNNConfig(timesteps=8, delay="auto",
                                                                                   correct="both"), check_samples=32)
    one = api.convert(silu_se_path, output=tmp_path / "one.snn.onnx", save_thresholds=tmp_path / "one.json", **kw)
    got = api.convert(silu_se_path, output=tmp_path / "two.snn.onnx", save_thresholds=tmp_path / "two.json",
                      cluster=two, **kw)
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "two.snn.onnx").read_bytes() == (tmp_path / "one.snn.onnx").read_bytes()
    assert got.check.to_json() == one.check.to_json()
    assert any(name.endswith("/spikes-") for name in one.thresholds.values)


def test_calibration_rounds_depend_on_k_only(two, resnet_path, digits_npz):
    source = api.open_source(api.M.load(resnet_path), str(digits_npz[0]))
    config = CalibConfig(iters=24, round_batches=4, augment="flip", batch_size=64)
    here = api.calibrate(resnet_path, source, config)
    with cluster.connect(workers=1) as single:
        on_one = api.calibrate(resnet_path, source, config, engine=single)
    on_two = api.calibrate(resnet_path, source, config, engine=two)
    for name, theta in here.values.items():
        assert theta.tobytes() == on_one.values[name].tobytes() == on_two.values[name].tobytes(), name
    sequential = api.calibrate(resnet_path, source, CalibConfig(iters=24, augment="flip", batch_size=64))
    assert any(sequential.values[n].tobytes() != t.tobytes() for n, t in here.values.items())
    assert here.info["round_batches"] == 4 and "round_batches" not in sequential.info


def test_a_round_is_one_update_on_the_union_of_its_batches(resnet_path, digits_npz):
    """K batches averaged count-weighted = one batch holding all their samples (no cluster needed):
    exactly for the first layer; deeper layers see their inputs clipped at the thresholds each
    batch's own update gives the layers before (LTB's in-batch clip), so they differ a little."""
    source = api.open_source(api.M.load(resnet_path), str(digits_npz[0]))
    four = api.calibrate(resnet_path, source, CalibConfig(iters=4, round_batches=4, batch_size=25))
    one = api.calibrate(resnet_path, _Joined(source, 25, 4), CalibConfig(iters=1, batch_size=100))
    first = next(iter(four.values))
    np.testing.assert_allclose(four.values[first], one.values[first], rtol=1e-5, atol=1e-7)
    for name, theta in four.values.items():
        np.testing.assert_allclose(theta, one.values[name], rtol=5e-2, atol=1e-2)


class _Joined:
    """The first `k` calibration batches of `size` samples (calibration_plan, seed 0) as one source."""

    def __init__(self, source, size, k):
        from onnx2snn.data import batches as Bt
        self.source = source
        self.take = [i for chunk in Bt.calibration_plan(len(source), size, k, 0) for i in chunk]

    def __len__(self):
        return len(self.take)

    def batch(self, indices):
        return self.source.batch([self.take[i] for i in indices])

    def describe(self, index):
        return self.source.describe(self.take[index])


def test_a_worker_killed_during_eval_loses_nothing(two, converted, digits_npz, tmp_path):
    snn, _, _ = converted
    kwargs = dict(timesteps=[8, 16], batch_size=40)
    one = api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "one.json", **kwargs)
    marker = tmp_path / "killed"
    two.client.register_plugin(_kill_once(marker, "evaluation", 3), name="kill-eval")
    try:
        two.reduced.clear()
        api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "two.json", cluster=two, **kwargs)
    finally:
        two.client.unregister_worker_plugin("kill-eval")
    assert marker.exists(), "no worker was killed"
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    _ids_once(two, "evaluation", -(-one.samples // 40))
    two.client.wait_for_workers(2, timeout=60)


def test_a_worker_killed_during_calibration_loses_nothing(two, resnet_path, digits_npz, tmp_path):
    source = api.open_source(api.M.load(resnet_path), str(digits_npz[0]))
    config = CalibConfig(iters=16, round_batches=4, batch_size=64)
    here = api.calibrate(resnet_path, source, config)
    marker = tmp_path / "killed"
    two.client.register_plugin(_kill_once(marker, "calibration", 6), name="kill-calibration")
    try:
        two.reduced.clear()
        there = api.calibrate(resnet_path, source, config, engine=two)
    finally:
        two.client.unregister_worker_plugin("kill-calibration")
    assert marker.exists(), "no worker was killed"
    for name, theta in here.values.items():
        assert theta.tobytes() == there.values[name].tobytes(), name
    _ids_once(two, "calibration", 16)
    two.client.wait_for_workers(2, timeout=60)


def test_bad_data_on_a_worker_stops_the_run_naming_the_file(two, converted, digits_npz, tmp_path):
    snn, _, _ = converted
    with np.load(digits_npz[1]) as f:
        x, y = f["input"].copy(), f["y"]
    x[70, 0, 3, 3] = np.nan
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=x, y=y)
    with pytest.raises(UserError, match=r"bad\.npz.*70.*NaN or Inf"):
        api.evaluate_file(snn, str(bad), timesteps=[8], batch_size=32, cluster=two)


def test_a_loader_script_is_read_here_and_sent(two, converted, digits_npz, tmp_path):
    snn, _, _ = converted
    script = tmp_path / "load.py"
    script.write_text("import numpy as np\n"
                      f"def batches():\n    d = np.load({str(digits_npz[1])!r})\n"
                      "    for i in range(0, 200, 50):\n"
                      "        yield {'input': d['input'][i:i + 50], 'y': d['y'][i:i + 50]}\n")
    one = api.evaluate_file(snn, data_loader=f"{script}:batches", timesteps=[8, 16])
    got = api.evaluate_file(snn, data_loader=f"{script}:batches", timesteps=[8, 16], cluster=two)
    assert got.to_json() == one.to_json() and got.samples == 200
    assert any("the driver sends the batches" in n for n in two.notes_seen)


def test_cluster_flags_are_checked():
    with pytest.raises(UserError, match="workers 0"):
        cluster.check_flags(workers=0)
    with pytest.raises(UserError, match="one of them"):
        cluster.check_flags(workers=2, cluster="tcp://127.0.0.1:8786")
    with pytest.raises(UserError, match="ray:auto"):
        with cluster.connect(cluster="ray:elsewhere") as engine:
            engine.describe()


def test_an_unreachable_scheduler_is_one_line(converted, digits_npz):
    snn, _, _ = converted
    with pytest.raises(UserError, match="cluster tcp://127.0.0.1:9"):
        api.evaluate_file(snn, str(digits_npz[1]), timesteps=[8], cluster="tcp://127.0.0.1:9")


def test_without_a_cluster_no_cluster_package_is_imported(converted, digits_npz):
    snn, _, _ = converted
    code = ("import sys; from onnx2snn import api; "
            f"api.evaluate_file({str(snn)!r}, {str(digits_npz[1])!r}, timesteps=[8], limit=50); "
            "bad = [m for m in ('distributed', 'dask', 'ray') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


def test_the_command_line_runs_eval_on_workers(converted, digits_npz, tmp_path):
    snn, _, _ = converted
    out = subprocess.run([sys.executable, "-m", "onnx2snn.cli", "eval", str(snn), "--data", str(digits_npz[1]),
                          "-T", "8", "--limit", "100", "--workers", "2", "--json", str(tmp_path / "e.json")],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "e.json").read_text())["samples"] == 100
    assert "INFO" not in out.stderr, out.stderr         # the scheduler's log stays out of the way


def test_ray_gives_the_same_eval(converted, digits_npz, tmp_path):
    ray = pytest.importorskip("ray", reason="the onnx2snn[ray] extra (ray) is not installed")
    snn, _, _ = converted
    kwargs = dict(timesteps=[8, 16], batch_size=50, limit=300)
    one = api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "one.json", **kwargs)
    with np.load(digits_npz[1]) as f:
        x, y = f["input"].copy(), f["y"]
    x[70, 0, 3, 3] = np.inf
    np.savez(tmp_path / "bad.npz", input=x, y=y)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with cluster.connect(cluster="ray:auto") as engine:
            api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "two.json", cluster=engine, **kwargs)
            _ids_once(engine, "evaluation", 6)
            with pytest.raises(UserError, match=r"^\S*bad\.npz sample 70: input 'input' holds NaN or Inf"):
                api.evaluate_file(snn, str(tmp_path / "bad.npz"), timesteps=[8], batch_size=32, cluster=engine)
    finally:
        ray.shutdown()
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert one.samples == 300


def test_data_at_a_url_is_copied_once_per_machine_and_read_by_the_workers(two, converted, digits_npz, tmp_path,
                                                                        monkeypatch):
    pytest.importorskip("fsspec", reason="fsspec is not installed")
    snn, _, _ = converted
    monkeypatch.setenv("ONNX2SNN_DATA_CACHE", str(tmp_path / "cache"))
    url = Path(digits_npz[1]).resolve().as_uri()          # file:///...: any fsspec filesystem goes the same way
    kwargs = dict(timesteps=[8, 16], batch_size=50, limit=200)
    one = api.evaluate_file(snn, str(digits_npz[1]), json_path=tmp_path / "one.json", **kwargs)
    here = api.evaluate_file(snn, url, json_path=tmp_path / "url.json", **kwargs)
    copies = list((tmp_path / "cache").glob("*/test.npz"))
    assert len(copies) == 1 and copies[0].read_bytes() == Path(digits_npz[1]).read_bytes()
    two.notes_seen.clear()
    there = api.evaluate_file(snn, url, json_path=tmp_path / "two.json", cluster=two, **kwargs)
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "url.json").read_bytes() \
        == (tmp_path / "two.json").read_bytes()
    assert here.rows == there.rows == one.rows
    assert any(f"the workers read the data from {url}" in n for n in two.notes_seen), two.notes_seen
    with pytest.raises(UserError, match="no such file"):
        api.evaluate_file(snn, url + ".missing", **kwargs)


def test_ctrl_c_shuts_the_local_cluster_down(converted, digits_npz, tmp_path):
    psutil = pytest.importorskip("psutil", reason="psutil (a dependency of distributed) is not installed")
    import signal
    import time
    snn, _, _ = converted
    proc = subprocess.Popen([sys.executable, "-m", "onnx2snn.cli", "eval", str(snn), "--data", str(digits_npz[1]),
                             "-T", "64,128,256", "--batch-size", "8", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:                      # the cluster is up and the run under way
            if "the workers read the data" in line:
                break
        time.sleep(2)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, children
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "interrupted" in err, err
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes left running: {alive}"
