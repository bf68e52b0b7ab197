"""Running evaluation, `run` and conversion on a cluster (docs/guide/scaling-out.md).

    engines.py   the engines: a local Dask cluster (--workers N), an existing Dask scheduler
                 (--cluster tcp://...), Ray (--cluster ray://... or ray:auto); shards in, results
                 out in shard order, each shard id reduced once
    work.py      what a worker does with a shard: the job shipped once per worker (models and
                 settings), its sessions built once per process, the data read where it lives

A shard is pure: sample indices (or, when the workers cannot see the data, the batch itself) and
its id; it returns counts and float64 sums. The driver reduces them in shard order with the same
functions the single process uses batch by batch, so results do not depend on the number of
workers, their speed or retries. Without --workers/--cluster nothing here is imported but this
module, and no cluster package at all.
"""
from __future__ import annotations

import contextlib
import threading

from ..errors import UserError, param


def check_flags(workers=None, cluster=None) -> None:
    """--workers N (N >= 1) and --cluster ADDRESS, not both."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"{param('workers')} {workers}: must be an integer >= 1")
    if workers is not None and cluster is not None:
        raise UserError(f"{param('workers')} starts a local cluster, {param('cluster')} uses an existing one: give one "
                        f"of them")


class _Lazy:
    """The engine of connect. A local cluster (--workers) starts in the background at once, so its
    processes come up while the driver reads the model and the data; an existing cluster is joined
    on first use. Errors starting it surface on first use."""

    def __init__(self, workers, cluster, say):
        self._args, self._engine, self._error, self._thread = (workers, cluster, say), None, None, None
        if workers is not None:
            self._thread = threading.Thread(target=self._open, name="onnx2snn-cluster-start", daemon=True)
            self._thread.start()

    def _open(self) -> None:
        from . import engines
        try:
            self._engine = engines.open_engine(*self._args)
        except BaseException as err:       # raised on first use, in the caller's thread
            self._error = err

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        elif self._engine is None and self._error is None:
            self._open()
        if self._error is not None:
            raise self._error
        return getattr(self._engine, name)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._engine is not None and self._engine is not self._args[1]:
            self._engine.close()


@contextlib.contextmanager
def connect(workers=None, cluster=None, say=None):
    """The engine for --workers / --cluster (`cluster`: an address, a dask.distributed Client, or an
    engine, which is used as it is), or None for neither; it starts on first use. What it started
    (a local cluster, a Ray instance, a client) is shut down on leaving, Ctrl-C included. `say`:
    where its notes go (which cluster, where the data is read), default the log."""
    check_flags(workers, cluster)
    if workers is None and cluster is None:
        yield None
        return
    if isinstance(cluster, _Lazy) or hasattr(cluster, "map") and hasattr(cluster, "job"):
        yield cluster               # an engine of the caller's: used as it is, closed by the caller
        return
    engine = _Lazy(workers, cluster, say)
    try:
        yield engine
    finally:
        engine.close()


def batch_shards(engine, batches, what: str, why: str | None = None):
    """(shards, work.Reading or None) for a run of `what` over `batches` (batches.EvalBatches, or
    any iterable of (feeds, labels)): sample indices the workers read when they all see the data
    (engine.sees), else the batches themselves, read here and sent (`why`: the reason to say). Says which."""
    from ..data import batches as Bt
    from .work import Reading, Shard, data_spec
    spec = data_spec(batches.source) if isinstance(batches, Bt.EvalBatches) else None
    if spec is not None and engine.sees(spec):
        engine.say(f"cluster: {what}: the workers read the data from {spec.data}")
        reading = Reading(spec, "eval", batches.exact, batches.nonfinite.skip, labels=batches.labels)
        return (Shard(i, chunk=c) for i, c in enumerate(batches.plan)), reading
    if why is None:
        why = f"the workers do not see {spec.data}" if spec is not None else \
            "the batches are made here: a --data-loader, or samples already read"
    engine.say(f"cluster: {what}: the driver sends the batches ({why})")
    return (Shard(i, feeds=f, labels=y) for i, (f, y) in enumerate(batches)), None


def calibration_shards(engine, source, batch_size: int, iters: int, seed: int, augment, layout: str, nonfinite):
    """(shards, work.Reading or None) of calibration's batches (batches.calibration_plan: the shard
    id is the batch's index, which seeds its augmentation), read by the workers when they see the
    data, else read (and augmented) here and sent."""
    from ..data import batches as Bt
    from .work import Reading, Shard, data_spec
    spec = data_spec(source)
    if spec is not None and engine.sees(spec):
        engine.say(f"cluster: calibration: the workers read the data from {spec.data}")
        reading = Reading(spec, "calibration", skip_nonfinite=nonfinite.skip, augment=augment, layout=layout,
                          seed=seed)
        plan = Bt.calibration_plan(len(source), batch_size, iters, seed)
        return [Shard(i, chunk=take) for i, take in enumerate(plan)], reading
    why = f"the workers do not see {spec.data}" if spec is not None else \
        "it does not come from a path the workers can open"
    engine.say(f"cluster: calibration: the driver sends the batches ({why})")
    batches = Bt.calibration_batches(source, batch_size, iters, seed, augment, layout, nonfinite)
    return (Shard(i, feeds=f) for i, f in enumerate(batches)), None
