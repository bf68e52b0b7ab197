"""What a worker does with a shard.

A job (evaluate.ScoreJob, correction.Corrector, calibration.MeasureJob, api.RunJob) is shipped to
every worker once, pickled with its models; `runner(key)` builds its sessions once per worker
process (`job.build(threads)`, the same call the single process makes) and keeps them until the
job is dropped. A shard (`Shard`) names its batch by sample indices, read on the worker from the
data it opens itself (`DataSpec`: the same flags the driver opened it with), or carries the batch
when the workers cannot see the data. It returns its id, the job's result for the batch, and the
samples it skipped for holding NaN/Inf.
"""
from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass, field

from ..data import batches as Bt
from .. import runtime  # noqa: F401 (imported as a worker starts: its first shard does not wait for it)
from ..config import augment_kind

_PAYLOADS: dict = {}     # job key -> (pickled job, onnxruntime threads), as shipped
_RUNNERS: dict = {}      # job key -> the job's runner, built on first use in this process
_SOURCES: dict = {}      # DataSpec -> the data source opened in this process
_COMPUTE = threading.Lock()   # one shard computes at a time in a process; others read their data meanwhile


@dataclass(frozen=True)
class DataSpec:
    """How the driver opened its data (api.open_source), to open the same samples on a worker:
    `subset` (sample indices) when the driver used part of it (data.split)."""
    data: str
    inputs: tuple
    prep: object
    annotations: str | None = None
    split: str | None = None
    subset: tuple | None = None

    def local(self) -> str:
        """The path to open here: `data` itself, or this machine's copy of a URL (data/remote.py)."""
        from ..data import remote
        return str(remote.localize(self.data)) if remote.is_url(self.data) else self.data

    def open(self):
        if self not in _SOURCES:
            from .. import data as D
            source = D.open_data(self.local(), None, list(self.inputs), self.prep, self.annotations, self.split)
            _SOURCES[self] = D.Subset(source, list(self.subset)) if self.subset is not None else source
        return _SOURCES[self]

    def fingerprint(self) -> tuple:
        """What must match between the driver's source and a worker's: kind, size, first and last sample."""
        source, local = self.open(), self.local()
        n = len(source)
        name = lambda i: source.describe(i).replace(local, self.data)  # noqa: E731 (a URL's copy: where it came from)
        return type(source).__name__, n, name(0) if n else None, name(n - 1) if n else None


def data_spec(source) -> DataSpec | None:
    """The DataSpec of a random-access source opened by api.open_source (None: a loader script, or
    a source built some other way; the driver then sends the batches)."""
    from .. import data as D
    if isinstance(source, D.Subset):
        base = data_spec(source.source)
        if base is None:
            return None
        indices = tuple(int(i) for i in source.indices)
        if base.subset is not None:
            indices = tuple(base.subset[i] for i in indices)
        return DataSpec(base.data, base.inputs, base.prep, base.annotations, base.split, indices)
    return getattr(source, "opened_with", None)


@dataclass
class Shard:
    """One unit of work: its id (the driver reduces in id order), its batch as sample indices
    (`chunk`, read on the worker) or as the batch itself (`feeds`, `labels`), and per-shard inputs
    of the job (`extra`, e.g. calibration's thresholds of the round)."""
    id: int
    chunk: list | None = None
    feeds: dict | None = None
    labels: object = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reading:
    """How a worker reads a shard's `chunk`: as an evaluation batch (`kind` "eval": batches.read_eval)
    or a calibration batch ("calibration": batches.read_calibration; the shard id is the batch's
    index in the calibration plan, which seeds its augmentation)."""
    spec: DataSpec
    kind: str = "eval"
    exact: bool = False
    skip_nonfinite: bool = False
    augment: object = None
    layout: str = "NCHW"
    seed: int = 0
    labels: bool = True          # eval: pass the labels on (False: steps that never score them)


def read(shard: Shard, reading: Reading | None):
    """(feeds, labels, samples skipped) of a shard; feeds None when every sample was skipped."""
    if shard.chunk is None:
        return shard.feeds, shard.labels, 0
    source = reading.spec.open()
    check = Bt.NonFinite(reading.skip_nonfinite)
    if reading.kind == "calibration":
        feeds = Bt.read_calibration(source, shard.chunk, shard.id,
                                    augment_kind(reading.augment), reading.layout, reading.seed, check,
                                    getattr(source, "prep", None))
        return feeds, None, check.skipped
    got = Bt.read_eval(source, shard.chunk, reading.exact, check)
    if got is None:
        return None, None, check.skipped
    return got[0], got[1] if reading.labels else None, check.skipped


def install(key: str, payload: bytes, threads: int) -> None:
    _PAYLOADS[key] = (payload, threads)


def forget(key: str) -> None:
    _PAYLOADS.pop(key, None)
    _RUNNERS.pop(key, None)


def runner(key: str):
    if key not in _RUNNERS:
        payload, threads = _PAYLOADS[key]
        job, reading = pickle.loads(payload)
        _RUNNERS[key] = (job.build(threads), reading)
    return _RUNNERS[key]


def run_shard(key: str, shard: Shard):
    """(shard id, the job's result for its batch or None when all its samples were skipped, samples
    skipped). The batch is read outside the compute lock: a worker with two threads reads the next
    shard while it runs this one, as the single process's prefetch does (batches.prefetch)."""
    with _COMPUTE:
        run, reading = runner(key)
    feeds, labels, skipped = read(shard, reading)
    if feeds is None:
        return shard.id, None, skipped
    with _COMPUTE:
        return shard.id, run(feeds, labels, **shard.extra), skipped


def fingerprint(spec: DataSpec):
    """A worker's view of the data (DataSpec.fingerprint), or the reason it has none."""
    try:
        return spec.fingerprint()
    except Exception as err:      # reported to the driver, which then sends the batches itself
        return f"{type(err).__name__}: {err}"
