"""Swap 2 neurons (1 pair) of the late layer block4_conv1 of VGG16 on CIFAR-10.

  python -m experiments.run --config configs/neuronswap_late2.py \
      --workdir runs/neuronswap_late2

The trailing 2 in the name counts neurons: one pair of units of block4_conv1
(512 units at width 1) exchange places, with the matching input channels
of the next layer, so the permuted network computes the same function. All
other fields are the research defaults of base.py.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """Returns the late-layer 2-neuron swap config."""
  config = base.get_config()
  config.name = "neuronswap_late2"
  # Depth preset; resolves to block4_conv1 on VGG16.
  config.permute.layer = "late"
  # 2 neurons = 1 disjoint pair, drawn from permute.seed.
  config.permute.num_pairs = 1
  return config
