"""Datasets that work offline: scikit-learn digits, Fashion-MNIST from the Debian package, and
any ImageFolder tree.

Images are resized once and held in memory as normalised tensors, so every epoch, BN
recalibration and evaluation reads the same preprocessed data with no per-step decoding cost.
Grayscale data is repeated to the model's channel count as a stride-0 view (no 3x memory).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.errors import UsageError, unknown

FASHION_ENV = "EDGEPRUNE_FASHION_MNIST"
FASHION_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
BUILTIN = ("digits", "fashion-mnist")
ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "mnist-fashion": "fashion-mnist"}
# 0.5/0.5 maps [0, 1] to [-1, 1]: what EfficientNet-Lite0's ImageNet weights expect ((x-127)/128).
MEAN, STD = 0.5, 0.5
SPLITS = ("train", "val", "test")


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    input_size: int = 32
    in_channels: int = 3
    train_samples: int | None = None
    val_samples: int | None = None
    test_samples: int | None = None
    seed: int = 0


@dataclass
class DataBundle:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    classes: list[str]
    name: str
    seed: int = field(default=0)

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False,
               seed: int | None = None, drop_last: bool = False) -> DataLoader:
        """A single-process loader; shuffled order depends only on ``seed`` (default: the bundle's)."""
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        ds = getattr(self, split)
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed) if shuffle else None
        drop_last = drop_last and len(ds) > batch_size
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                          num_workers=0, drop_last=drop_last)


def load_data(cfg: DataConfig) -> DataBundle:
    """Load, split, resize and normalise the dataset named by ``cfg.name``."""
    if cfg.input_size < 8:
        raise UsageError(f"input size {cfg.input_size} is too small (minimum 8)")
    if cfg.in_channels < 1:
        raise UsageError(f"in_channels must be >= 1, got {cfg.in_channels}")
    name = ALIASES.get(cfg.name.lower(), cfg.name.lower())
    if name == "digits":
        return _digits(cfg)
    if name == "fashion-mnist":
        return _fashion_mnist(cfg)
    path = Path(cfg.name).expanduser()
    if path.is_dir():
        return _image_folder(cfg, path)
    if os.sep in cfg.name or cfg.name.startswith(".") or path.exists():
        raise UsageError(f"data directory {cfg.name} does not exist or is not a directory")
    raise unknown("dataset", cfg.name, BUILTIN)


def _bundle(cfg: DataConfig, parts: dict, classes: list[str], name: str) -> DataBundle:
    """Subset, preprocess and wrap {split: (uint8 or [0,1] float NCHW images, int64 labels)}."""
    limits = {"train": cfg.train_samples, "val": cfg.val_samples, "test": cfg.test_samples}
    sets = {}
    for i, split in enumerate(SPLITS):
        x, y = _take(*parts[split], limits[split], cfg.seed + i)
        if len(y) == 0:
            raise UsageError(f"dataset {name}: the {split} split is empty")
        sets[split] = TensorDataset(_preprocess(x, cfg.input_size, cfg.in_channels), y)
    return DataBundle(sets["train"], sets["val"], sets["test"], len(classes), classes, name, cfg.seed)


def _take(x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int):
    """A deterministic random subset of ``n`` samples (all when n is None or too large)."""
    if n is None or n >= len(y):
        return x, y
    if n < 1:
        raise UsageError(f"sample counts must be >= 1, got {n}")
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def _preprocess(x: torch.Tensor, size: int, channels: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 or [0,1] float NCHW -> resized, normalised float32 with ``channels`` channels."""
    out = []
    for i in range(0, len(x), chunk):  # chunks bound the peak memory of the float copy
        part = x[i:i + chunk].float()
        if x.dtype == torch.uint8:
            part /= 255.0
        if part.shape[-1] != size or part.shape[-2] != size:
            part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False)
        out.append((part - MEAN) / STD)
    x = torch.cat(out)
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:  # RGB source, grayscale model: ITU-R 601 luma
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise UsageError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


def _digits(cfg: DataConfig) -> DataBundle:
    """sklearn's 1797 8x8 digits, stratified 60/20/20 by seed."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        from edgeprune.errors import MissingBackend
        raise MissingBackend("scikit-learn", "data", "the digits dataset") from None
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.4, stratify=d.target, random_state=cfg.seed)
    va, te = train_test_split(rest, test_size=0.5, stratify=d.target[rest], random_state=cfg.seed)
    parts = {s: (x[torch.from_numpy(i)], y[torch.from_numpy(i)]) for s, i in zip(SPLITS, (tr, va, te))}
    return _bundle(cfg, parts, [str(i) for i in range(10)], "digits")


def fashion_root(cfg: DataConfig) -> Path:
    return Path(cfg.root or os.environ.get(FASHION_ENV) or FASHION_DEFAULT).expanduser()


def _fashion_mnist(cfg: DataConfig) -> DataBundle:
    """The idx files from the Debian package; val is carved from train, test is t10k."""
    root = fashion_root(cfg)
    missing = [f for pair in FASHION_FILES.values() for f in pair if not (root / f).is_file()]
    if missing:
        raise UsageError(f"Fashion-MNIST not found at {root}; install it with: "
                         "apt-get install -y dataset-fashion-mnist (or pass --data-root)")
    x_tr, y_tr = (_read_idx(root / f) for f in FASHION_FILES["train"])
    x_te, y_te = (_read_idx(root / f) for f in FASHION_FILES["test"])
    n_val = cfg.val_samples or 5000
    if n_val >= len(y_tr):
        raise UsageError(f"val_samples {n_val} leaves no Fashion-MNIST training images")
    perm = torch.randperm(len(y_tr), generator=torch.Generator().manual_seed(cfg.seed))
    va, tr = perm[:n_val], perm[n_val:]
    # Only the images kept by the *_samples limits are ever converted to float (in _bundle).
    parts = {"train": (x_tr[tr], y_tr[tr]), "val": (x_tr[va], y_tr[va]), "test": (x_te, y_te)}
    return _bundle(cfg, parts, list(FASHION_CLASSES), "fashion-mnist")


def _read_idx(path: Path) -> torch.Tensor:
    """An idx1/idx3 ubyte file (optionally gzipped) as a uint8 tensor."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        magic = int.from_bytes(raw[0:4], "big")
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):
            raise ValueError(f"bad magic number {magic:#x}")
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        arr = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        arr = arr.reshape(dims)
    except (OSError, ValueError, EOFError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(1) if ndim == 3 else t.long()


def _image_folder(cfg: DataConfig, root: Path) -> DataBundle:
    """``root/{train,val[,test]}/CLASS/*`` or one ``root/CLASS/*`` tree split 80/10/10 by seed."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        splits = {s: _folder_tensors(root / s, cfg) for s in SPLITS if (root / s).is_dir()}
        classes = splits["train"][2]
        for s, (_, _, cls) in splits.items():
            if cls != classes:
                raise UsageError(f"{root / s} has classes {cls}, but {root / 'train'} has {classes}")
        splits.setdefault("test", splits["val"])  # no test/: report on val
        parts = {s: splits[s][:2] for s in SPLITS}
    else:
        x, y, classes = _folder_tensors(root, cfg)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))
        n_val = n_test = max(1, len(y) // 10)
        if len(y) - n_val - n_test < 1:
            raise UsageError(f"{root} has only {len(y)} images; need at least 3 to split 80/10/10")
        te, va, tr = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        parts = {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}
    return _bundle(cfg, parts, classes, root.name or str(root))


def _folder_tensors(root: Path, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image of an ImageFolder tree once, resized to the input size (uint8 NCHW)."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"no images in {root}: {str(e).splitlines()[0]}") from None
    mode = "L" if cfg.in_channels == 1 else "RGB"
    images = []
    for path, _ in ds.samples:
        try:
            with Image.open(path) as im:
                im = im.convert(mode).resize((cfg.input_size, cfg.input_size), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8).reshape(cfg.input_size, cfg.input_size, -1))
        except OSError as e:
            raise UsageError(f"cannot read image {path}: {e}") from None
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(ds.targets, dtype=torch.int64)
    return x, y, list(ds.classes)
