"""Mirror every hidden layer of VGG16 on CIFAR-10 and join the two by a curve.

  python -m experiments.run --config configs/mirror.py --workdir runs/mirror

The end of the curve is the start endpoint with the units of every conv and
hidden dense layer in reverse order (the largest permutation of this kind:
every unit moves except a middle one in odd-sized layers). It computes the
same function, so a curve of low loss must exist; the analysis shows how it
spreads over the layers.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  """Returns the full-reverse permutation config."""
  config = base.get_config()
  config.name = "mirror"
  # Reverse every hidden group; permute.layer, num_pairs and pairs are unused.
  config.permute.mode = "mirror"
  return config
