"""What a model takes and how data is made to fit it: its inputs (name, shape, dtype), batch sizes
(a model's fixed batch wins), image preprocessing settings (`Preprocess`: mean/std, size, layout,
--resize/--crop), and the checks that a sample fits an input.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError, param


@dataclass(frozen=True)
class InputInfo:
    name: str
    shape: tuple   # ints, or None for symbolic dims
    dtype: np.dtype


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing: RGB scaled to [0, 1], then (x - mean) / std, resized and laid out.

    Without `resize`/`crop` images are resized to `size` as a whole. With them (ImageNet style,
    e.g. resize 256, crop 224,224), the shorter side is resized to `resize` pixels keeping the
    aspect ratio, then the centre `crop` (H, W) is taken; it must equal the model input's size.
    `resize` alone crops the centre at the model input's size."""
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    size: tuple | None = None      # (H, W); None = from the model's input shape
    layout: str | None = None      # "NCHW" or "NHWC"; None = from the model's input shape
    resize: int | None = None      # the shorter side, in pixels, before the centre crop
    crop: tuple | None = None      # (H, W) of the centre crop

    def __post_init__(self):
        for flag, values in ((param("mean"), self.mean), (param("std"), self.std)):
            if not len(values) or not all(np.isfinite(v) for v in values):
                raise UserError(f"{flag} {','.join(map(str, values))}: expected finite numbers")
        if any(v <= 0 for v in self.std):
            raise UserError(f"{param('std')} {','.join(map(str, self.std))}: values must be > 0")
        if self.size is not None and (len(self.size) != 2 or any(int(v) < 1 for v in self.size)):
            raise UserError(f"{param('size')} {self.size}: expected two positive integers H,W")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise UserError(f"{param('layout')} {self.layout}: expected NCHW or NHWC")
        if self.resize is not None:
            if not _is_int(self.resize) or self.resize < 1:
                raise UserError(f"{param('resize')} {self.resize}: expected a positive integer (the shorter side in "
                                f"pixels)")
            object.__setattr__(self, "resize", int(self.resize))
        if self.crop is not None:
            crop = (self.crop, self.crop) if _is_int(self.crop) else self.crop
            try:
                ok = len(crop) == 2 and all(_is_int(v) and v >= 1 for v in crop)
            except TypeError:
                ok = False
            if not ok:
                raise UserError(f"{param('crop')} {self.crop}: expected two positive integers H,W")
            object.__setattr__(self, "crop", (int(crop[0]), int(crop[1])))
            if self.resize is not None and max(self.crop) > self.resize:
                raise UserError(f"{param('crop')} {self.crop[0]},{self.crop[1]}: larger than {param('resize')} "
                                f"{self.resize} "
                                "(the shorter side after resizing)")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Preprocess":
        d = json.loads(text)
        return Preprocess(tuple(d["mean"]), tuple(d["std"]),
                          tuple(d["size"]) if d.get("size") else None, d.get("layout"),
                          d.get("resize"), tuple(d["crop"]) if d.get("crop") else None)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def model_inputs(model) -> list:
    import onnx
    init = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in init:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim) \
            if tt.HasField("shape") else None
        out.append(InputInfo(vi.name, shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return out


def static_batch(inputs) -> int | None:
    """The fixed batch size of the model's inputs (exports with a static first dimension), if any."""
    sizes = {i.shape[0] for i in inputs if i.shape}
    if len(sizes) == 1:
        size = sizes.pop()
        if isinstance(size, int) and size > 0:
            return size
    return None


def resolve_batch(requested: int | None, inputs, default: int, flag: str = param("batch_size")) -> int:
    """`requested`, or the default; a model with a fixed batch size B accepts only B."""
    fixed = static_batch(inputs)
    if fixed is None:
        return requested or default
    if requested and requested != fixed:
        names = ", ".join(f"'{i.name}'" for i in inputs)
        raise UserError(f"{flag} {requested}: the model's input {names} has a fixed batch size of {fixed}; "
                        f"use {flag} {fixed} or re-export the model with a dynamic batch")
    return fixed


def parse_floats(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated numbers") from None


# --------------------------------------------------------------------------------------- sources


def check_dtype(where: str, info: InputInfo, dtype) -> None:
    """Float data fed to an integer input would be truncated without a word: refuse it."""
    if np.dtype(dtype).kind == "f" and info.dtype.kind in "iub":
        raise UserError(f"{where}: input '{info.name}' takes {info.dtype} but the data is {np.dtype(dtype)}; "
                        "refusing to truncate (give integer arrays)")


def check_fits(where: str, info: InputInfo, sample_shape: tuple):
    if info.shape is None:
        return
    want = info.shape[1:]
    if len(want) != len(sample_shape) or any(w is not None and w != s for w, s in zip(want, sample_shape)):
        dims = ",".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(info.shape))
        raise UserError(f"{where}: samples of shape {list(sample_shape)} do not fit input "
                        f"'{info.name}' [{dims}]")
