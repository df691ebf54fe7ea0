#!/usr/bin/env bash
# Installs edgeprune and what its tests and demo need on a fresh Debian machine (Python 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
  else
    echo "install Fashion-MNIST (Debian package dataset-fashion-mnist) or pass --data-root" >&2
  fi
fi
# torch and torchvision as a pair that imports together (see ../shared/FACTS.md)
python3 -m pip install -q torch==2.14.1 torchvision==0.29.1
# openvino: the openvino-cpu target and IR export are tested on its real CPU plugin
# nni: `prune --engine nni` and the NNI uniform-L1 baseline (edgeprune/pruning/nni_engine.py), tested in CI;
# it pins filelock<3.12, which torch accepts
python3 -m pip install -q -e ".[dev,openvino,nni,remote]"
