"""The context a conversion's steps share, and the data source of the flags.

The steps (steps.py) read the request (what the caller asked for) and fill in what they make: the
analysis, the thresholds, the delay, the SNN. The context owns what every step needs: the files
checked against each other, the memory budget, the cluster engine, the data source, the progress
switch and the policy for non-finite samples; it times each step.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .. import data as D
from ..cluster.work import DataSpec
from ..config import CORRECT_SAMPLES, DELAY_SAMPLES, FREEZE_SAMPLES, CalibConfig, SNNConfig
from ..data import remote
from ..files import Files
from ..runtime.memory import MemoryBudget
from ..errors import param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What a conversion is asked to do (api.convert's arguments, documented there)."""
    model_path: object
    data: object = None
    data_loader: str | None = None
    output: object = None
    calib: CalibConfig = CalibConfig()
    snn: SNNConfig | None = None
    prep: D.Preprocess = D.Preprocess()
    thresholds: object = None
    save_thresholds: object = None
    check_samples: int = 0
    check_timesteps: tuple = ()
    progress: bool = False
    write: bool = True
    delay_samples: int = DELAY_SAMPLES
    report_path: object = None
    plot_dir: object = None
    correct_samples: int = CORRECT_SAMPLES
    max_memory: object = None
    freeze_norm: bool = False
    freeze_samples: int = FREEZE_SAMPLES
    annotations: object = None
    split: str | None = None
    nir: object = None

    @property
    def has_data(self) -> bool:
        return bool(self.data or self.data_loader)


@dataclass
class Context:
    """One conversion's shared state: the request, what the steps need and what they make."""
    request: Request
    files: Files
    memory: MemoryBudget
    engine: object = None                  # a cluster (cluster.connect) or None
    snn: SNNConfig | None = None           # the network asked for; its delay once chosen
    out_path: Path | None = None
    model: onnx.ModelProto | None = None
    source: object = None                  # the data source, or None without data
    analysis: object = None
    frozen: object = None                  # FrozenNorms with --freeze-norm
    thresholds: object = None
    tuned: object = None                   # TuneChoice with --tune auto
    calibration_seconds: float = 0.0
    delay_choice: object = None
    step_seconds: dict = field(default_factory=dict)   # the fitting steps' own seconds ("correction", "delay")
    provenance: object = None
    snn_model: onnx.ModelProto | None = None
    layers: list = field(default_factory=list)
    result: object = None                  # the Conversion, from the build step on
    timings: dict = field(default_factory=dict)

    @property
    def progress(self) -> bool:
        return self.request.progress

    @property
    def skip_nonfinite(self) -> bool:
        """Skip and count samples holding NaN or Inf (else stop, naming the file and sample)."""
        return self.request.calib.skip_nonfinite

    @contextmanager
    def timed(self, name: str):
        """Time step `name` (the seconds land in `timings`, in the order the steps ran)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
            log.info("step %s: %.2f s", name, self.timings[name])


def default_output(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name[:-5] + ".snn.onnx" if p.name.endswith(".onnx") else p.name + ".snn.onnx")


def open_source(model: onnx.ModelProto, data=None, data_loader=None, prep: D.Preprocess | None = None,
                files: Files | None = None, annotations=None, split: str | None = None):
    """The data source of --data / --data-loader for `model`'s inputs (paths recorded in `files`):
    also a Pascal VOC root (`split`: one of its ImageSets/Segmentation lists) or, with
    `annotations` (a COCO-format file), the image folder it names (data/datasets.py). `data` may
    be a URL fsspec opens (s3://..., file://...): copied once into a local cache (data/remote.py)."""
    url = str(data) if data and not data_loader and remote.is_url(str(data)) else None
    local = str(remote.localize(url)) if url else data
    if files is not None:
        if data_loader:
            files.input(data_loader.rpartition(":")[0] or data_loader, param("data_loader"))
        elif local:
            files.input(local, param("data"), folder_ok=True)
        if annotations:
            files.input(annotations, param("annotations"))
    inputs, prep = D.model_inputs(model), prep or D.Preprocess()
    source = D.open_data(local, data_loader, inputs, prep, annotations=str(annotations) if annotations else None,
                         split=split)
    if isinstance(source, D.Source) and data:      # how a cluster's workers open the same samples
        source.opened_with = DataSpec(url or str(Path(data).resolve()), tuple(inputs), prep,
                                      str(Path(annotations).resolve()) if annotations else None, split)
    return source


def first_batch(source, model) -> dict:
    """A first small batch of the data (the model's fixed batch size if it has one)."""
    inputs = D.model_inputs(model)
    if isinstance(source, D.Source):
        n = min(len(source), D.resolve_batch(None, inputs, 2))
        feeds, _ = source.batch(list(range(n)))
    else:
        feeds, _ = next(iter(source.batches()))
    return {k: v for k, v in feeds.items() if k in {i.name for i in inputs}}
