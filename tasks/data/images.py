"""Image dataset sources, read into a `Dataset` (tasks/data/dataset.py):

- ``digits``: scikit-learn's handwritten digits (1,797 8x8 images), upsampled to 32x32.
- ``cifar10:DIR``: CIFAR-10 in its standard Python format (``cifar-10-batches-py``),
  found through torchvision's description of it; never downloaded.
- ``imagefolder:DIR``: one sub-folder per class, any format Pillow reads.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from tasks.data.dataset import Dataset
from tasks.run.errors import InputError, require_utf8

IMAGE_SIZE = 32  # the reference CNN's input is 32x32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_SOURCE_PIXELS = 100_000_000  # larger images are refused before decoding


def resize_images(images: torch.Tensor, size: int | tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """Bilinear resize of (n, C, H, W) images to (n, C, size, size), or (n, C, *size) for a pair."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # (n, 1, 8, 8)
    images = resize_images(images).clamp_(0.0, 1.0).numpy()
    return Dataset(
        name="digits",
        inputs=images,
        labels=digits.target.astype(np.int64),
        source_ids=[f"digits:{i}" for i in range(len(digits.target))],
        class_names=[str(name) for name in digits.target_names],
        provenance={"source": "scikit-learn load_digits (UCI optical digits), 8x8 upsampled to 32x32"},
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts, lists, numpy arrays) and nothing that runs code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise InputError(f"CIFAR-10 batch {path} is corrupt or not in the standard format: {exc}") from None


def load_cifar10(directory: Path) -> Dataset:
    from torchvision.datasets import CIFAR10  # its file layout and official checksums

    base = directory / CIFAR10.base_folder
    if not base.is_dir():
        if (directory / CIFAR10.meta["filename"]).is_file():
            base = directory
        else:
            raise InputError(
                f"no CIFAR-10 batches in {directory}: expected {CIFAR10.base_folder}/ "
                "(the standard Python version, extracted)"
            )
    meta_path = base / CIFAR10.meta["filename"]
    if not meta_path.is_file():
        raise InputError(f"CIFAR-10 directory {base} lacks {CIFAR10.meta['filename']}")
    meta = _read_cifar_batch(meta_path)
    class_names = [str(name) for name in meta.get(CIFAR10.meta["key"], [])]
    if not class_names:
        raise InputError(f"{meta_path} has no {CIFAR10.meta['key']!r} list")

    images, labels, source_ids, checksums, inputs = [], [], [], {}, {}
    for filename, official_md5 in CIFAR10.train_list + CIFAR10.test_list:
        path = base / filename
        if not path.is_file():
            continue
        batch = _read_cifar_batch(path)
        data = np.asarray(batch.get("data"))
        batch_labels = np.asarray(batch.get("labels", batch.get("fine_labels", [])), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != len(data):
            raise InputError(f"CIFAR-10 batch {path} has data {data.shape} and {len(batch_labels)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
        source_ids += [f"cifar10:{filename}:{i}" for i in range(len(data))]
        raw = path.read_bytes()
        md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        checksums[filename] = "official" if md5 == official_md5 else "not the official file"
        inputs[filename] = hashlib.sha256(raw).hexdigest()
    if not images:
        raise InputError(f"no CIFAR-10 batches (data_batch_1..5, test_batch) in {base}")
    return Dataset(
        name=f"cifar10:{directory}",
        inputs=(np.concatenate(images).astype(np.float32) / 255.0),
        labels=np.concatenate(labels),
        source_ids=source_ids,
        class_names=class_names,
        provenance={"source": f"CIFAR-10 batches in {base}", "batches": checksums, "input_sha256": inputs},
    )


def read_image(path: Path, mode: str) -> np.ndarray:
    """One image file as (C, IMAGE_SIZE, IMAGE_SIZE) float32, without decoding huge images in full."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_SOURCE_PIXELS:
                    raise InputError(
                        f"image {path} is {image.width}x{image.height}, over {MAX_SOURCE_PIXELS:,} pixels"
                    )
                if image.mode in DEEP_MODES:  # 16-bit or float pixels: by their own range, not clipped to 8 bits
                    array = _deep_pixels(image, path)
                    array = np.repeat(array[..., None], 3, axis=2) if mode == "RGB" else array
                else:
                    image.draft(mode, (IMAGE_SIZE * 4, IMAGE_SIZE * 4))  # JPEG: decode at reduced scale
                    image = image.convert(mode)
                    image.thumbnail((IMAGE_SIZE * 4, IMAGE_SIZE * 4))
                    array = np.asarray(image, dtype=np.float32) / 255.0
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
    tensor = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1)).permute(2, 0, 1)
    return resize_images(tensor[None]).clamp_(0.0, 1.0)[0].numpy()


DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # Pillow's 16-bit, 32-bit integer and float grayscale


def _deep_pixels(image: Image.Image, path: Path) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grayscale image as (H, W) float32 in [0, 1], by its mode's real range:
    16-bit (and 32-bit integer images holding 16-bit values, as Pillow opens some PNGs) over 65535, float
    images as they are when in [0, 1]. Anything else has no range this pipeline can know: refused."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InputError(f"image {path} has float pixels outside [0, 1] (from {values.min():.4g} to "
                             f"{values.max():.4g}): scale it to [0, 1] or save it as 8 or 16 bits per pixel")
        return values.astype(np.float32)
    if values.min() < 0 or values.max() > 65535:
        raise InputError(f"image {path} is a 32-bit integer image with values beyond 16 bits (up to "
                         f"{values.max():.0f}): save it as 8 or 16 bits per pixel")
    return (values / 65535.0).astype(np.float32)


def load_imagefolder(directory: Path) -> Dataset:
    class_dirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        require_utf8(class_dir.name, f"image folder {directory}: class folder")
    if not class_dirs:
        raise InputError(f"image folder {directory} has no class sub-folders")
    files: list[tuple[Path, int]] = []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                require_utf8(path.relative_to(directory).as_posix(), f"image folder {directory}: file")
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise InputError(f"{path} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
                files.append((path, label))
    if not files:
        raise InputError(f"image folder {directory} holds no images")
    mode = "L" if all(_is_grayscale(path) for path, _ in files) else "RGB"
    images = np.stack([read_image(path, mode) for path, _ in files])
    return Dataset(
        name=f"imagefolder:{directory}",
        inputs=images,
        labels=np.array([label for _, label in files], dtype=np.int64),
        source_ids=[f"imagefolder:{path.relative_to(directory).as_posix()}" for path, _ in files],
        class_names=[p.name for p in class_dirs],
        provenance={"source": f"image folder {directory}", "mode": mode,
                    "input_sha256": {"all images (SHA-256 of each file's relative path and SHA-256, in order)":
                                     folder_digest(directory, [path for path, _ in files])}},
    )


def folder_digest(directory: Path, files: list[Path]) -> str:
    """One SHA-256 standing for many files: over each file's relative path and its own SHA-256, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(directory).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                      .encode())
    return digest.hexdigest()


def _is_grayscale(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return image.mode in {"1", "L", "LA", *DEEP_MODES}
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None
