"""The engines that run shards (work.py): Dask distributed (a local cluster of N processes, or an
existing scheduler) and Ray. Each ships a job to its workers once, keeps a few shards per worker in
flight, and yields the results in shard order, checking that every shard id comes back exactly
once. Workers that die have their shards run again elsewhere by the engine's own scheduler (Dask
restarts a local cluster's dead workers; Ray restarts its actors); a shard that raises (bad data)
stops the run with its error.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import uuid
from collections import deque

from ..errors import InternalError, UserError, param
from . import work

log = logging.getLogger(__name__)

RETRIES = 3          # times a shard may lose its worker before the run stops
PRELOAD = "onnx2snn.cluster.work"   # imported by a local cluster's workers as they start (onnxruntime with it)


class Engine:
    """Shards in, results out in shard order. `workers`: processes that run shards; `threads`:
    onnxruntime threads per session on a worker (0: onnxruntime's default, the machine's cores).
    `reduced`: (job name, the shard ids reduced in order, each once) per job run, for reports and tests."""
    name = "engine"

    def __init__(self, say=None):
        self.workers, self.threads = 1, 0
        self.reduced: list = []
        self.notes: list = []
        self._say = say or log.info
        self._sees: dict = {}

    def say(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            self._say(text)

    def describe(self) -> str:
        return f"{self.name} with {self.workers} worker(s)"

    # ---- to implement ---------------------------------------------------------------------------
    def _install(self, key: str, payload: bytes) -> None:
        raise NotImplementedError

    def _forget(self, key: str) -> None:
        raise NotImplementedError

    def _submit(self, key: str, shard: work.Shard):
        raise NotImplementedError

    def _result(self, handle):
        raise NotImplementedError

    def _cancel(self, handles) -> None:
        pass

    def _fingerprints(self, spec: work.DataSpec) -> list:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # ---- shared ---------------------------------------------------------------------------------
    def sees(self, spec: work.DataSpec) -> bool:
        """Whether every worker opens `spec` and finds the driver's samples there."""
        if spec not in self._sees:
            try:
                mine = spec.fingerprint()
                theirs = self._fingerprints(spec)
                self._sees[spec] = bool(theirs) and all(t == mine for t in theirs)
                if not self._sees[spec]:
                    odd = next((t for t in theirs if t != mine), None)
                    log.info("cluster: a worker's view of %s: %s (the driver's: %s)", spec.data, odd, mine)
            except Exception as err:      # any failure to ask: the driver sends the batches
                log.info("cluster: could not ask the workers about %s: %s", spec.data, err)
                self._sees[spec] = False
        return self._sees[spec]

    @contextlib.contextmanager
    def job(self, what: str, job, reading: work.Reading | None = None):
        """`job` shipped to the workers for the block (once, however many runs it makes); yields
        run(shards) -> (shard id, result, samples skipped) in shard order, as `map` does."""
        key = f"{what.replace(' ', '-')}-{uuid.uuid4().hex[:12]}"
        payload = pickle.dumps((job, reading), protocol=pickle.HIGHEST_PROTOCOL)
        self._install(key, payload)
        done = []
        self.reduced.append((what, done))
        try:
            seen = set()
            yield lambda shards: self._ordered(key, what, shards, done, seen)
        finally:
            self._forget(key)

    def map(self, what: str, job, shards, reading: work.Reading | None = None):
        """Run `job` over `shards` (an iterable of work.Shard with distinct ids); yield
        (shard id, result, samples skipped) in shard order."""
        with self.job(what, job, reading) as run:
            yield from run(shards)

    def _ordered(self, key: str, what: str, shards, done: list, seen: set):
        window = deque()
        source = iter(shards)
        depth = 2 * max(1, self.workers) + 1
        try:
            while True:
                while len(window) < depth:
                    shard = next(source, None)
                    if shard is None:
                        break
                    window.append((shard.id, self._submit(key, shard)))
                if not window:
                    return
                expected, handle = window.popleft()
                got_id, value, skipped = self._result(handle)
                if got_id != expected or got_id in seen:
                    raise InternalError(f"cluster: {what}: expected the result of shard {expected}, got shard "
                                        f"{got_id} (or it was reduced before)")
                done.append(got_id)
                seen.add(got_id)
                yield got_id, value, skipped
        except BaseException:
            self._cancel([h for _, h in window])
            raise


def _worker_threads(workers: int) -> int:
    """onnxruntime threads per session on a local cluster's workers: the machine's cores shared out
    (0, onnxruntime's own choice, for one worker)."""
    return 0 if workers == 1 else max(1, (os.cpu_count() or 1) // workers)


# ---- Dask ----------------------------------------------------------------------------------------
def _dask():
    try:
        import distributed
        return distributed
    except ImportError:
        raise UserError(f"{param('workers')}/{param('cluster')}: the Python package 'distributed' is not installed "
                        "(pip install 'onnx2snn[dask]')") from None


def _plugin_class():
    distributed = _dask()

    class JobPlugin(distributed.WorkerPlugin):
        """Carries a job to every worker, present and future (a restarted worker gets it too)."""

        def __init__(self, key, payload, threads):
            self.key, self.payload, self.threads = key, payload, threads

        def setup(self, worker):
            work.install(self.key, self.payload, self.threads)

        def teardown(self, worker):
            work.forget(self.key)

    return JobPlugin


class DaskEngine(Engine):
    name = "dask"

    def __init__(self, workers: int | None = None, address: str | None = None, client=None, say=None):
        super().__init__(say)
        distributed = _dask()
        self._cluster = self._own_client = None
        if client is not None:
            self.client = client
            self.threads = 0
        elif address is not None:
            try:
                self.client = self._own_client = distributed.Client(address, timeout="10s")
            except (OSError, TimeoutError) as err:
                raise UserError(f"{param('cluster')} {address}: cannot reach the Dask scheduler ({err})") from None
            self.threads = 0
        else:
            if not logging.getLogger().isEnabledFor(logging.INFO):     # -v shows the scheduler's log
                logging.getLogger("distributed").setLevel(logging.ERROR)
            # two threads per worker: one shard computes while the next reads its data (work.run_shard).
            # Dask's nanny would set MALLOC_TRIM_THRESHOLD_=65536 in its workers, which makes glibc give
            # memory back to the system after every large free: onnxruntime's outputs and the batches
            # are allocated again at every shard.
            import dask
            environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                       if k != "MALLOC_TRIM_THRESHOLD_"}
            # and its statistical profiler samples every worker thread's stack every 10 ms, which
            # slows the sessions' threads (bench ResNet-32 eval: shards 11% slower than in one process)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ,
                                  "distributed.worker.profile.enabled": False}):
                self._cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=2, processes=True,
                                                         dashboard_address=None, silence_logs=logging.ERROR,
                                                         preload=[PRELOAD])
            self.client = self._own_client = distributed.Client(self._cluster)
            self.threads = _worker_threads(workers)
        self.workers = max(1, len(self.client.scheduler_info()["workers"]))
        self._plugin = _plugin_class()
        where = "a local Dask cluster" if self._cluster is not None else f"the Dask scheduler {self.client.scheduler.address}"
        self.say(f"cluster: {where}, {self.workers} worker(s)")

    def _install(self, key, payload):
        self.client.register_plugin(self._plugin(key, payload, self.threads), name=f"onnx2snn-{key}")

    def _forget(self, key):
        try:
            self.client.unregister_worker_plugin(f"onnx2snn-{key}")
        except Exception as err:     # the cluster went away: nothing left to drop
            log.info("cluster: dropping job %s: %s", key, err)

    def _submit(self, key, shard):
        return self.client.submit(work.run_shard, key, shard, key=f"onnx2snn-{key}-shard-{shard.id}", pure=False)

    def _result(self, future):
        distributed = _dask()
        try:
            return future.result()
        except distributed.KilledWorker as err:
            raise UserError(f"cluster: a shard lost its worker {RETRIES + 1} times ({err}); "
                            f"the workers may be running out of memory (see {param('max_memory')})") from None

    def _cancel(self, futures):
        try:
            self.client.cancel(list(futures))
        except Exception:
            pass

    def _fingerprints(self, spec):
        return list(self.client.run(work.fingerprint, spec).values())

    def close(self):
        if self._own_client is not None:
            self._own_client.close()
        if self._cluster is not None:
            self._cluster.close()


# ---- Ray -----------------------------------------------------------------------------------------
class _RayWorker:
    """A Ray actor: one per CPU of the cluster; a job's payload is fetched from the object store
    on its first shard here (and again after a restart)."""

    def run(self, key, refs, threads, shard):
        if key not in work._PAYLOADS:
            import ray
            work.install(key, ray.get(refs[0]), threads)
        return work.run_shard(key, shard)

    def forget(self, key):
        work.forget(key)

    def fingerprint(self, spec):
        return work.fingerprint(spec)


class RayEngine(Engine):
    name = "ray"

    def __init__(self, address: str, say=None):
        super().__init__(say)
        try:
            import ray
        except ImportError:
            raise UserError(f"{param('cluster')} {address}: the Python package 'ray' is not installed "
                            "(pip install 'onnx2snn[ray]')") from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            target = None if address == "ray:auto" else address
            try:
                ray.init(address=target, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise UserError(f"{param('cluster')} {address}: cannot start or reach Ray ({err})") from None
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, cpus)
        self.threads = 1
        actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=RETRIES)(_RayWorker)
        self.actors = [actor.remote() for _ in range(self.workers)]
        self._refs, self._next = {}, 0
        self.say(f"cluster: Ray, {self.workers} actor(s)")

    def _install(self, key, payload):
        self._refs[key] = [self.ray.put(payload)]

    def _forget(self, key):
        self._refs.pop(key, None)
        try:
            self.ray.get([a.forget.remote(key) for a in self.actors], timeout=30)
        except Exception as err:        # an actor went away: its copy of the job went with it
            log.info("cluster: dropping job %s: %s", key, err)

    def _submit(self, key, shard):
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return actor.run.remote(key, self._refs[key], self.threads, shard)

    def _result(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):       # the data's error, as one line (not Ray's traceback)
                raise UserError(str(cause)) from None
            raise

    def _cancel(self, refs):
        for r in refs:
            try:
                self.ray.cancel(r)
            except Exception:
                pass

    def _fingerprints(self, spec):
        return self.ray.get([a.fingerprint.remote(spec) for a in self.actors])

    def close(self):
        for a in self.actors:
            self.ray.kill(a)
        if self._started:
            self.ray.shutdown()


def open_engine(workers=None, cluster=None, say=None) -> Engine:
    """The engine for --workers N (a local Dask cluster) or --cluster ADDRESS (tcp://... or any
    Dask scheduler address; ray://... or ray:auto), or `cluster` itself when it is an Engine or a
    dask.distributed Client."""
    if isinstance(cluster, Engine):
        return cluster
    if workers is not None:
        return DaskEngine(workers=workers, say=say)
    if isinstance(cluster, str):
        if cluster.startswith("ray://") or cluster == "ray:auto":
            return RayEngine(cluster, say=say)
        if cluster.startswith("ray:"):
            raise UserError(f"{param('cluster')} {cluster}: expected ray://HOST:PORT or ray:auto")
        return DaskEngine(address=cluster, say=say)
    if type(cluster).__name__ == "Client" and type(cluster).__module__.startswith("distributed"):
        return DaskEngine(client=cluster, say=say)
    raise UserError(f"{param('cluster')} {cluster!r}: expected an address (tcp://HOST:PORT, ray://HOST:PORT, "
                    f"ray:auto), "
                    "a dask.distributed Client or an onnx2snn cluster engine")
