"""Data sources for segmentation and detection: a Pascal VOC folder (images and class masks) and
a COCO annotation JSON with its image folder. Both decode, resize and normalise images like an
image folder (sources.ImageSource) and keep the decoded samples for the next epochs.

Labels (see sources.Source): VOC gives int64 masks [N, H, W] at the model input's size (255 =
ignore); COCO gives, per image, {"image_id", "width", "height", "file_name"} with the original
size, for the evaluation to map boxes back and match the annotations.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .inputs import Preprocess
from .sources import IMAGE_EXTS, ImageSource
from ..errors import UserError, param

IGNORE = 255


class VOCSegmentation(ImageSource):
    """root/JPEGImages/<id>.jpg with root/SegmentationClass/<id>.png (palette PNGs of class ids,
    255 = ignore); the ids of root/ImageSets/Segmentation/<split>.txt, or every id having both."""
    task_hint = "segment"
    labels_known = True

    def __init__(self, root: Path, inputs, prep: Preprocess, split: str | None = None):
        root = Path(root)
        self._setup_images(root, inputs, prep, "a Pascal VOC folder")
        self.root = root
        images = {f.stem: f for f in sorted((root / "JPEGImages").iterdir(), reverse=True)
                  if f.suffix.lower() in IMAGE_EXTS and f.is_file()}   # reversed: .jpg wins over .png
        masks = {f.stem: f for f in (root / "SegmentationClass").iterdir()
                 if f.suffix.lower() == ".png" and f.is_file()}
        if split is None:
            ids = sorted(set(images) & set(masks))
            if not ids:
                raise UserError(f"{root}: no image in JPEGImages/ has a mask in SegmentationClass/ (<id>.png)")
        else:
            listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            try:
                lines = listing.read_text().splitlines()
            except FileNotFoundError:
                raise UserError(f"{param('split')} {split}: {listing}: no such file") from None
            except (OSError, UnicodeDecodeError) as err:
                raise UserError(f"{param('split')} {split}: {listing}: cannot read ({err})") from None
            ids = [line.split()[0] for line in lines if line.strip()]
            if not ids:
                raise UserError(f"{param('split')} {split}: {listing} lists no images")
            for i in ids:
                if i not in images:
                    raise UserError(f"{listing}: lists {i}, but {root / 'JPEGImages' / (i + '.jpg')} does not exist")
                if i not in masks:
                    raise UserError(f"{listing}: lists {i}, but {root / 'SegmentationClass' / (i + '.png')} "
                                    "does not exist")
        self.ids = ids
        self.files = [images[i] for i in ids]
        self.masks = [masks[i] for i in ids]

    def __len__(self):
        return len(self.ids)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def _mask(self, path: Path, image_size) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(path) as img:
                if img.mode not in ("P", "L"):
                    raise UserError(f"{path}: a mask must be a palette (P) or greyscale (L) PNG of class ids, "
                                    f"this one is mode {img.mode}")
                if img.size != image_size:
                    raise UserError(f"{path}: the mask is {img.size[0]}x{img.size[1]} pixels, its image "
                                    f"is {image_size[0]}x{image_size[1]}")
                img.load()
                return np.asarray(self._fit(img, Image.NEAREST, path), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"{path}: cannot read mask ({err})") from None

    def _sample(self, index: int):
        def make():
            image, size = self._read(self.files[index])
            return image, self._mask(self.masks[index], size)
        return self._cached(index, make)

    def batch(self, indices):
        samples = [self._sample(int(i)) for i in indices]
        x = np.stack([s[0] for s in samples]).astype(self.info.dtype)
        masks = np.stack([s[1] for s in samples]).astype(np.int64)
        return {self.info.name: x}, masks


class CocoImages(ImageSource):
    """The images of a COCO annotation JSON ("images": id, file_name, width, height), read from
    `folder` in the JSON's order and resized to the model input as a whole."""
    task_hint = "detect"
    labels_known = True

    def __init__(self, folder: Path, annotations: Path, inputs, prep: Preprocess):
        folder, annotations = Path(folder), Path(annotations)
        if prep.resize is not None or prep.crop is not None:
            raise UserError(f"{param('resize')}/{param('crop')}: detection images ({param('annotations')}) are resized "
                            f"to the model input "
                            "as a whole, so that boxes map back; leave them out")
        self._setup_images(folder, inputs, prep, "a COCO image folder")
        self.folder, self.annotations = folder, annotations
        where = f"{param('annotations')} {annotations}"
        try:
            with open(annotations, encoding="utf-8") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise UserError(f"{where}: no such file") from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise UserError(f"{where}: not a readable JSON file ({reason})") from None
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list):
            raise UserError(f"{where}: expected a COCO JSON object with an \"images\" list")
        if not images:
            raise UserError(f"{where}: the \"images\" list is empty")
        self.meta, self.files = [], []
        for k, entry in enumerate(images):
            if not isinstance(entry, dict):
                raise UserError(f"{where}: images[{k}] is not an object")
            for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
                value = entry.get(key)
                if key not in entry:
                    raise UserError(f"{where}: images[{k}] lacks \"{key}\"")
                if not isinstance(value, kind) or isinstance(value, bool) \
                        or (key in ("width", "height") and value < 1) or (kind is str and not value):
                    raise UserError(f"{where}: images[{k}] \"{key}\" is {value!r}, expected "
                                    f"{'a file name' if kind is str else 'an integer'}")
            path = folder / entry["file_name"]
            if not path.is_file():
                raise UserError(f"{path}: no such image (listed in {annotations} as images[{k}])")
            self.files.append(path)
            self.meta.append({"image_id": entry["id"], "width": entry["width"], "height": entry["height"],
                              "file_name": entry["file_name"]})

    def __len__(self):
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def _sample(self, index: int) -> np.ndarray:
        def make():
            image, (w, h) = self._read(self.files[index])
            meta = self.meta[index]
            if (w, h) != (meta["width"], meta["height"]):
                raise UserError(f"{self.files[index]}: the image is {w}x{h} pixels, {self.annotations} says "
                                f"{meta['width']}x{meta['height']} (image_id {meta['image_id']})")
            return image
        return self._cached(index, make)

    def batch(self, indices):
        x = np.stack([self._sample(int(i)) for i in indices]).astype(self.info.dtype)
        return {self.info.name: x}, [dict(self.meta[int(i)]) for i in indices]
