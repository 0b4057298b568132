"""The whole pipeline on Fashion-MNIST with a narrow VGG16, on a laptop CPU.

  python -m experiments.run --config configs/quickstart.py \
      --workdir runs/quickstart

Fashion-MNIST is read from its IDX files (Debian's dataset-fashion-mnist
package puts them in /usr/share/datasets/fashion-mnist), so the run needs no
network. VGG16 at width 1/8 (8 to 64 channels) trains in a few minutes on
2 CPU cores. One pair of units of the middle layer block2_conv1 is swapped,
and a 3-bend Bezier curve joins the endpoint and its permuted copy. The
evaluation uses 21 points and part of each split, so the whole run stays
within about 15 minutes; the analysis uses 61 points, because its cost
hardly depends on their number.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """Returns the CPU quickstart config."""
  config = base.get_config()
  config.name = "quickstart"

  # Fashion-MNIST, 60,000 training and 10,000 test images, all of them used.
  config.dataset.name = "fashion_mnist"

  # 1/8 of VGG16's channels: 8..64 per conv, 64 hidden units.
  config.model.width = 0.125

  # Fewer epochs than the research setting; no augmentation, because random
  # crops and flips slow down the first epochs on Fashion-MNIST.
  config.endpoint.epochs = 2
  config.endpoint.augment = False
  # A checkpoint after every epoch, so an interrupted run loses little.
  config.endpoint.checkpoint_every = 1

  # One curve epoch from the straight line already removes most of the
  # barrier between two equivalent networks.
  config.curve.epochs = 1
  config.curve.augment = False
  config.curve.checkpoint_every = 1

  # 21 points, 5,000 training and 5,000 test images per point.
  config.evaluate.num_points = 21
  config.evaluate.train_size = 5000
  config.evaluate.test_size = 5000
  return config
