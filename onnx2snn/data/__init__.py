"""Calibration and evaluation data: where samples come from and how they are labelled.

    inputs.py    the model's inputs, batch sizes, preprocessing settings, checks that data fits
    sources.py   image folders, .npy/.npz files, loader scripts
    datasets.py  Pascal VOC segmentation roots and COCO image folders with their annotations
    remote.py    --data URL (s3://, gs://, https://, file://, ... through fsspec): a local copy per machine

`open_data` picks the source for the --data / --data-loader / --annotations / --split flags.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError, param
from .datasets import CocoImages, VOCSegmentation
from .inputs import InputInfo, Preprocess, model_inputs, parse_floats, resolve_batch, static_batch
from .sources import (
    ARRAY_EXTS,
    CACHE_ENV,
    IMAGE_EXTS,
    LABEL_KEYS,
    ArrayFiles,
    ImageFolder,
    ImageSource,
    LoaderScript,
    Source,
    Subset,
    split)

__all__ = ["ARRAY_EXTS", "CACHE_ENV", "IMAGE_EXTS", "LABEL_KEYS", "ArrayFiles", "CocoImages", "ImageFolder",
           "ImageSource", "InputInfo", "LoaderScript", "Preprocess", "Source", "Subset", "VOCSegmentation",
           "model_inputs", "open_data", "parse_floats", "resolve_batch", "split", "static_batch"]


def _is_voc(path: Path) -> bool:
    return (path / "JPEGImages").is_dir() and (path / "SegmentationClass").is_dir()


def open_data(data: str | None, loader: str | None, inputs, prep: Preprocess,
              annotations: str | None = None, split: str | None = None):
    """A Source (random access) or a LoaderScript, from the --data / --data-loader flags, with
    --annotations (a COCO JSON: detection images in the --data folder) and --split (the image-set
    list of a Pascal VOC folder)."""
    if annotations is not None:
        if loader:
            raise UserError(f"{param('annotations')} {annotations}: needs {param('data')} FOLDER (the images), not "
                            f"{param('data_loader')}")
        if not data or not Path(data).is_dir():
            raise UserError(f"{param('annotations')} {annotations}: {param('data')} must be the folder of the images "
                            f"it lists"
                            + (f" ({data} is not a folder)" if data else ""))
        if split is not None:
            raise UserError(f"{param('split')} {split}: only for a Pascal VOC folder, not with {param('annotations')}")
        return CocoImages(Path(data), Path(annotations), inputs, prep)
    if loader:
        if split is not None:
            raise UserError(f"{param('split')} {split}: only for a Pascal VOC folder, not with {param('data_loader')}")
        return LoaderScript(loader, inputs)
    if not data:
        raise UserError(f"{param('data')}: give a folder of images, .npy/.npz file(s), or {param('data_loader')} "
                        f"FILE.py:FN")
    path = Path(data)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir() and _is_voc(path):
        return VOCSegmentation(path, inputs, prep, split)
    if split is not None:
        raise UserError(f"{param('split')} {split}: only for a Pascal VOC folder (holding JPEGImages/ and "
                        f"SegmentationClass/), {path} is not one")
    if path.is_file():
        if path.suffix.lower() not in ARRAY_EXTS:
            raise UserError(f"{path}: unsupported data file (expected .npy or .npz, or a folder of images)")
        return ArrayFiles([path], inputs, str(path))
    arrays = sorted(f for f in path.iterdir() if f.suffix.lower() in ARRAY_EXTS and f.is_file())
    if arrays:
        return ArrayFiles(arrays, inputs, str(path))
    nested = sorted(p.name for p in path.iterdir() if p.is_dir() and _is_voc(p))
    if nested:
        raise UserError(f"{path}: holds the Pascal VOC folder {nested[0]}; pass {param('data')} {path / nested[0]}")
    return ImageFolder(path, inputs, prep)
