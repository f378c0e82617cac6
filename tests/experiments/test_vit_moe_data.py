"""Image sources of the ViT-MoE experiment: idx files, CIFAR python folders, synthetic images."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from experiments.vit_moe.config import DataConfig
from experiments.vit_moe.data import (
    DataError,
    load_cifar,
    load_fashion_mnist,
    load_images,
    read_idx,
    write_idx,
)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzipped(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    path = str(tmp_path / name)
    write_idx(path, images)
    raw = open(path, "rb").read()
    header = gzip.decompress(raw)[:16] if name.endswith(".gz") else raw[:16]
    assert header == bytes([0, 0, 8, 3, 0, 0, 0, 7, 0, 0, 0, 5, 0, 0, 0, 3])  # LeCun's layout
    np.testing.assert_array_equal(read_idx(path), images)


def test_idx_reads_big_endian_wider_types(tmp_path):
    values = np.array([[-2, 70000], [3, -1]], dtype=np.int32)
    write_idx(str(tmp_path / "x"), values)
    assert open(tmp_path / "x", "rb").read()[:4] == bytes([0, 0, 0x0C, 2])
    np.testing.assert_array_equal(read_idx(str(tmp_path / "x")), values)


def test_corrupt_idx_files_name_themselves(tmp_path):
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad_magic' is not an idx file"):
        read_idx(str(bad_magic))
    write_idx(str(tmp_path / "short"), np.zeros((10, 4), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(DataError, match=r"corrupt idx file .*short.*40 bytes of data\), found 37"):
        read_idx(str(tmp_path / "short"))
    (tmp_path / "broken.gz").write_bytes(b"\x1f\x8b" + b"\x00" * 20)
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(str(tmp_path / "broken.gz"))


def write_fashion_folder(folder, n_train=6, n_test=4):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(str(folder / f"{prefix}-images-idx3-ubyte.gz"), pixels)
        write_idx(str(folder / f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, n, dtype=np.uint8))


def test_fashion_mnist_folder_loads_mixed_plain_and_gzipped_files(tmp_path):
    write_fashion_folder(tmp_path)
    images = load_fashion_mnist(str(tmp_path))
    assert images.train_images.shape == (6, 1, 28, 28) and images.train_images.dtype == torch.uint8
    assert images.test_labels.shape == (4,) and images.test_labels.dtype == torch.int64
    assert images.spec.n_classes == 10
    np.testing.assert_array_equal(images.train_images[:, 0].numpy(),
                                  read_idx(str(tmp_path / "train-images-idx3-ubyte.gz")))
    x = images.normalise(images.train_images)  # [N, C, H, W], standardised by the training split
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-2


def test_missing_fashion_mnist_names_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        load_fashion_mnist(str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "data.root=" in str(err.value)


def cifar_batch(n, label_key, classes, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, classes, n)], b"filenames": [b"x.png"] * n}


def dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # python-2 compatible: bytes and arrays go through _codecs.encode


def test_cifar10_folder_in_the_published_format(tmp_path):
    batches = [cifar_batch(3, b"labels", 10, seed) for seed in range(5)]
    for i, batch in enumerate(batches, start=1):
        dump(batch, tmp_path / f"data_batch_{i}")
    dump(cifar_batch(2, b"labels", 10, 9), tmp_path / "test_batch")
    dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, tmp_path / "batches.meta")
    images = load_cifar(str(tmp_path))
    assert images.train_images.shape == (15, 3, 32, 32) and images.test_images.shape == (2, 3, 32, 32)
    assert images.spec == type(images.spec)(3, 32, 32, 10)
    row = batches[0][b"data"][0]  # 1024 red, then 1024 green, then 1024 blue values, row-major
    np.testing.assert_array_equal(images.train_images[0, 0].numpy(), row[:1024].reshape(32, 32))
    np.testing.assert_array_equal(images.train_images[0, 2, 1].numpy(), row[2048 + 32:2048 + 64])
    assert images.train_labels[3:6].tolist() == batches[1][b"labels"]


def test_cifar100_folder_uses_fine_labels(tmp_path):
    dump(cifar_batch(4, b"fine_labels", 100, 0) | {b"coarse_labels": [0] * 4}, tmp_path / "train")
    dump(cifar_batch(2, b"fine_labels", 100, 1) | {b"coarse_labels": [0] * 2}, tmp_path / "test")
    dump({b"fine_label_names": [b"x"] * 100, b"coarse_label_names": [b"y"] * 20}, tmp_path / "meta")
    images = load_images(DataConfig(source="cifar", root=str(tmp_path)))
    assert images.n_classes == 100 and images.train_labels.shape == (4,)


def test_cifar_loader_refuses_code_and_names_missing_folders(tmp_path):
    with pytest.raises(DataError, match="data_batch_1..5 and test_batch"):
        load_cifar(str(tmp_path))
    for name in ("train", "test"):
        dump(cifar_batch(2, b"fine_labels", 100, 0), tmp_path / name)

    class Payload:  # unpickling this would call os.system
        def __reduce__(self):
            import os
            return os.system, ("echo unsafe",)

    dump(Payload(), tmp_path / "test")
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(str(tmp_path))


def test_synthetic_source_and_limits():
    images = load_images(DataConfig(source="synthetic", train_limit=40, test_limit=8), seed=3)
    assert images.train_images.shape == (40, 1, 16, 16) and images.test_labels.shape == (8,)
    again = load_images(DataConfig(source="synthetic", train_limit=40, test_limit=8), seed=3)
    assert torch.equal(images.train_images, again.train_images)
    assert images.limit(10, 0).train_labels.shape == (10,)
