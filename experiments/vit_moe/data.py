"""Image classification data: Fashion-MNIST idx files, CIFAR-10/100 python folders, synthetic images.

Every source gives an :class:`ImageSet`: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` for a
train and a test split, kept in memory (Fashion-MNIST is 55 MB, CIFAR 180 MB). Batches are
normalised with the training split's per-channel mean and standard deviation.

Files are checked where they enter: a missing dataset names the fix, a corrupt file names itself.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from experiments.vit_moe.config import DataConfig
from trajectory.io import atomic_open

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {  # split -> (images, labels), each optionally gzipped
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type codes (third byte of the magic number) -> big-endian numpy dtypes
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """A missing or unreadable dataset; the message says what to do."""


@dataclass
class ImageSpec:
    """What the model needs to know about the images."""

    channels: int
    height: int
    width: int
    n_classes: int


@dataclass
class ImageSet:
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor  # uint8 [M, C, H, W]
    test_labels: torch.Tensor  # int64 [M]
    n_classes: int

    def __post_init__(self) -> None:
        pixels = self.train_images.float().div_(255)  # [N, C, H, W]
        self.mean = pixels.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        self.std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)

    @property
    def spec(self) -> ImageSpec:
        _, c, h, w = self.train_images.shape
        return ImageSpec(c, h, w, self.n_classes)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float32 [B, C, H, W], zero mean and unit variance per channel."""
        return (images.float() / 255 - self.mean) / self.std

    def limit(self, n_train: int, n_test: int) -> ImageSet:
        """The first ``n_train`` / ``n_test`` images of each split (0 keeps a split whole)."""
        n_train, n_test = n_train or len(self.train_labels), n_test or len(self.test_labels)
        return ImageSet(self.train_images[:n_train], self.train_labels[:n_train],
                        self.test_images[:n_test], self.test_labels[:n_test], self.n_classes)


# -- Fashion-MNIST (and MNIST): idx files ------------------------------------------------------------

def _read_maybe_gzipped(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"corrupt gzip file '{path}': {err}; download it again") from None
    return raw


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format, plain or gzipped) into an array of its shape.

    Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
    dimension; the data follow in C order.
    """
    raw = _read_maybe_gzipped(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"'{path}' is not an idx file (bad magic number {raw[:4].hex() or 'none'}); "
                        f"download it again")
    n_dims = raw[3]
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise DataError(f"corrupt idx file '{path}': truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=n_dims, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"corrupt idx file '{path}': header says {shape} ({expected} bytes of data), "
                        f"found {len(raw) - header} bytes; download it again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an idx file (gzipped when ``path`` ends in .gz); tests and tools use it."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(IDX_DTYPES[code]).tobytes()
    with atomic_open(path) as f:
        f.write(gzip.compress(payload) if path.endswith(".gz") else payload)


def _find_idx(root: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        if os.path.isfile(os.path.join(root, candidate)):
            return os.path.join(root, candidate)
    return None


def load_fashion_mnist(root: str = "") -> ImageSet:
    root = root or FASHION_MNIST_ROOT
    splits = {}
    for split, names in FASHION_MNIST_FILES.items():
        paths = [_find_idx(root, name) for name in names]
        if None in paths:
            missing = names[paths.index(None)]
            raise DataError(
                f"Fashion-MNIST not found: no {missing}[.gz] in '{root}'. Install it with "
                f"`sudo apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_ROOT}), or "
                f"pass data.root=<folder with the four idx files>")
        images, labels = (read_idx(p) for p in paths)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split} files in '{root}' disagree: images {images.shape}, "
                            f"labels {labels.shape}")
        splits[split] = (torch.from_numpy(images.astype(np.uint8))[:, None],  # [N, 1, 28, 28]
                         torch.from_numpy(labels.astype(np.int64)))
    return ImageSet(*splits["train"], *splits["test"], n_classes=10)


# -- CIFAR-10 / CIFAR-100: the python pickle folders ---------------------------------------------------

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays, and refuses every other global.

    The CIFAR files are pickles; this keeps a corrupted or foreign file from running code on load.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"cannot read CIFAR batch '{path}': {err}") from None
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch '{path}' holds a {type(batch).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_batch(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(path)
    labels = batch.get("labels", batch.get("fine_labels"))
    if "data" not in batch or labels is None:
        raise DataError(f"CIFAR batch '{path}' lacks 'data' and 'labels' / 'fine_labels' "
                        f"(keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"CIFAR batch '{path}': expected uint8 data [N, 3072] and N labels, got "
                        f"{data.dtype} {data.shape} and {len(labels)} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are R, G, B planes
    return images, torch.as_tensor(np.asarray(labels, dtype=np.int64))


def _cifar_class_count(root: str, labels: torch.Tensor) -> int:
    for meta, key in (("batches.meta", "label_names"), ("meta", "fine_label_names")):
        if os.path.isfile(os.path.join(root, meta)):
            names = _unpickle(os.path.join(root, meta)).get(key)
            if names:
                return len(names)
    return int(labels.max()) + 1


def load_cifar(root: str) -> ImageSet:
    """A CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``) folder."""
    cifar10 = [os.path.join(root, f"data_batch_{i}") for i in range(1, 6)]
    if all(os.path.isfile(p) for p in cifar10):
        train_files, test_file = cifar10, os.path.join(root, "test_batch")
    else:
        train_files, test_file = [os.path.join(root, "train")], os.path.join(root, "test")
    if not root or not all(os.path.isfile(p) for p in train_files + [test_file]):
        raise DataError(f"no CIFAR python folder at '{root}': pass data.root=<folder> holding "
                        f"data_batch_1..5 and test_batch (CIFAR-10) or train and test (CIFAR-100), "
                        f"as in cifar-10-python.tar.gz / cifar-100-python.tar.gz")
    parts = [_cifar_batch(p) for p in train_files]
    train_images, train_labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test_images, test_labels = _cifar_batch(test_file)
    n_classes = _cifar_class_count(root, train_labels)
    return ImageSet(train_images, train_labels, test_images, test_labels, n_classes)


# -- synthetic images for tests ----------------------------------------------------------------------

def make_synthetic(n_train: int = 256, n_test: int = 64, size: int = 16, channels: int = 1,
                   n_classes: int = 4, seed: int = 0) -> ImageSet:
    """Noise images whose class sets their brightness: learnable in a few dozen steps."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(n_classes, (n,), generator=gen)
        noise = torch.randint(0, 128, (n, channels, size, size), generator=gen)
        level = 127 * labels // max(1, n_classes - 1)  # [n] in 0..127
        return (noise + level.view(-1, 1, 1, 1)).to(torch.uint8), labels

    return ImageSet(*split(n_train), *split(n_test), n_classes=n_classes)


def load_images(cfg: DataConfig, seed: int = 0) -> ImageSet:
    """The configured source, cut to ``train_limit`` / ``test_limit`` images."""
    if cfg.source == "synthetic":
        return make_synthetic(cfg.train_limit or 256, cfg.test_limit or 64, seed=seed)
    images = load_fashion_mnist(cfg.root) if cfg.source == "fashion_mnist" else load_cifar(cfg.root)
    return images.limit(cfg.train_limit, cfg.test_limit)
