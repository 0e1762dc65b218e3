"""Built-in image datasets: Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX files).

Rows are `{"image": uint8 tensor (1, 28, 28), "label": class name}`. Splits: the official test set (10,000) is
`test`; the official training set is split with a fixed seed into validation (10%) and train. `fashion-mnist-0-4`
and `fashion-mnist-5-9` keep the first / last five classes: the disjoint halves a backbone is pre-trained on and
then prompt-tuned for (benchmarks/quality/vpt_fashion.py).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch

from ..errors import DataError

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle-boot")
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


def fashion_dir() -> Path:
    """`$SOFTPROMPT_FASHION_MNIST`, else the Debian package's folder."""
    for folder in ([os.environ["SOFTPROMPT_FASHION_MNIST"]] if "SOFTPROMPT_FASHION_MNIST" in os.environ else []) + list(
            FASHION_DIRS):
        if (Path(folder) / "train-images-idx3-ubyte.gz").is_file():
            return Path(folder)
    raise DataError("Fashion-MNIST not found: `apt-get install dataset-fashion-mnist` (Debian) or set "
                    "SOFTPROMPT_FASHION_MNIST to a folder with its four .gz IDX files")


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (gzip or not) as a uint8 tensor of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    values = torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8)
    if values.numel() != int(torch.tensor(shape).prod()):
        raise DataError(f"{path}: {values.numel()} values for shape {shape}")
    return values.view(*shape)


def fashion_mnist(classes: tuple[int, ...] = tuple(range(10)), *, validation_fraction: float = 0.1,
                  seed: int = 20240601) -> dict[str, list[dict]]:
    folder = fashion_dir()
    out: dict[str, list[dict]] = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = read_idx(folder / f"{stem}-images-idx3-ubyte.gz")
        labels = read_idx(folder / f"{stem}-labels-idx1-ubyte.gz")
        keep = [i for i, y in enumerate(labels.tolist()) if y in classes]
        out[split] = [{"image": images[i].unsqueeze(0).clone(), "label": FASHION_CLASSES[int(labels[i])]} for i in keep]
    order = torch.randperm(len(out["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(len(order) * validation_fraction)
    rows = out["train"]
    out["validation"] = [rows[i] for i in sorted(order[:cut])]
    out["train"] = [rows[i] for i in sorted(order[cut:])]
    return out
