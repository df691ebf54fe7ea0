import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeprune.errors import UsageError
from edgeprune.training.data import (
    FASHION_CLASSES,
    FASHION_DEFAULT,
    DataConfig,
    load_data,
)


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(input_size=16, in_channels=3))


def test_digits_splits_shapes_and_labels(digits):
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797 and sizes[0] == pytest.approx(0.6 * 1797, abs=2)
    assert digits.num_classes == 10 and digits.classes == [str(i) for i in range(10)]
    for split in (digits.train, digits.val, digits.test):
        x, y = split.tensors
        assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert torch.equal(torch.unique(y), torch.arange(10))  # stratified: every class everywhere
        assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1
    # Each split keeps roughly the class balance of the whole (stratified by seed).
    counts = torch.bincount(digits.val.tensors[1], minlength=10)
    assert counts.min() >= 33 and counts.max() <= 38


def test_digits_are_deterministic_by_seed_and_limited_by_sample_counts(digits):
    again = load_data(DataConfig(input_size=16))
    assert torch.equal(again.train.tensors[0], digits.train.tensors[0])
    other = load_data(DataConfig(input_size=16, seed=1))
    assert not torch.equal(other.train.tensors[1], digits.train.tensors[1])
    small = load_data(DataConfig(input_size=8, in_channels=1, train_samples=100, val_samples=50,
                                 test_samples=20))
    assert [len(small.train), len(small.val), len(small.test)] == [100, 50, 20]
    assert small.train.tensors[0].shape == (100, 1, 8, 8)


def test_grayscale_is_repeated_to_three_identical_channels(digits):
    x = digits.train.tensors[0]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_loader_batches_and_deterministic_shuffle(digits):
    batches = list(digits.loader("val", batch_size=100))
    assert [len(b[1]) for b in batches] == [100, 100, 100, 59]
    assert torch.equal(batches[0][1], digits.val.tensors[1][:100])  # unshuffled keeps order
    a = next(iter(digits.loader("train", 64, shuffle=True)))[1]
    b = next(iter(digits.loader("train", 64, shuffle=True)))[1]
    c = next(iter(digits.loader("train", 64, shuffle=True, seed=5)))[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(list(digits.loader("train", 100, shuffle=True, drop_last=True))) == len(digits.train) // 100
    with pytest.raises(UsageError, match="unknown split"):
        digits.loader("validation")


@pytest.mark.skipif(not Path(FASHION_DEFAULT).is_dir(), reason=f"Debian dataset-fashion-mnist not at {FASHION_DEFAULT}")
def test_fashion_mnist_subset_from_the_debian_package():
    data = load_data(DataConfig("fashion-mnist", input_size=20, train_samples=300,
                                val_samples=100, test_samples=50))
    assert [len(data.train), len(data.val), len(data.test)] == [300, 100, 50]
    assert data.num_classes == 10 and data.classes == FASHION_CLASSES
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert data.train.tensors[0].shape == (300, 3, 20, 20)
    assert len(torch.unique(data.train.tensors[1])) == 10


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 50, size=(n, 28, 28)) + labels[:, None, None] * 20
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_fashion_mnist_idx_parsing_and_val_carved_from_train(fake_fashion):
    data = load_data(DataConfig("fashion-mnist", root=str(fake_fashion), input_size=28,
                                in_channels=1, val_samples=10))
    assert [len(data.train), len(data.val), len(data.test)] == [30, 10, 12]
    x, y = data.test.tensors
    assert x.shape == (12, 1, 28, 28) and torch.equal(y, torch.arange(12) % 10)
    # Pixel brightness encodes the label in the fake files, so decoding kept images and labels aligned.
    means = x.mean(dim=(1, 2, 3))
    assert torch.all(means[y == 9] > means[y == 0])
    whole = torch.cat([data.train.tensors[1], data.val.tensors[1]])
    assert torch.equal(torch.bincount(whole), torch.full((10,), 4))


def test_fashion_mnist_root_from_environment(fake_fashion, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_FASHION_MNIST", str(fake_fashion))
    assert len(load_data(DataConfig("fashion_mnist", val_samples=5)).test) == 12


def test_missing_fashion_mnist_gives_the_install_hint(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="apt-get install -y dataset-fashion-mnist") as info:
        load_data(DataConfig("fashion-mnist", root=str(tmp_path / "nope")))
    assert f"Fashion-MNIST not found at {tmp_path / 'nope'}" in str(info.value)
    assert "--data-root" in str(info.value)
    monkeypatch.setenv("EDGEPRUNE_FASHION_MNIST", str(tmp_path))
    with pytest.raises(UsageError, match=f"not found at {tmp_path};"):
        load_data(DataConfig("fashion-mnist"))


def make_tree(root: Path, per_class: int, size=(12, 10)) -> None:
    for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, tuple(c + i for c in colour)).save(root / label / f"{i}.png")


def test_image_folder_single_tree_split_80_10_10(tmp_path):
    make_tree(tmp_path / "pets", per_class=10)
    data = load_data(DataConfig(str(tmp_path / "pets"), input_size=16))
    assert [len(data.train), len(data.val), len(data.test)] == [16, 2, 2]
    assert data.classes == ["cat", "dog"] and data.num_classes == 2 and data.name == "pets"
    x, y = data.train.tensors
    assert x.shape == (16, 3, 16, 16)
    red_minus_blue = x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2))
    assert torch.all((red_minus_blue > 0) == (y == 0))  # cats are red, labels follow the files
    gray = load_data(DataConfig(str(tmp_path / "pets"), input_size=8, in_channels=1))
    assert gray.train.tensors[0].shape == (16, 1, 8, 8)


def test_image_folder_with_train_and_val_dirs(tmp_path):
    make_tree(tmp_path / "d" / "train", per_class=4)
    make_tree(tmp_path / "d" / "val", per_class=2)
    data = load_data(DataConfig(str(tmp_path / "d"), input_size=8))
    assert [len(data.train), len(data.val), len(data.test)] == [8, 4, 4]
    make_tree(tmp_path / "d" / "test", per_class=3)
    assert len(load_data(DataConfig(str(tmp_path / "d"), input_size=8)).test) == 6


def test_bad_data_names_and_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images in"):
        load_data(DataConfig(str(tmp_path / "empty")))
    with pytest.raises(UsageError, match="does not exist"):
        load_data(DataConfig(str(tmp_path / "absent")))
    with pytest.raises(UsageError, match="did you mean 'digits'"):
        load_data(DataConfig("digitz"))
    with pytest.raises(UsageError, match="too small"):
        load_data(DataConfig(input_size=4))
