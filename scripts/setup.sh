#!/usr/bin/env bash
# Installs mcjax with its test and PyTorch extras into the active Python
# environment, and the offline Fashion-MNIST dataset when apt-get is usable.
#
#   bash scripts/setup.sh            # everything
#   MCJAX_NO_APT=1 bash scripts/setup.sh   # skip the Debian dataset package
set -euo pipefail

cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

if [[ -z "${MCJAX_NO_APT:-}" ]] && command -v apt-get >/dev/null; then
  if [[ -d /usr/share/datasets/fashion-mnist ]]; then
    echo "setup: Fashion-MNIST already in /usr/share/datasets/fashion-mnist"
  elif [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq
    apt-get install -y -qq dataset-fashion-mnist
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist \
      || echo "setup: could not install dataset-fashion-mnist; run" \
              "'sudo apt-get install dataset-fashion-mnist' for the quickstart data"
  fi
fi

# The CPU build of torch first: an unpinned torch resolves to a multi-GB CUDA
# build, and torch>=2.1 in the extra is then already satisfied.
"$python" -m pip install "torch==2.13.0"
"$python" -m pip install -e ".[dev,torch]"
"$python" -c "import mcjax, jax; print('setup: mcjax', mcjax.__version__, 'on', jax.default_backend())"
